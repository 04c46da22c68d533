// CPU rasterizer, host side: tile binning with exact culling (f3d/cull.h) and a
// per-tile depth sort; the choice of blend kernels (scalar, baseline SIMD, AVX2,
// AVX-512: kernels_api.h); and the backward's deterministic reduction: each
// (tile, Gaussian) pair's partial gradient is written to its own row, and the rows
// are summed per Gaussian in tile order, so the gradients are the same bits for
// any number of threads.
//
// Run-time switches (read at every call, so that tests can flip them):
//   FEATURE3DGS_CPU_ISA=auto|scalar|baseline|avx2|avx512   blend kernels (default auto: the widest available)
//   FEATURE3DGS_CPU_CULL=1|0            exact tile / row-segment culling (default 1)
//   FEATURE3DGS_CPU_DETERMINISTIC=1|0   ordered reduction, or atomic adds (default 1; 0 only for benchmarks)
//   FEATURE3DGS_CPU_WAVE_PAIRS=n        pairs per reduction wave (default: 64 MiB of partial gradients)
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "cpu/cpu_dispatch.h"
#include "cpu/host_block_cache.h"
#include "f3d/blend.h"
#include "f3d/cull.h"
#include "f3d/projection.h"
#include "host_buffers.h"

namespace f3d {

CpuKernels scalar_cpu_kernels();  // blend_scalar.cpp
namespace simd_baseline {
CpuKernels simd_kernels();        // blend_baseline.cpp
}

namespace {

struct Registry {
  bool have_avx2 = false, have_avx512 = false;
  CpuKernels avx2{}, avx512{};
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

bool cpu_supports(const std::string& isa) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  __builtin_cpu_init();
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("fma");
#else
  (void)isa;
#endif
  return false;
}

namespace {

bool env_flag(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  const std::string s(v);
  if (s == "1" || s == "true" || s == "yes" || s == "on") return true;
  if (s == "0" || s == "false" || s == "no" || s == "off") return false;
  TORCH_CHECK_VALUE(false, name, "=", s, ": expected 1 or 0");
}

constexpr int kTilePixels = kTileSize * kTileSize;

struct TileGrid {
  int width, height, gx, gy;
  TileGrid(int w, int h) : width(w), height(h), gx(div_round_up(w, kTileSize)), gy(div_round_up(h, kTileSize)) {}
  int count() const { return gx * gy; }
};

// Orderable bits of a float (ascending floats give ascending keys; -0 as +0).
inline uint32_t float_key(float v) {
  if (v == 0.f) v = 0.f;
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The visible Gaussians (radius > 0) front to back: by depth, ties by index
// (a stable LSD radix sort of the index-ordered list on the 32-bit depth key).
std::vector<int> depth_order(const int* radii, const float* depths, int64_t N) {
  std::vector<int> order, tmp;
  order.reserve(N);
  for (int64_t g = 0; g < N; ++g)
    if (radii[g] > 0) order.push_back((int)g);
  const size_t n = order.size();
  std::vector<uint32_t> key(n), key_tmp(n);
  for (size_t i = 0; i < n; ++i) key[i] = float_key(depths[order[i]]);
  tmp.resize(n);
  for (int shift = 0; shift < 32 && n > 1; shift += 8) {
    size_t count[257] = {0};
    for (size_t i = 0; i < n; ++i) ++count[((key[i] >> shift) & 255u) + 1];
    if (count[1 + ((key[0] >> shift) & 255u)] == n) continue;  // one bucket: nothing moves
    for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
    for (size_t i = 0; i < n; ++i) {
      const size_t dst = count[(key[i] >> shift) & 255u]++;
      tmp[dst] = order[i];
      key_tmp[dst] = key[i];
    }
    order.swap(tmp);
    key.swap(key_tmp);
  }
  return order;
}

// Per Gaussian, the bound of f3d/cull.h (kCullKeep for culled Gaussians, unused).
std::vector<CullSplat> cull_splats(const float* means2d, const float* conics,
                                   const float* opacities, const int* radii, int64_t N) {
  std::vector<CullSplat> cs(N);
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < N; ++g) {
    if (radii[g] <= 0) {
      cs[g] = CullSplat{};
      cs[g].kind = kCullKeep;
      continue;
    }
    cs[g] = make_cull_splat({means2d[2 * g], means2d[2 * g + 1]},
                            {conics[3 * g], conics[3 * g + 1], conics[3 * g + 2]}, opacities[g]);
  }
  return cs;
}

// Bins every visible Gaussian into the tiles it touches (tile_rect) and, with
// culling, may contribute to (f3d/cull.h). Each tile's list runs front to back
// (depth, then index): the Gaussians are visited in that order, in contiguous
// blocks per thread, and the pairs are bucketed by tile in a stable counting sort.
// Returns (offsets (T+1), ids (M)); bbox_pairs gets the number of pairs before culling.
std::pair<torch::Tensor, torch::Tensor> bin_gaussians(const TileGrid& grid, const float* means2d,
                                                      const int* radii, const float* depths,
                                                      const CullSplat* cs, int64_t N, bool cull,
                                                      int64_t* bbox_pairs) {
  const int T = grid.count();
  const std::vector<int> order = depth_order(radii, depths, N);
  const int64_t n = (int64_t)order.size();
  const int threads = std::max(1, omp_get_max_threads());
  std::vector<std::vector<int>> pairs(threads);  // per block: (tile, Gaussian) flattened
  std::vector<int64_t> bbox_of(threads, 0);
#pragma omp parallel for schedule(static, 1) num_threads(threads)
  for (int b = 0; b < threads; ++b) {
    std::vector<int>& out = pairs[b];
    int64_t bbox = 0;
    for (int64_t j = n * b / threads; j < n * (b + 1) / threads; ++j) {
      const int g = order[j];
      int x0, y0, x1, y1;
      tile_rect({means2d[2 * g], means2d[2 * g + 1]}, radii[g], grid.gx, grid.gy, x0, y0, x1, y1);
      bbox += (int64_t)std::max(0, x1 - x0) * std::max(0, y1 - y0);
      for (int ty = y0; ty < y1; ++ty)
        for (int tx = x0; tx < x1; ++tx)
          if (!cull || cull_tile_may_contribute(cs[g], tx, ty, grid.width, grid.height)) {
            out.push_back(ty * grid.gx + tx);
            out.push_back(g);
          }
    }
    bbox_of[b] = bbox;
  }
  if (bbox_pairs) *bbox_pairs = std::accumulate(bbox_of.begin(), bbox_of.end(), int64_t(0));
  std::vector<int64_t> counts(T + 1, 0);
  for (const auto& v : pairs)
    for (size_t i = 0; i < v.size(); i += 2) ++counts[v[i] + 1];
  std::partial_sum(counts.begin(), counts.end(), counts.begin());
  const int64_t M = counts[T];
  TORCH_CHECK(M < (int64_t)INT32_MAX, "feature3dgs: too many tile-Gaussian pairs (", M,
              ") for int32 indexing; lower the resolution or the number of Gaussians");
  auto offsets = torch::from_blob(counts.data(), {T + 1}, torch::kInt64).to(torch::kInt32);
  auto ids = torch::empty({M}, torch::kInt32);
  int* id = ids.data_ptr<int>();
  std::vector<int64_t> fill(counts.begin(), counts.end() - 1);
  for (const auto& v : pairs)
    for (size_t i = 0; i < v.size(); i += 2) id[fill[v[i]]++] = v[i + 1];
  return {offsets, ids};
}

CpuRasterInputs raster_inputs(const TileGrid& grid, const torch::Tensor& means2d,
                              const torch::Tensor& conics, const torch::Tensor& colors,
                              const torch::Tensor& opacities, const torch::Tensor& depths,
                              const torch::Tensor& features, const torch::Tensor& offsets,
                              const torch::Tensor& ids, bool cull) {
  const int64_t C = features.dim() == 2 ? features.size(1) : 0;
  CpuRasterInputs in;
  in.width = grid.width;
  in.height = grid.height;
  in.grid_x = grid.gx;
  in.grid_y = grid.gy;
  in.C = C;
  in.means2d = means2d.data_ptr<float>();
  in.conics = conics.data_ptr<float>();
  in.colors = colors.data_ptr<float>();
  in.opacities = opacities.data_ptr<float>();
  in.depths = depths.data_ptr<float>();
  in.features = C > 0 ? features.data_ptr<float>() : nullptr;
  in.tile_offsets = offsets.data_ptr<int>();
  in.gaussian_ids = ids.data_ptr<int>();
  in.cull = cull ? 1 : 0;
  in.packed = nullptr;
  return in;
}

// pack_gaussian of every Gaussian (with radius > 0 when radii are given) for the
// SIMD kernels; nothing for the scalar ones.
std::vector<PackedGaussian> pack_gaussians(const CpuRasterInputs& in, const int* radii, int64_t N, bool need) {
  std::vector<PackedGaussian> packed(need ? N : 0);
  if (!need) return packed;
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < N; ++g)
    if (radii == nullptr || radii[g] > 0)
      packed[g] = pack_gaussian(in.means2d, in.conics, in.opacities, in.colors, in.depths, g);
  return packed;
}

// The SIMD kernels keep list positions in float lanes: exact below 2^24.
int max_tile_list(const int* off, int T) {
  int m = 0;
  for (int t = 0; t < T; ++t) m = std::max(m, off[t + 1] - off[t]);
  return m;
}

CpuKernels kernels_for_lists(const CpuKernels& k, const int* off, int T) {
  if (k.lanes > 1 && max_tile_list(off, T) >= (1 << 24)) return scalar_cpu_kernels();
  return k;
}

}  // namespace

void register_cpu_kernels(const CpuKernels& k) {
  TORCH_CHECK(k.abi == kCpuKernelsAbi, "feature3dgs: CPU kernels for ", k.isa, " were built for ABI ", k.abi,
              ", this feature3dgs._C expects ", kCpuKernelsAbi, "; rebuild the package");
  const std::string isa(k.isa);
  if (isa == "avx2") {
    registry().avx2 = k;
    registry().have_avx2 = true;
  } else if (isa == "avx512") {
    registry().avx512 = k;
    registry().have_avx512 = true;
  } else {
    TORCH_CHECK(false, "feature3dgs: unknown CPU kernel set '", isa, "'");
  }
}

std::vector<std::string> cpu_isas_compiled() {
  std::vector<std::string> v = {"scalar", "baseline"};
  if (registry().have_avx2) v.push_back("avx2");
  if (registry().have_avx512) v.push_back("avx512");
  return v;
}

std::vector<std::string> cpu_isas_available() {
  std::vector<std::string> v = {"scalar", "baseline"};
  if (registry().have_avx2 && cpu_supports("avx2")) v.push_back("avx2");
  if (registry().have_avx512 && cpu_supports("avx512")) v.push_back("avx512");
  return v;
}

CpuKernels selected_cpu_kernels() {
  const char* env = std::getenv("FEATURE3DGS_CPU_ISA");
  std::string want = env && *env ? env : "auto";
  const auto avail = cpu_isas_available();
  auto list = [&]() {
    std::string s;
    for (const auto& a : avail) s += (s.empty() ? "" : ", ") + a;
    return s;
  };
  if (want == "auto") want = avail.back();
  if (want == "scalar") return scalar_cpu_kernels();
  if (want == "baseline") return simd_baseline::simd_kernels();
  TORCH_CHECK_VALUE(want == "avx2" || want == "avx512", "FEATURE3DGS_CPU_ISA=", want,
                    ": expected one of auto, scalar, baseline, avx2, avx512");
  const bool compiled = want == "avx2" ? registry().have_avx2 : registry().have_avx512;
  TORCH_CHECK_VALUE(compiled, "FEATURE3DGS_CPU_ISA=", want, ": the ", want,
                    " kernels are not built into this installation (module feature3dgs._cpu_", want,
                    "); available: ", list());
  TORCH_CHECK_VALUE(cpu_supports(want), "FEATURE3DGS_CPU_ISA=", want, ": this CPU does not support ",
                    want == "avx2" ? "AVX2 and FMA" : "AVX-512 F/DQ/VL/BW", "; available: ", list());
  return want == "avx2" ? registry().avx2 : registry().avx512;
}

bool cpu_culling_enabled() { return env_flag("FEATURE3DGS_CPU_CULL", true); }
bool cpu_deterministic_enabled() { return env_flag("FEATURE3DGS_CPU_DETERMINISTIC", true); }

RasterizeOut rasterize_forward_cpu(const torch::Tensor& means2d, const torch::Tensor& conics,
                                   const torch::Tensor& colors, const torch::Tensor& opacities,
                                   const torch::Tensor& depths, const torch::Tensor& features,
                                   const torch::Tensor& radii, int width, int height) {
  return rasterize_forward_cpu_stats(means2d, conics, colors, opacities, depths, features, radii,
                                     width, height, nullptr);
}

RasterizeOut rasterize_forward_cpu_stats(const torch::Tensor& means2d, const torch::Tensor& conics,
                                         const torch::Tensor& colors, const torch::Tensor& opacities,
                                         const torch::Tensor& depths, const torch::Tensor& features,
                                         const torch::Tensor& radii, int width, int height,
                                         CpuRasterStats* stats) {
  const int64_t N = means2d.size(0);
  const int64_t C = features.dim() == 2 ? features.size(1) : 0;
  const TileGrid grid(width, height);
  const auto f32 = means2d.options();
  const CpuKernels chosen = selected_cpu_kernels();
  const bool cull = cpu_culling_enabled();
  // Every pixel belongs to one tile, and the kernels write every pixel of every tile.
  // Their blocks come from the host block cache, so repeated renders reuse mapped pages.
  auto out_rgb = cached_empty({3, height, width}, torch::kFloat32);
  auto out_feat = cached_empty({C, height, width}, torch::kFloat32);
  auto out_depth = cached_empty({1, height, width}, torch::kFloat32);
  auto out_alpha = cached_empty({1, height, width}, torch::kFloat32);
  auto final_T = cached_empty({height, width}, torch::kFloat32);
  auto last_contrib = cached_empty({height, width}, torch::kInt32);

  int64_t bbox_pairs = 0;
  const std::vector<CullSplat> cs = cull_splats(means2d.data_ptr<float>(), conics.data_ptr<float>(),
                                                opacities.data_ptr<float>(), radii.data_ptr<int>(), N);
  auto [offsets, ids] = bin_gaussians(grid, means2d.data_ptr<float>(), radii.data_ptr<int>(),
                                      depths.data_ptr<float>(), cs.data(), N, cull, &bbox_pairs);
  const CpuKernels k = kernels_for_lists(chosen, offsets.data_ptr<int>(), grid.count());
  CpuForwardArgs args;
  args.in = raster_inputs(grid, means2d, conics, colors, opacities, depths, features, offsets, ids, cull);
  const std::vector<PackedGaussian> packed = pack_gaussians(args.in, radii.data_ptr<int>(), N, k.lanes > 1);
  args.in.packed = packed.data();
  args.out_rgb = out_rgb.data_ptr<float>();
  args.out_feat = C > 0 ? out_feat.data_ptr<float>() : nullptr;
  args.out_depth = out_depth.data_ptr<float>();
  args.out_alpha = out_alpha.data_ptr<float>();
  args.out_T = final_T.data_ptr<float>();
  args.out_last = last_contrib.data_ptr<int>();
  CpuBlendStats blend{0, 0, 0., 0., 0};
  args.stats = stats ? &blend : nullptr;
  k.forward(&args);
  if (stats) {
    stats->isa = k.isa;
    stats->lanes = k.lanes;
    stats->cull = cull;
    stats->bbox_tile_pairs = bbox_pairs;
    stats->tile_pairs = ids.numel();
    stats->visited = blend.visited;
    stats->contributing = blend.contributing;
    stats->feature_gather_s = blend.feature_gather_s;
    stats->feature_gemm_s = blend.feature_gemm_s;
    stats->feature_list_lanes = blend.feature_list_lanes;
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
  const int64_t N = means2d.size(0);
  const int64_t C = features.dim() == 2 ? features.size(1) : 0;
  const TileGrid grid(width, height);
  TORCH_CHECK(tile_offsets.numel() == grid.count() + 1,
              "feature3dgs: tile_offsets does not match the image size");
  const auto zeros_like = [](const torch::Tensor& t) { return cached_zeros(t.sizes(), torch::kFloat32); };
  RasterizeGrads grads = {zeros_like(means2d),   zeros_like(conics), zeros_like(colors),
                          zeros_like(opacities), zeros_like(depths), zeros_like(features)};
  auto& [g_means2d, g_conics, g_colors, g_opacities, g_depths, g_features] = grads;
  const int* off = tile_offsets.data_ptr<int>();
  const CpuKernels k = kernels_for_lists(selected_cpu_kernels(), off, grid.count());
  const bool deterministic = cpu_deterministic_enabled();

  CpuBackwardArgs args;
  args.in = raster_inputs(grid, means2d, conics, colors, opacities, depths, features, tile_offsets,
                          gaussian_ids, cpu_culling_enabled());
  const std::vector<PackedGaussian> packed = pack_gaussians(args.in, nullptr, N, k.lanes > 1);
  args.in.packed = packed.data();
  args.final_T = final_T.data_ptr<float>();
  args.last_contrib = last_contrib.data_ptr<int>();
  args.dl_rgb = d_rgb.data_ptr<float>();
  args.dl_feat = C > 0 ? d_features.data_ptr<float>() : nullptr;
  args.dl_depth = d_depth.data_ptr<float>();
  args.dl_alpha = d_alpha.data_ptr<float>();
  CpuGradSink& sink = args.sink;
  std::memset(&sink, 0, sizeof(sink));
  float* o_m2d = g_means2d.data_ptr<float>();
  float* o_con = g_conics.data_ptr<float>();
  float* o_col = g_colors.data_ptr<float>();
  float* o_opa = g_opacities.data_ptr<float>();
  float* o_dep = g_depths.data_ptr<float>();
  float* o_feat = C > 0 ? g_features.data_ptr<float>() : nullptr;
  const int T = grid.count();
  if (N == 0 || gaussian_ids.numel() == 0) return grads;

  if (!deterministic) {
    sink.atomic = 1;
    sink.g_means2d = o_m2d;
    sink.g_conics = o_con;
    sink.g_colors = o_col;
    sink.g_opacities = o_opa;
    sink.g_depths = o_dep;
    sink.g_features = o_feat;
    std::vector<int> tiles(T + 1);  // one tile per task: atomics need no fold groups
    for (int t = 0; t <= T; ++t) tiles[t] = t;
    args.group_tiles = tiles.data();
    args.group_order = tiles.data();
    args.groups = T;
    k.backward(&args);
    return grads;
  }

  // Waves of consecutive tiles whose pairs' partial gradients fit the buffer
  // (64 MiB, or one tile's pairs if more), each reduced before the next.
  // FEATURE3DGS_CPU_WAVE_PAIRS overrides the size (tests: the sums must not depend on it).
  const int64_t per_pair = kPairGeomValues + C;
  int64_t wave_pairs = std::max<int64_t>(1, (int64_t(16) << 20) / per_pair);
  if (const char* w = std::getenv("FEATURE3DGS_CPU_WAVE_PAIRS"); w && *w) {
    char* end = nullptr;
    const long long v = std::strtoll(w, &end, 10);
    TORCH_CHECK_VALUE(end && *end == '\0' && v > 0, "FEATURE3DGS_CPU_WAVE_PAIRS=", w, ": expected a positive integer");
    wave_pairs = v;
  }
  const int64_t cap = std::max<int64_t>(max_tile_list(off, T), wave_pairs);
  const int64_t M = gaussian_ids.numel();
  const int64_t rows = std::min(cap, M);
  // Uninitialised: a row's first emit writes it (emit_pair_geom, and dL/dF's first store),
  // and the sum below reads only rows marked in `touched`, which is cleared per wave.
  const CachedScratch s_geom(sizeof(float) * rows * kPairGeomValues), s_feat(sizeof(float) * rows * C),
      s_touched(rows), s_row_gid(sizeof(int32_t) * rows);
  float* pair_geom = s_geom.as<float>();
  float* pair_feat = s_feat.as<float>();
  unsigned char* touched = s_touched.as<unsigned char>();
  int32_t* row_gid = s_row_gid.as<int32_t>();
  sink.pair_geom = pair_geom;
  sink.pair_feat = pair_feat;
  sink.touched = touched;
  sink.row_gid = row_gid;
  // The sums below take the Gaussians in blocks of 2^shift consecutive indices, small
  // enough that a block's output rows (C + kPairGeomValues floats each) stay in L2
  // while its pairs are added into them: at most 512 KiB, or one row; and at most
  // kMaxSumBlocks blocks, which bounds the sort's counts (threads x blocks) for large N.
  constexpr int64_t kMaxSumBlocks = 4096;
  int shift = 0;
  while (shift < 30 && (int64_t(2) << shift) * per_pair * (int64_t)sizeof(float) <= (int64_t(512) << 10)) ++shift;
  while (shift < 30 && ((N + (int64_t(1) << shift) - 1) >> shift) > kMaxSumBlocks) ++shift;
  const int64_t blocks = (N + (int64_t(1) << shift) - 1) >> shift;
  const int max_threads = omp_get_max_threads();
  // Per wave: each block's touched rows, in row order (a stable counting sort), as
  // offsets from the wave's first row; block b's at list[begin[b], begin[b + 1]).
  const CachedScratch s_list(sizeof(int32_t) * rows);
  int32_t* list = s_list.as<int32_t>();
  std::vector<int64_t> counts((size_t)max_threads * blocks), begin(blocks + 1);
  constexpr int kSumAhead = 8;  // the block's rows ahead that the ordered sums prefetch
  std::vector<int> group_tiles, group_order;
  for (int t0 = 0; t0 < T;) {
    // Whole fold groups while their pairs fit the buffer; a group larger than the buffer
    // alone is cut at tiles (its parts are then folded apart).
    int t1 = fold_group_end(t0, grid.gx);
    group_tiles.assign(1, t0);
    if (off[t1] - off[t0] > cap) {
      const int group_end = t1;
      t1 = t0 + 1;
      while (t1 < group_end && off[t1 + 1] - off[t0] <= cap) ++t1;
      group_tiles.push_back(t1);
    } else {
      group_tiles.push_back(t1);
      for (int next; t1 < T && off[next = fold_group_end(t1, grid.gx)] - off[t0] <= cap; t1 = next)
        group_tiles.push_back(next);
    }
    const int64_t pb = off[t0], pe = off[t1];
    if (pe == pb) {
      t0 = t1;
      continue;
    }
    std::memset(touched, 0, pe - pb);
    sink.pair_begin = pb;
    args.group_tiles = group_tiles.data();
    args.groups = (int)group_tiles.size() - 1;
    group_order.resize(args.groups);
    std::iota(group_order.begin(), group_order.end(), 0);
    const auto pairs_of = [&](int i) { return off[group_tiles[i + 1]] - off[group_tiles[i]]; };
    std::stable_sort(group_order.begin(), group_order.end(), [&](int a, int b) { return pairs_of(a) > pairs_of(b); });
    args.group_order = group_order.data();
    k.backward(&args);
#pragma omp parallel
    {
      // Each thread sorts one slice of the wave's rows into the blocks' lists (its
      // slots follow those of the slices before it, so every list is in row order).
      const int th = omp_get_thread_num(), nth = omp_get_num_threads();
      const int64_t n_rows = pe - pb, lo = n_rows * th / nth, hi = n_rows * (th + 1) / nth;
      int64_t* cnt = counts.data() + (int64_t)th * blocks;
      std::fill(cnt, cnt + blocks, int64_t(0));
      for (int64_t r = lo; r < hi; ++r)
        if (touched[r]) ++cnt[row_gid[r] >> shift];
#pragma omp barrier
#pragma omp single
      {
        int64_t at = 0;
        for (int64_t b = 0; b < blocks; ++b) {
          begin[b] = at;
          for (int t = 0; t < nth; ++t) {
            const int64_t n = counts[(int64_t)t * blocks + b];
            counts[(int64_t)t * blocks + b] = at;
            at += n;
          }
        }
        begin[blocks] = at;
      }
      for (int64_t r = lo; r < hi; ++r)
        if (touched[r]) list[cnt[row_gid[r] >> shift]++] = (int32_t)r;
#pragma omp barrier
      // Sum per Gaussian in row order (= tile order of the groups), one block per task.
      // The rows are a sparse subsequence of the wave's, which the hardware prefetchers
      // do not follow, and a block's output rows are read once into L2: both are
      // prefetched kSumAhead rows ahead.
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < blocks; ++b) {
        const int32_t* lb = list + begin[b];
        const int64_t n = begin[b + 1] - begin[b];
        for (int64_t q = 0; q < n; ++q) {
          if (q + kSumAhead < n) {
            // In the loop's body: GCC 12 dropped these from a helper function.
            const int64_t ra = lb[q + kSumAhead], ga = row_gid[ra];
            __builtin_prefetch(pair_geom + ra * kPairGeomValues);
            __builtin_prefetch(o_m2d + 2 * ga, 1);
            __builtin_prefetch(o_con + 3 * ga, 1);
            __builtin_prefetch(o_opa + ga, 1);
            __builtin_prefetch(o_col + 3 * ga, 1);
            __builtin_prefetch(o_dep + ga, 1);
            for (int64_t byte = 0; byte < C * (int64_t)sizeof(float); byte += 64) {
              __builtin_prefetch((const char*)(pair_feat + ra * C) + byte);
              __builtin_prefetch((const char*)(o_feat + ga * C) + byte, 1);
            }
          }
          const int64_t r = lb[q];
          const int64_t g = row_gid[r];
          const float* v = &pair_geom[r * kPairGeomValues];
          o_m2d[2 * g] += v[0];
          o_m2d[2 * g + 1] += v[1];
          o_con[3 * g] += v[2];
          o_con[3 * g + 1] += v[3];
          o_con[3 * g + 2] += v[4];
          o_opa[g] += v[5];
          o_col[3 * g] += v[6];
          o_col[3 * g + 1] += v[7];
          o_col[3 * g + 2] += v[8];
          o_dep[g] += v[9];
          const float* f = &pair_feat[r * C];
          float* dst = o_feat + g * C;
          for (int64_t c = 0; c < C; ++c) dst[c] += f[c];
        }
      }
    }
    t0 = t1;
  }
  return grads;
}

CpuCullCheck check_cpu_culling(const torch::Tensor& means2d, const torch::Tensor& conics,
                               const torch::Tensor& opacities, const torch::Tensor& radii, int width,
                               int height, int lanes) {
  const TileGrid grid(width, height);
  const int64_t N = means2d.size(0);
  const float* m2d = means2d.data_ptr<float>();
  const float* con = conics.data_ptr<float>();
  const float* opa = opacities.data_ptr<float>();
  const int* rad = radii.data_ptr<int>();
  int64_t tiles_culled = 0, tiles_wrong = 0, segs_culled = 0, segs_wrong = 0, pixels_wrong = 0;
#pragma omp parallel for schedule(dynamic, 64) reduction(+ : tiles_culled, tiles_wrong, segs_culled, segs_wrong, pixels_wrong)
  for (int64_t g = 0; g < N; ++g) {
    if (rad[g] <= 0) continue;
    const Vec2 mean = {m2d[2 * g], m2d[2 * g + 1]};
    const Sym2 conic = {con[3 * g], con[3 * g + 1], con[3 * g + 2]};
    const CullSplat cs = make_cull_splat(mean, conic, opa[g]);
    int x0, y0, x1, y1;
    tile_rect(mean, rad[g], grid.gx, grid.gy, x0, y0, x1, y1);
    for (int ty = y0; ty < y1; ++ty) {
      for (int tx = x0; tx < x1; ++tx) {
        const bool keep = cull_tile_may_contribute(cs, tx, ty, width, height);
        const int px0 = tx * kTileSize, py0 = ty * kTileSize;
        const int w = std::min(kTileSize, width - px0), h = std::min(kTileSize, height - py0);
        int64_t hits = 0;
        for (int r = 0; r < h; ++r) {
          const double yc = py0 + r + 0.5;
          for (int c0 = 0; c0 < w; c0 += lanes) {
            const int c1 = std::min(c0 + lanes, w) - 1;
            int64_t seg_hits = 0;
            for (int c = c0; c <= c1; ++c) {
              Splat s;
              seg_hits += eval_splat(mean, conic, opa[g], pixel_center(px0 + c, py0 + r), s);
            }
            hits += seg_hits;
            if (keep && lanes > 1) {  // the SIMD kernels' row-segment test (blend_simd.h live_chunks)
              bool seg_keep = cs.kind != kCullNone;
              if (cs.kind == kCullTest)
                seg_keep = cull_segment_may_contribute(cs, yc - cs.my, px0 + c0 + 0.5 - cs.mx,
                                                       px0 + c1 + 0.5 - cs.mx);
              if (!seg_keep) {
                ++segs_culled;
                if (seg_hits) ++segs_wrong, pixels_wrong += seg_hits;
              }
            }
          }
        }
        if (!keep) {
          ++tiles_culled;
          if (hits) ++tiles_wrong, pixels_wrong += hits;
        }
      }
    }
  }
  return {tiles_culled, tiles_wrong, segs_culled, segs_wrong, pixels_wrong};
}

}  // namespace f3d
