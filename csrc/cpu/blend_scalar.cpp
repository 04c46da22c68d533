// The scalar blend kernels: the CPU rasterizer's loop as it was before the SIMD
// kernels, kept selectable (FEATURE3DGS_CPU_ISA=scalar) as the reference point of
// benchmarks/cpu_throughput.py and as the path of last resort. Within a tile the
// loop runs Gaussian by Gaussian over the tile's pixels, one pixel at a time, with
// a scalar expf per pixel (f3d::eval_splat).
#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu/kernels_api.h"
#include "f3d/blend.h"

namespace f3d {

namespace {

constexpr int kTilePixels = kTileSize * kTileSize;

// Pixel rectangle of tile t and the number of its pixels inside the image.
struct TilePixels {
  int x0, y0, w, h;
  TilePixels(const CpuRasterInputs& in, int t) {
    x0 = (t % in.grid_x) * kTileSize;
    y0 = (t / in.grid_x) * kTileSize;
    w = std::min(kTileSize, in.width - x0);
    h = std::min(kTileSize, in.height - y0);
  }
  int count() const { return w * h; }
  int64_t image_index(int p, int width) const { return (int64_t)(y0 + p / w) * width + (x0 + p % w); }
  Vec2 center(int p) const { return pixel_center(x0 + p % w, y0 + p / w); }
};

// dst[c] += w * src[c] over C channels.
inline void axpy(float w, const float* src, float* dst, int64_t C) {
  for (int64_t c = 0; c < C; ++c) dst[c] += w * src[c];
}

inline float dotn(const float* a, const float* b, int64_t C) {
  float s = 0.f;
  for (int64_t c = 0; c < C; ++c) s += a[c] * b[c];
  return s;
}

void forward(const CpuForwardArgs* args) {
  const CpuRasterInputs& in = args->in;
  const int64_t C = in.C;
  const int64_t HW = (int64_t)in.width * in.height;
  const int T_count = in.grid_x * in.grid_y;
  int64_t visited = 0, contributing = 0;
  const bool count = args->stats != nullptr;
#pragma omp parallel reduction(+ : visited, contributing)
  {
    // Per-thread tile state, pixel-major.
    std::vector<float> T(kTilePixels), acc_rgb(3 * kTilePixels), acc_depth(kTilePixels);
    std::vector<float> acc_feat(C * kTilePixels);
    std::vector<int> last(kTilePixels);
    std::vector<char> done(kTilePixels);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < T_count; ++t) {
      const TilePixels tile(in, t);
      const int np = tile.count();
      std::fill(T.begin(), T.begin() + np, 1.f);
      std::fill(acc_rgb.begin(), acc_rgb.begin() + 3 * np, 0.f);
      std::fill(acc_depth.begin(), acc_depth.begin() + np, 0.f);
      std::fill(acc_feat.begin(), acc_feat.begin() + C * np, 0.f);
      std::fill(last.begin(), last.begin() + np, 0);
      std::fill(done.begin(), done.begin() + np, 0);
      int active = np;
      const int start = in.tile_offsets[t], end = in.tile_offsets[t + 1];
      for (int i = start; i < end && active > 0; ++i) {
        const int g = in.gaussian_ids[i];
        const Vec2 mean = {in.means2d[2 * g], in.means2d[2 * g + 1]};
        const Sym2 conic = {in.conics[3 * g], in.conics[3 * g + 1], in.conics[3 * g + 2]};
        if (count) visited += active;
        for (int p = 0; p < np; ++p) {
          if (done[p]) continue;
          Splat s;
          if (!eval_splat(mean, conic, in.opacities[g], tile.center(p), s)) continue;
          const float next_T = T[p] * (1.f - s.alpha);
          if (next_T < kTransmittanceMin) {
            done[p] = 1;
            --active;
            continue;
          }
          const float w = s.alpha * T[p];
          axpy(w, in.colors + 3 * g, &acc_rgb[3 * p], 3);
          acc_depth[p] += w * in.depths[g];
          if (C > 0) axpy(w, in.features + g * C, &acc_feat[p * C], C);
          T[p] = next_T;
          last[p] = i - start + 1;
          if (count) ++contributing;
        }
      }
      for (int p = 0; p < np; ++p) {
        const int64_t pix = tile.image_index(p, in.width);
        for (int c = 0; c < 3; ++c) args->out_rgb[c * HW + pix] = acc_rgb[3 * p + c];
        for (int64_t c = 0; c < C; ++c) args->out_feat[c * HW + pix] = acc_feat[p * C + c];
        args->out_depth[pix] = acc_depth[p];
        args->out_alpha[pix] = 1.f - T[p];
        args->out_T[pix] = T[p];
        args->out_last[pix] = last[p];
      }
    }
  }
  if (count) {
    args->stats->visited += visited;
    args->stats->contributing += contributing;
  }
}

void backward(const CpuBackwardArgs* args) {
  const CpuRasterInputs& in = args->in;
  const int64_t C = in.C;
  const int64_t HW = (int64_t)in.width * in.height;
  const float* feat = in.features;
#pragma omp parallel
  {
    // Per pixel: T (recovered back to front), Q = sum over the Gaussians behind
    // of w_j * (dL/dout . v_j), and the output gradients, pixel-major.
    std::vector<float> T(kTilePixels), Q(kTilePixels), g_rgb(3 * kTilePixels),
        g_dep(kTilePixels), g_alpha(kTilePixels), g_feat(C * kTilePixels), acc_feat(C);
    std::vector<int> last(kTilePixels);
    PairRows rows;
#pragma omp for schedule(dynamic, 1)
    for (int q = 0; q < args->groups; ++q) {
      const TileRange tiles = start_fold_group(*args, q, rows);
      for (int t = tiles.begin; t < tiles.end; ++t) {
        const TilePixels tile(in, t);
        const int np = tile.count();
        int max_last = 0;
        for (int p = 0; p < np; ++p) {
          const int64_t pix = tile.image_index(p, in.width);
          T[p] = args->final_T[pix];
          Q[p] = 0.f;
          last[p] = args->last_contrib[pix];
          max_last = std::max(max_last, last[p]);
          for (int c = 0; c < 3; ++c) g_rgb[3 * p + c] = args->dl_rgb[c * HW + pix];
          for (int64_t c = 0; c < C; ++c) g_feat[p * C + c] = args->dl_feat[c * HW + pix];
          g_dep[p] = args->dl_depth[pix];
          g_alpha[p] = args->dl_alpha[pix];
        }
        const int start = in.tile_offsets[t];
        for (int k = max_last - 1; k >= 0; --k) {
          const int g = in.gaussian_ids[start + k];
          const Vec2 mean = {in.means2d[2 * g], in.means2d[2 * g + 1]};
          const Sym2 conic = {in.conics[3 * g], in.conics[3 * g + 1], in.conics[3 * g + 2]};
          const float opa = in.opacities[g];
          const float* col = in.colors + 3 * g;
          const float dep = in.depths[g];
          const float* fg = C > 0 ? feat + g * C : nullptr;
          // means2d x, y; conic a, b, c; opacity; rgb; depth (kernels_api.h)
          float a[kPairGeomValues] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
          bool touched = false;
          if (C > 0) std::fill(acc_feat.begin(), acc_feat.end(), 0.f);
          for (int p = 0; p < np; ++p) {
            if (k >= last[p]) continue;
            Splat s;
            if (!eval_splat(mean, conic, opa, tile.center(p), s)) continue;
            touched = true;
            const float one_minus = 1.f - s.alpha;
            T[p] /= one_minus;  // transmittance in front of this Gaussian
            const float w = s.alpha * T[p];
            // dL/dout . v for this Gaussian (alpha is the channel with v = 1).
            float gv = dotn(&g_rgb[3 * p], col, 3) + g_dep[p] * dep + g_alpha[p];
            if (C > 0) {
              gv += dotn(&g_feat[p * C], fg, C);
              axpy(w, &g_feat[p * C], acc_feat.data(), C);
            }
            for (int c = 0; c < 3; ++c) a[6 + c] += w * g_rgb[3 * p + c];
            a[9] += w * g_dep[p];
            const float d_alpha_g = T[p] * gv - Q[p] / one_minus;
            Q[p] += w * gv;
            const SplatGrad sg = eval_splat_backward(s, conic, opa, d_alpha_g);
            a[0] += sg.mean2d.x;
            a[1] += sg.mean2d.y;
            a[2] += sg.conic.a;
            a[3] += sg.conic.b;
            a[4] += sg.conic.c;
            a[5] += sg.opacity;
          }
          if (touched) emit_pair_grad(args->sink, rows, g, a, acc_feat.data(), C);
        }
      }
    }
  }
}

// Volatile, so that the compiler can neither fold the chains nor drop them.
volatile float g_probe_seed[3] = {1e-3f, 0.9999999f, 1e-7f};
volatile float g_probe_sink;

// Scalar multiply-adds (a * b + c per chain; not fused in this build).
double fma_gflops(double seconds) {
  return measure_gflops(seconds, [] {
    constexpr int kChains = 8, kSteps = 1 << 16;
    float a[kChains];
    for (int j = 0; j < kChains; ++j) a[j] = g_probe_seed[0] * (float)j;
    const float b = g_probe_seed[1], c = g_probe_seed[2];
    for (int i = 0; i < kSteps; ++i)
      for (int j = 0; j < kChains; ++j) a[j] = a[j] * b + c;
    float sum = 0.f;
    for (int j = 0; j < kChains; ++j) sum += a[j];
    g_probe_sink = sum;
    return 2.0 * kChains * kSteps;
  });
}

}  // namespace

CpuKernels scalar_cpu_kernels() { return {kCpuKernelsAbi, "scalar", 1, &forward, &backward, &fma_gflops}; }

}  // namespace f3d
