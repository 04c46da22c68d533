// The interface between the CPU rasterizer's host code (rasterize.cpp: binning,
// dispatch, the deterministic gradient reduction) and its per-tile blend kernels,
// one set per instruction set: the scalar kernels (today's loop, blend_scalar.cpp),
// the baseline SIMD kernels compiled into feature3dgs._C, and the AVX2 and AVX-512
// SIMD kernels, each in a small extension module of its own (isa/*.cpp) compiled
// with its own -m flags, so that no code of a wider ISA can leak into a narrower
// path (see docs/architecture.md, "CPU SIMD and dispatch").
//
// Plain C++ only: raw pointers, no torch types, so that an ISA module needs no
// torch headers beyond ATen's vector layer. Bump kCpuKernelsAbi on any change.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "f3d/cull.h"

namespace f3d {

constexpr int kCpuKernelsAbi = 10;

// Values of one (tile, Gaussian) pair's partial gradient, in this order.
constexpr int kPairGeomValues = 10;  // means2d x, y; conic a, b, c; opacity; rgb; depth

// What the SIMD blend reads of one Gaussian, in one cache line (the tile lists
// visit the Gaussians in depth order, so these reads are scattered).
struct alignas(64) PackedGaussian {
  float mx, my;         // mean2d
  float ca, cb, cc;     // conic
  float opacity;
  float r, g, b;        // colour
  float depth;
  int cull_kind;        // f3d::CullKind
  float cull_ry;        // CullSplat ry, rounded up
  double cull_t, cull_kx;  // CullSplat t and kx; its a, c are the conic's times (1 - 2 kCullFormSlack)
};
static_assert(sizeof(PackedGaussian) == 64, "one cache line");

inline PackedGaussian pack_gaussian(const float* means2d, const float* conics, const float* opacities,
                                    const float* colors, const float* depths, int64_t g) {
  PackedGaussian p;
  p.mx = means2d[2 * g];
  p.my = means2d[2 * g + 1];
  p.ca = conics[3 * g];
  p.cb = conics[3 * g + 1];
  p.cc = conics[3 * g + 2];
  p.opacity = opacities[g];
  p.r = colors[3 * g];
  p.g = colors[3 * g + 1];
  p.b = colors[3 * g + 2];
  p.depth = depths[g];
  const CullSplat cs = make_cull_splat({p.mx, p.my}, {p.ca, p.cb, p.cc}, p.opacity);
  p.cull_kind = cs.kind;
  p.cull_ry = (float)cs.ry;
  if ((double)p.cull_ry < cs.ry) p.cull_ry = nextafterf(p.cull_ry, INFINITY);
  p.cull_t = cs.t;
  p.cull_kx = cs.kx;
  return p;
}

// The CullSplat of a packed Gaussian (the fields the row-segment test uses).
inline CullSplat unpack_cull(const PackedGaussian& p) {
  CullSplat s;
  s.mx = p.mx;
  s.my = p.my;
  s.a = (double)p.ca * (1.0 - 2.0 * kCullFormSlack);
  s.b = p.cb;
  s.c = (double)p.cc * (1.0 - 2.0 * kCullFormSlack);
  s.t = p.cull_t;
  s.kx = p.cull_kx;
  s.ky = 0.0;
  s.ry = p.cull_ry;
  s.kind = p.cull_kind;
  return s;
}

struct CpuRasterInputs {
  int width, height, grid_x, grid_y;
  int64_t C;                 // feature channels (0 allowed)
  const float* means2d;      // (N, 2)
  const float* conics;       // (N, 3)
  const float* colors;       // (N, 3)
  const float* opacities;    // (N,)
  const float* depths;       // (N,)
  const float* features;     // (N, C), null when C == 0
  const int* tile_offsets;   // (T + 1,)
  const int* gaussian_ids;   // (M,) per tile, front to back
  int cull;                  // skip rows / row segments that f3d/cull.h proves empty
  const PackedGaussian* packed;  // (N,) pack_gaussian of each Gaussian in the lists
};

// Counters of the blend, summed over tiles (only when requested).
struct CpuBlendStats {
  int64_t visited;       // (pixel, Gaussian) pairs whose alpha was evaluated (pixel not done)
  int64_t contributing;  // pairs that were blended (alpha >= kAlphaMin, T stayed >= kTransmittanceMin)
  // The feature GEMM's phases (SIMD kernels from L channels up; 0 elsewhere), in seconds
  // summed over the threads: gathering the tile's feature rows, and the products with
  // their stores into the (C, H, W) output.
  double feature_gather_s;
  double feature_gemm_s;
  // The lanes the forward GEMM computes: its list entries times the pixels of a list
  // block (the blended pairs among them are `contributing`; the rest are 0 weights).
  int64_t feature_list_lanes;
};

struct CpuForwardArgs {
  CpuRasterInputs in;
  float* out_rgb;    // (3, H, W)
  float* out_feat;   // (C, H, W)
  float* out_depth;  // (H, W)
  float* out_alpha;  // (H, W)
  float* out_T;      // (H, W)
  int* out_last;     // (H, W): 1 + the last blended position in the tile's list, 0 for none
  CpuBlendStats* stats;  // null: no counting
};

// The backward's fold groups: runs of up to kFoldTiles consecutive tiles of one tile row.
// In deterministic mode one thread takes a group's tiles in order, and the pairs of one
// Gaussian in a group share one row of partial gradients (about half as many rows to sum
// on the benchmark scene as one row per pair). The groups depend on the image size only,
// so the sums are the same bits for any thread count.
constexpr int kFoldTiles = 8;

// One past the last tile of the fold group of tile t (grid_x tiles per row).
inline int fold_group_end(int t, int grid_x) {
  const int tx = t % grid_x;
  return t - tx + std::min(grid_x, (tx / kFoldTiles + 1) * kFoldTiles);
}

// Where a tile's partial gradients go. Deterministic mode: the pairs of fold group
// [t0, t1) of the current wave own rows tile_offsets[t0] - pair_begin onwards of
// pair_geom / pair_feat, one per Gaussian with a contribution, taken in the order the
// kernel first emits into them (PairRows); a used row r has touched[r] = 1 and
// row_gid[r] = its Gaussian. rasterize.cpp sums the rows per Gaussian in row order.
// Atomic mode (kept to measure the cost of determinism): atomic adds straight into the
// gradients, in an order that depends on the thread schedule.
struct CpuGradSink {
  int atomic;
  int64_t pair_begin;
  float* pair_geom;          // (wave pairs, kPairGeomValues)
  float* pair_feat;          // (wave pairs, C)
  unsigned char* touched;    // (wave pairs)
  int32_t* row_gid;          // (wave pairs): the Gaussian of each touched row
  float* g_means2d;          // atomic mode: (N, 2)
  float* g_conics;           // (N, 3)
  float* g_colors;           // (N, 3)
  float* g_opacities;        // (N,)
  float* g_depths;           // (N,)
  float* g_features;         // (N, C)
};

// Per thread, the rows of the fold group it is working on: Gaussian -> row, an open
// addressing table sized for the group's pairs.
class PairRows {
 public:
  // The group owns rows [first_row, first_row + pairs) of the sink.
  void begin_group(int64_t first_row, int64_t pairs) {
    first_ = first_row;
    used_ = 0;
    bits_ = 4;
    while ((int64_t(1) << bits_) < 2 * pairs) ++bits_;
    const size_t n = size_t(1) << bits_;
    if (keys_.size() < n) keys_.resize(n), rows_.resize(n);
    std::fill(keys_.begin(), keys_.begin() + n, -1);
  }
  // The row of Gaussian g; fresh: g had no row in this group yet (it gets the next one).
  int64_t row(int g, bool& fresh) {
    const uint32_t mask = (uint32_t(1) << bits_) - 1;
    for (uint32_t h = (uint32_t(g) * 2654435761u) >> (32 - bits_);; h = (h + 1) & mask) {
      if (keys_[h] == g) {
        fresh = false;
        return rows_[h];
      }
      if (keys_[h] < 0) {
        keys_[h] = g;
        rows_[h] = first_ + used_++;
        fresh = true;
        return rows_[h];
      }
    }
  }

