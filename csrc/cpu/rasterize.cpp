// CPU rasterizer: tile binning with a per-tile depth sort, front-to-back
// blending per 16x16 tile (OpenMP over tiles), and the back-to-front backward
// with exact transmittance recovery. Within a tile the loop runs Gaussian by
// Gaussian over the tile's pixels, as the GPU does with its shared-memory batch,
// so one Gaussian's feature vector is read once per tile and its gradient is
// summed over the tile before one atomic add per value.
#include <omp.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "f3d/blend.h"
#include "f3d/projection.h"
#include "host_buffers.h"

namespace f3d {

namespace {

constexpr int kTilePixels = kTileSize * kTileSize;

struct TileGrid {
  int width, height, gx, gy;
  TileGrid(int w, int h) : width(w), height(h), gx(div_round_up(w, kTileSize)), gy(div_round_up(h, kTileSize)) {}
  int count() const { return gx * gy; }
};

// Pixel rectangle of tile t and the number of its pixels inside the image.
struct TilePixels {
  int x0, y0, w, h;
  TilePixels(const TileGrid& grid, int t) {
    x0 = (t % grid.gx) * kTileSize;
    y0 = (t / grid.gx) * kTileSize;
    w = std::min(kTileSize, grid.width - x0);
    h = std::min(kTileSize, grid.height - y0);
  }
  int count() const { return w * h; }
  int image_index(int p, int width) const { return (y0 + p / w) * width + (x0 + p % w); }
  Vec2 center(int p) const { return pixel_center(x0 + p % w, y0 + p / w); }
};

// Bins every visible Gaussian into the tiles it touches and sorts each tile's
// list front to back (depth, then index). Returns (offsets (T+1), ids (M)).
std::pair<torch::Tensor, torch::Tensor> bin_gaussians(const TileGrid& grid, const float* means2d,
                                                      const int* radii, const float* depths,
                                                      int64_t N) {
  const int T = grid.count();
  std::vector<int64_t> counts(T + 1, 0);
  auto for_each_tile = [&](int64_t g, auto&& fn) {
    int x0, y0, x1, y1;
    tile_rect({means2d[2 * g], means2d[2 * g + 1]}, radii[g], grid.gx, grid.gy, x0, y0, x1, y1);
    for (int ty = y0; ty < y1; ++ty)
      for (int tx = x0; tx < x1; ++tx) fn(ty * grid.gx + tx);
  };
  for (int64_t g = 0; g < N; ++g)
    if (radii[g] > 0) for_each_tile(g, [&](int t) { ++counts[t + 1]; });
  std::partial_sum(counts.begin(), counts.end(), counts.begin());
  TORCH_CHECK(counts[T] < (int64_t)INT32_MAX, "feature3dgs: too many tile-Gaussian pairs (",
              counts[T], ") for int32 indexing; lower the resolution or the number of Gaussians");
  auto offsets = torch::from_blob(counts.data(), {T + 1}, torch::kInt64).to(torch::kInt32);
  auto ids = torch::empty({counts[T]}, torch::kInt32);
  int* id = ids.data_ptr<int>();
  std::vector<int64_t> fill(counts.begin(), counts.end() - 1);
  for (int64_t g = 0; g < N; ++g)
    if (radii[g] > 0) for_each_tile(g, [&](int t) { id[fill[t]++] = (int)g; });
#pragma omp parallel for schedule(dynamic, 4)
  for (int t = 0; t < T; ++t) {
    // ids are ascending within a tile, so a stable sort by depth breaks ties by index.
    std::stable_sort(id + counts[t], id + counts[t + 1],
                     [&](int a, int b) { return depths[a] < depths[b]; });
  }
  return {offsets, ids};
}

// dst[p * C + c] += w * src[c] over C channels.
inline void axpy(float w, const float* src, float* dst, int64_t C) {
  for (int64_t c = 0; c < C; ++c) dst[c] += w * src[c];
}

inline float dotn(const float* a, const float* b, int64_t C) {
  float s = 0.f;
  for (int64_t c = 0; c < C; ++c) s += a[c] * b[c];
  return s;
}

inline void atomic_add(float* dst, float v) {
#pragma omp atomic update
  *dst += v;
}

}  // namespace

RasterizeOut rasterize_forward_cpu(const torch::Tensor& means2d, const torch::Tensor& conics,
                                   const torch::Tensor& colors, const torch::Tensor& opacities,
                                   const torch::Tensor& depths, const torch::Tensor& features,
                                   const torch::Tensor& radii, int width, int height) {
  const int64_t N = means2d.size(0);
  const int64_t C = features.dim() == 2 ? features.size(1) : 0;
  const TileGrid grid(width, height);
  const auto f32 = means2d.options();
  const int64_t HW = (int64_t)width * height;
  auto out_rgb = torch::zeros({3, height, width}, f32);
  auto out_feat = torch::zeros({C, height, width}, f32);
  auto out_depth = torch::zeros({1, height, width}, f32);
  auto out_alpha = torch::zeros({1, height, width}, f32);
  auto final_T = torch::ones({height, width}, f32);
  auto last_contrib = torch::zeros({height, width}, f32.dtype(torch::kInt32));

  const float* m2d = means2d.data_ptr<float>();
  const float* con = conics.data_ptr<float>();
  const float* col = colors.data_ptr<float>();
  const float* opa = opacities.data_ptr<float>();
  const float* dep = depths.data_ptr<float>();
  const float* feat = C > 0 ? features.data_ptr<float>() : nullptr;
  auto [offsets, ids] = bin_gaussians(grid, m2d, radii.data_ptr<int>(), dep, N);
  const int* off = offsets.data_ptr<int>();
  const int* id = ids.data_ptr<int>();
  float* o_rgb = out_rgb.data_ptr<float>();
  float* o_feat = out_feat.data_ptr<float>();
  float* o_dep = out_depth.data_ptr<float>();
  float* o_alpha = out_alpha.data_ptr<float>();
  float* o_T = final_T.data_ptr<float>();
  int* o_last = last_contrib.data_ptr<int>();

#pragma omp parallel
  {
    // Per-thread tile state, pixel-major.
    std::vector<float> T(kTilePixels), acc_rgb(3 * kTilePixels), acc_depth(kTilePixels);
    std::vector<float> acc_feat(C * kTilePixels);
    std::vector<int> last(kTilePixels);
    std::vector<char> done(kTilePixels);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < grid.count(); ++t) {
      const TilePixels tile(grid, t);
      const int np = tile.count();
      std::fill(T.begin(), T.begin() + np, 1.f);
      std::fill(acc_rgb.begin(), acc_rgb.begin() + 3 * np, 0.f);
      std::fill(acc_depth.begin(), acc_depth.begin() + np, 0.f);
      std::fill(acc_feat.begin(), acc_feat.begin() + C * np, 0.f);
      std::fill(last.begin(), last.begin() + np, 0);
      std::fill(done.begin(), done.begin() + np, 0);
      int active = np;
      for (int i = off[t]; i < off[t + 1] && active > 0; ++i) {
        const int g = id[i];
        const Vec2 mean = {m2d[2 * g], m2d[2 * g + 1]};
        const Sym2 conic = {con[3 * g], con[3 * g + 1], con[3 * g + 2]};
        for (int p = 0; p < np; ++p) {
          if (done[p]) continue;
          Splat s;
          if (!eval_splat(mean, conic, opa[g], tile.center(p), s)) continue;
          const float next_T = T[p] * (1.f - s.alpha);
          if (next_T < kTransmittanceMin) {
            done[p] = 1;
            --active;
            continue;
          }
          const float w = s.alpha * T[p];
          axpy(w, col + 3 * g, &acc_rgb[3 * p], 3);
          acc_depth[p] += w * dep[g];
          if (C > 0) axpy(w, feat + g * C, &acc_feat[p * C], C);
          T[p] = next_T;
          last[p] = i - off[t] + 1;
        }
      }
      for (int p = 0; p < np; ++p) {
        const int64_t pix = tile.image_index(p, width);
        for (int c = 0; c < 3; ++c) o_rgb[c * HW + pix] = acc_rgb[3 * p + c];
        for (int64_t c = 0; c < C; ++c) o_feat[c * HW + pix] = acc_feat[p * C + c];
        o_dep[pix] = acc_depth[p];
        o_alpha[pix] = 1.f - T[p];
        o_T[pix] = T[p];
        o_last[pix] = last[p];
      }
    }
  }
  return {out_rgb, out_feat, out_depth, out_alpha, final_T, last_contrib, offsets, ids};
}

