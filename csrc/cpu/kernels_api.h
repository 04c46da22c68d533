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

#include <cmath>
#include <cstdint>

#include "f3d/cull.h"

namespace f3d {

constexpr int kCpuKernelsAbi = 9;

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

// Where a tile's partial gradients go. Deterministic mode: pair i (a position in
// gaussian_ids) of the current wave writes row i - pair_begin of pair_geom /
// pair_feat and sets touched[i - pair_begin]; rasterize.cpp sums them per Gaussian
// in tile order. Atomic mode (kept to measure the cost of determinism): atomic adds
// straight into the gradients, in an order that depends on the thread schedule.
struct CpuGradSink {
  int atomic;
  int64_t pair_begin;
  float* pair_geom;          // (wave pairs, kPairGeomValues)
  float* pair_feat;          // (wave pairs, C)
  unsigned char* touched;    // (wave pairs)
  float* g_means2d;          // atomic mode: (N, 2)
  float* g_conics;           // (N, 3)
  float* g_colors;           // (N, 3)
  float* g_opacities;        // (N,)
  float* g_depths;           // (N,)
  float* g_features;         // (N, C)
};

struct CpuBackwardArgs {
  CpuRasterInputs in;
  const float* final_T;      // (H, W)
  const int* last_contrib;   // (H, W)
  const float* dl_rgb;       // (3, H, W)
  const float* dl_feat;      // (C, H, W)
  const float* dl_depth;     // (H, W)
  const float* dl_alpha;     // (H, W)
  int tile_begin, tile_end;  // the wave of tiles to process
  CpuGradSink sink;
};

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

// The partial gradient of one (tile, Gaussian) pair.
inline void emit_pair_grad(const CpuGradSink& s, int64_t pair, int g, const float* geom,
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
  // A pair may be emitted more than once (the SIMD kernels emit one partial per band
  // of rows, in band order): the first write sets, later ones add.
  const int64_t r = pair - s.pair_begin;
  float* pg = s.pair_geom + r * kPairGeomValues;
  float* pf = s.pair_feat + r * C;
  if (!s.touched[r]) {
    for (int v = 0; v < kPairGeomValues; ++v) pg[v] = geom[v];
    if (feat != pf)  // the GEMM backward writes dL/dF in place (blend_simd.h TileGrads)
      for (int64_t c = 0; c < C; ++c) pf[c] = feat[c];
    s.touched[r] = 1;
  } else {
    for (int v = 0; v < kPairGeomValues; ++v) pg[v] += geom[v];
    for (int64_t c = 0; c < C; ++c) pf[c] += feat[c];
  }
}

}  // namespace f3d