 private:
  std::vector<int32_t> keys_;
  std::vector<int64_t> rows_;
  int64_t first_ = 0, used_ = 0;
  int bits_ = 4;
};

struct CpuBackwardArgs {
  CpuRasterInputs in;
  const float* final_T;      // (H, W)
  const int* last_contrib;   // (H, W)
  const float* dl_rgb;       // (3, H, W)
  const float* dl_feat;      // (C, H, W)
  const float* dl_depth;     // (H, W)
  const float* dl_alpha;     // (H, W)
  // The wave's fold groups: group i is tiles [group_tiles[i], group_tiles[i + 1]), taken
  // by one thread in order. The threads take the groups in group_order (largest first,
  // so that the wave ends with small ones; the order does not change any result).
  const int* group_tiles;    // (groups + 1,)
  const int* group_order;    // (groups,)
  int groups;
  CpuGradSink sink;
};

// The tiles [begin, end) of the q-th fold group that a thread takes (in group_order); in
// deterministic mode it also starts the group's rows.
struct TileRange {
  int begin, end;
};
inline TileRange start_fold_group(const CpuBackwardArgs& a, int q, PairRows& rows) {
  const int group = a.group_order[q];
  const TileRange r{a.group_tiles[group], a.group_tiles[group + 1]};
  if (!a.sink.atomic) {
    const int64_t first = a.in.tile_offsets[r.begin];
    rows.begin_group(first - a.sink.pair_begin, a.in.tile_offsets[r.end] - first);
  }
  return r;
}

// One instruction set's kernels. forward / backward run the OpenMP loop over the
// tiles themselves.
struct CpuKernels {
  int abi;
  const char* isa;  // "scalar", "baseline", "avx2", "avx512"
  int lanes;        // pixels per SIMD step (1 for scalar)
  void (*forward)(const CpuForwardArgs*);
  void (*backward)(const CpuBackwardArgs*);
  // The fp32 multiply-add throughput that this ISA's code reaches on all OpenMP
  // threads, measured over about `seconds` (GFLOP/s, 2 flops per lane per
  // multiply-add): the machine's limit as the benchmarks compare against it.
  double (*fma_gflops)(double seconds);
};

// Runs `step` (a fixed number of multiply-adds on independent chains; returns how many
// flops it did) repeatedly on every thread until `seconds` have passed; GFLOP/s.
template <typename Step>
inline double measure_gflops(double seconds, Step step) {
  double flops = 0.0;
  const double t0 = omp_get_wtime();
#pragma omp parallel reduction(+ : flops)
  {
    do flops += step();
    while (omp_get_wtime() - t0 < seconds);
  }
  return flops / (omp_get_wtime() - t0) / 1e9;
}

// Deterministic mode: the geometry values of a pair into row r of its fold group (set if
// the row is fresh, else added).
inline void emit_pair_geom(const CpuGradSink& s, int64_t r, bool fresh, int g, const float* geom) {
  float* pg = s.pair_geom + r * kPairGeomValues;
  if (fresh) {
    for (int v = 0; v < kPairGeomValues; ++v) pg[v] = geom[v];
    s.touched[r] = 1;
    s.row_gid[r] = g;
  } else {
    for (int v = 0; v < kPairGeomValues; ++v) pg[v] += geom[v];
  }
}

// The partial gradient of one (tile, Gaussian) pair: into the row of its Gaussian in the
// current fold group (rows; deterministic mode) or atomically into the gradients.
inline void emit_pair_grad(const CpuGradSink& s, PairRows& rows, int g, const float* geom,
                           const float* feat, int64_t C) {
  if (s.atomic) {
    float* dst[kPairGeomValues] = {s.g_means2d + 2 * (int64_t)g,     s.g_means2d + 2 * (int64_t)g + 1,
                                   s.g_conics + 3 * (int64_t)g,      s.g_conics + 3 * (int64_t)g + 1,
                                   s.g_conics + 3 * (int64_t)g + 2,  s.g_opacities + g,
                                   s.g_colors + 3 * (int64_t)g,      s.g_colors + 3 * (int64_t)g + 1,
                                   s.g_colors + 3 * (int64_t)g + 2,  s.g_depths + g};
    for (int v = 0; v < kPairGeomValues; ++v) {
#pragma omp atomic update
      *dst[v] += geom[v];
    }
    float* fd = s.g_features + (int64_t)g * C;
    for (int64_t c = 0; c < C; ++c) {
#pragma omp atomic update
      fd[c] += feat[c];
    }
    return;
  }
  bool fresh;
  const int64_t r = rows.row(g, fresh);
  emit_pair_geom(s, r, fresh, g, geom);
  float* pf = s.pair_feat + r * C;
  if (fresh)
    for (int64_t c = 0; c < C; ++c) pf[c] = feat[c];
  else
    for (int64_t c = 0; c < C; ++c) pf[c] += feat[c];
}

}  // namespace f3d