RasterizeGrads rasterize_backward_cpu(
    const torch::Tensor& means2d, const torch::Tensor& conics, const torch::Tensor& colors,
    const torch::Tensor& opacities, const torch::Tensor& depths, const torch::Tensor& features,
    int width, int height, const torch::Tensor& final_T, const torch::Tensor& last_contrib,
    const torch::Tensor& tile_offsets, const torch::Tensor& gaussian_ids,
    const torch::Tensor& d_rgb, const torch::Tensor& d_features, const torch::Tensor& d_depth,
    const torch::Tensor& d_alpha) {
  const int64_t C = features.dim() == 2 ? features.size(1) : 0;
  const TileGrid grid(width, height);
  const int64_t HW = (int64_t)width * height;
  RasterizeGrads grads = zero_rasterize_grads(means2d, conics, colors, opacities, depths, features);
  auto& [g_means2d, g_conics, g_colors, g_opacities, g_depths, g_features] = grads;

  const float* m2d = means2d.data_ptr<float>();
  const float* con = conics.data_ptr<float>();
  const float* col = colors.data_ptr<float>();
  const float* opa = opacities.data_ptr<float>();
  const float* dep = depths.data_ptr<float>();
  const float* feat = C > 0 ? features.data_ptr<float>() : nullptr;
  const float* fT = final_T.data_ptr<float>();
  const int* lastc = last_contrib.data_ptr<int>();
  const int* off = tile_offsets.data_ptr<int>();
  const int* id = gaussian_ids.data_ptr<int>();
  const float* dl_rgb = d_rgb.data_ptr<float>();
  const float* dl_feat = C > 0 ? d_features.data_ptr<float>() : nullptr;
  const float* dl_dep = d_depth.data_ptr<float>();
  const float* dl_alpha = d_alpha.data_ptr<float>();
  float* o_m2d = g_means2d.data_ptr<float>();
  float* o_con = g_conics.data_ptr<float>();
  float* o_col = g_colors.data_ptr<float>();
  float* o_opa = g_opacities.data_ptr<float>();
  float* o_dep = g_depths.data_ptr<float>();
  float* o_feat = C > 0 ? g_features.data_ptr<float>() : nullptr;

#pragma omp parallel
  {
    // Per pixel: T (recovered back to front), Q = sum over the Gaussians behind
    // of w_j * (dL/dout . v_j), and the output gradients, pixel-major.
    std::vector<float> T(kTilePixels), Q(kTilePixels), g_rgb(3 * kTilePixels),
        g_dep(kTilePixels), g_alpha(kTilePixels), g_feat(C * kTilePixels), acc_feat(C);
    std::vector<int> last(kTilePixels);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < grid.count(); ++t) {
      const TilePixels tile(grid, t);
      const int np = tile.count();
      int max_last = 0;
      for (int p = 0; p < np; ++p) {
        const int64_t pix = tile.image_index(p, width);
        T[p] = fT[pix];
        Q[p] = 0.f;
        last[p] = lastc[pix];
        max_last = std::max(max_last, last[p]);
        for (int c = 0; c < 3; ++c) g_rgb[3 * p + c] = dl_rgb[c * HW + pix];
        for (int64_t c = 0; c < C; ++c) g_feat[p * C + c] = dl_feat[c * HW + pix];
        g_dep[p] = dl_dep[pix];
        g_alpha[p] = dl_alpha[pix];
      }
      for (int k = max_last - 1; k >= 0; --k) {
        const int g = id[off[t] + k];
        const Vec2 mean = {m2d[2 * g], m2d[2 * g + 1]};
        const Sym2 conic = {con[3 * g], con[3 * g + 1], con[3 * g + 2]};
        const float* fg = C > 0 ? feat + g * C : nullptr;
        float a_m2d[2] = {0.f, 0.f}, a_con[3] = {0.f, 0.f, 0.f}, a_col[3] = {0.f, 0.f, 0.f};
        float a_opa = 0.f, a_dep = 0.f;
        bool touched = false;
        if (C > 0) std::fill(acc_feat.begin(), acc_feat.end(), 0.f);
        for (int p = 0; p < np; ++p) {
          if (k >= last[p]) continue;
          Splat s;
          if (!eval_splat(mean, conic, opa[g], tile.center(p), s)) continue;
          touched = true;
          const float one_minus = 1.f - s.alpha;
          T[p] /= one_minus;  // transmittance in front of this Gaussian
          const float w = s.alpha * T[p];
          // dL/dout . v for this Gaussian (alpha is the channel with v = 1).
          float gv = dotn(&g_rgb[3 * p], col + 3 * g, 3) + g_dep[p] * dep[g] + g_alpha[p];
          if (C > 0) {
            gv += dotn(&g_feat[p * C], fg, C);
            axpy(w, &g_feat[p * C], acc_feat.data(), C);
          }
          for (int c = 0; c < 3; ++c) a_col[c] += w * g_rgb[3 * p + c];
          a_dep += w * g_dep[p];
          const float d_alpha_g = T[p] * gv - Q[p] / one_minus;
          Q[p] += w * gv;
          const SplatGrad sg = eval_splat_backward(s, conic, opa[g], d_alpha_g);
          a_m2d[0] += sg.mean2d.x;
          a_m2d[1] += sg.mean2d.y;
          a_con[0] += sg.conic.a;
          a_con[1] += sg.conic.b;
          a_con[2] += sg.conic.c;
          a_opa += sg.opacity;
        }
        if (!touched) continue;
        for (int c = 0; c < 2; ++c) atomic_add(&o_m2d[2 * g + c], a_m2d[c]);
        for (int c = 0; c < 3; ++c) atomic_add(&o_con[3 * g + c], a_con[c]);
        for (int c = 0; c < 3; ++c) atomic_add(&o_col[3 * g + c], a_col[c]);
        atomic_add(&o_opa[g], a_opa);
        atomic_add(&o_dep[g], a_dep);
        for (int64_t c = 0; c < C; ++c) atomic_add(&o_feat[g * C + c], acc_feat[c]);
      }
    }
  }
  return grads;
}

}  // namespace f3d
