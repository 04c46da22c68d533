// The CPU rasterizer's dispatch and diagnostics, for bindings.cpp: which blend
// kernels exist and are chosen (FEATURE3DGS_CPU_ISA), the registration of the
// per-ISA modules, the run-time switches, and two entry points for tests and
// benchmarks: a forward that counts pairs, and a brute-force check of the culling.
#pragma once

#include <string>
#include <vector>

#include "cpu/kernels_api.h"
#include "ops.h"

namespace f3d {

// Whether this CPU (and OS) supports the instruction set "avx2" (with FMA) or
// "avx512" (F, DQ, VL, BW); false for any other name and on other architectures.
bool cpu_supports(const std::string& isa);
// Adds an ISA module's kernels (avx2, avx512); checks the ABI version.
void register_cpu_kernels(const CpuKernels& k);
std::vector<std::string> cpu_isas_compiled();   // built into this installation
std::vector<std::string> cpu_isas_available();  // built and supported by this CPU, narrowest first
// The kernels FEATURE3DGS_CPU_ISA selects (auto: the last of cpu_isas_available());
// a clear ValueError for an unknown or unavailable value.
CpuKernels selected_cpu_kernels();
bool cpu_culling_enabled();        // FEATURE3DGS_CPU_CULL, default on
bool cpu_deterministic_enabled();  // FEATURE3DGS_CPU_DETERMINISTIC, default on

struct CpuRasterStats {
  std::string isa;
  int lanes = 1;
  bool cull = true;
  int64_t bbox_tile_pairs = 0;  // (tile, Gaussian) pairs of the tile rectangles
  int64_t tile_pairs = 0;       // pairs binned (after the exact tile culling when on)
  int64_t visited = 0;          // (pixel, Gaussian) alpha evaluations of the blend
  int64_t contributing = 0;     // (pixel, Gaussian) pairs blended
  double feature_gather_s = 0;  // the feature GEMM's phases, seconds summed over the threads
  double feature_gemm_s = 0;    // (CpuBlendStats)
  int64_t feature_list_lanes = 0;  // lanes the forward GEMM computes (CpuBlendStats)
};

// rasterize_forward_cpu that also fills stats (when not null).
RasterizeOut rasterize_forward_cpu_stats(const torch::Tensor& means2d, const torch::Tensor& conics,
                                         const torch::Tensor& colors, const torch::Tensor& opacities,
                                         const torch::Tensor& depths, const torch::Tensor& features,
                                         const torch::Tensor& radii, int width, int height,
                                         CpuRasterStats* stats);

// Every tile of every Gaussian's rectangle, and every row segment of `lanes` pixels
// of the tiles kept, tested against f3d::eval_splat at each pixel: how many were
// culled, and how many culled ones have a pixel where the blend would use the
// Gaussian (must be 0).
struct CpuCullCheck {
  int64_t tiles_culled, tiles_wrong, segments_culled, segments_wrong, pixels_wrong;
};
CpuCullCheck check_cpu_culling(const torch::Tensor& means2d, const torch::Tensor& conics,
                               const torch::Tensor& opacities, const torch::Tensor& radii, int width,
                               int height, int lanes);

}  // namespace f3d
