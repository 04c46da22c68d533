// CUDA rasterizer backward: one 16x16 thread block per (tile, channel tile), one
// thread per pixel, walking the tile's Gaussians back to front in batches staged
// through shared memory, with the CPU's per-pixel formulation: the transmittance
// in front of each Gaussian is recovered by division from final_T, and
//   Q        = sum over the Gaussians behind of w_j (dL/dout . v_j)
//   d_alpha  = T (dL/dout . v) - Q / (1 - alpha)
// where v stacks rgb (3), depth (1), alpha (v = 1) and the C feature channels.
//
// Channel tiles: d_alpha and Q are linear in v, and so is everything that
// eval_splat_backward derives from d_alpha. Block (t, k) therefore works on the
// part of v it owns (k == 0: rgb, depth, alpha and channel tile 0; k > 0: channel
// tile k), with its own partial Q_k and d_alpha_k = T gv_k - Q_k / (1 - alpha),
// and adds its partial gradients of means2d, conics and opacities; the sum over
// k is the CPU's value up to float rounding. Each block holds only its CT
// channels of dL/dfeatures per pixel, shared memory is bounded independently of
// C, and no work is repeated across channel tiles except the alpha/T recovery.
//
// Per Gaussian, each warp reduces its pixels' gradients with a reduce-scatter
// (gpu::warp_reduce_scatter) and then issues one atomic add per value from one
// lane per value, only when some lane of the warp was touched by the Gaussian.
#include <cstdlib>
#include <cstring>

#include "f3d/blend.h"
#include "helpers.cuh"
#include "host_buffers.h"

namespace f3d {

namespace {

using gpu::kBatch;
using gpu::kBlockPixels;
using gpu::kChannelChunk;
using gpu::kFullMask;

struct BackwardParams : gpu::RasterInputs {
  const float* final_T;    // (H, W)
  const int* last_contrib; // (H, W)
  const float* dl_rgb;     // (3, H, W)
  const float* dl_feat;    // (C, H, W)
  const float* dl_depth;   // (H, W)
  const float* dl_alpha;   // (H, W)
  float* g_means2d;        // (N, 2)
  float* g_conics;         // (N, 3)
  float* g_colors;         // (N, 3)
  float* g_opacities;      // (N,)
  float* g_depths;         // (N,)
  float* g_features;       // (N, C)
};

// Slot i of the per-Gaussian values reduced across the warp: 0-1 means2d,
// 2-4 conics, 5 opacity, 6-8 colour, 9 depth.
constexpr int kGeomValues = 6;   // what every channel tile adds
constexpr int kBaseValues = 10;  // channel tile 0 adds colour and depth too

__device__ __forceinline__ float* slot_address(const BackwardParams& p, int g, int slot) {
  if (slot < 2) return p.g_means2d + 2 * (int64_t)g + slot;
  if (slot < 5) return p.g_conics + 3 * (int64_t)g + (slot - 2);
  if (slot == 5) return p.g_opacities + g;
  if (slot < 9) return p.g_colors + 3 * (int64_t)g + (slot - 6);
  return p.g_depths + g;
}

// Reduce-scatters v[0..NV) over the warp and adds the sums of the first n slots
// to the Gaussian's gradients, one lane per slot.
template <int NV, int LEN>
__device__ __forceinline__ void reduce_add_slots(const BackwardParams& p, int g, float (&v)[LEN],
                                                 int n, int lane) {
  gpu::warp_reduce_scatter<NV>(v, lane);
  constexpr int kLanesPerValue = 32 / NV;
  const int slot = lane / kLanesPerValue;
  if (lane % kLanesPerValue == 0 && slot < n) atomicAdd(slot_address(p, g, slot), v[0]);
}

// Same for one channel tile of the feature gradient: channel c0 + i, i < cn.
template <int NV, int LEN>
__device__ __forceinline__ void reduce_add_features(float* g_feat_row, float (&v)[LEN], int cn,
                                                    int lane) {
  gpu::warp_reduce_scatter<NV>(v, lane);
  constexpr int kLanesPerValue = 32 / NV;
  const int c = lane / kLanesPerValue;
  if (lane % kLanesPerValue == 0 && c < cn) atomicAdd(g_feat_row + c, v[0]);
}

// MIN_BLOCKS: __launch_bounds__'s minimum of resident blocks per SM (1: no
// register cap beyond the block size's; 3: at most 85 registers a thread).
template <int CT, int MIN_BLOCKS>
__global__ void __launch_bounds__(kBlockPixels, MIN_BLOCKS) render_backward_kernel(const BackwardParams p) {
  static_assert(CT == 8 || CT == 16 || CT == 32, "CT");
  __shared__ int s_id[kBatch];
  __shared__ float2 s_xy[kBatch];
  __shared__ float4 s_con_o[kBatch];  // conic a, b, c, opacity
  __shared__ float4 s_col_d[kBatch];  // rgb, depth (channel tile 0 only)
  __shared__ __align__(16) float s_feat[kBatch][CT];
  __shared__ int s_max_last;

  const int tile = blockIdx.x;
  const int k = blockIdx.y;  // channel tile
  const bool base = k == 0;  // also owns rgb, depth and alpha
  const int c0 = k * CT;
  const int cn = max(0, min(CT, p.C - c0));
  const int tid = threadIdx.y * kTileSize + threadIdx.x;
  const int lane = tid & 31;
  const int px = (tile % p.grid_x) * kTileSize + threadIdx.x;
  const int py = (tile / p.grid_x) * kTileSize + threadIdx.y;
  const bool inside = px < p.width && py < p.height;
  const int64_t HW = (int64_t)p.width * p.height;
  const int64_t pix = inside ? (int64_t)py * p.width + px : 0;
  const Vec2 center = pixel_center(px, py);

  // Per-pixel state; pixels outside the image have last = 0 and never contribute
  // but take part in the barriers and the warp reductions.
  float T = 1.f;
  int last = 0;
  float gl_rgb[3] = {0.f, 0.f, 0.f}, gl_depth = 0.f, gl_alpha = 0.f;
  float gl_feat[CT];
#pragma unroll
  for (int c = 0; c < CT; ++c) gl_feat[c] = 0.f;
  if (inside) {
    T = p.final_T[pix];
    last = p.last_contrib[pix];
#pragma unroll
    for (int c = 0; c < CT; ++c)
      if (c < cn) gl_feat[c] = p.dl_feat[(int64_t)(c0 + c) * HW + pix];
    if (base) {
      gl_rgb[0] = p.dl_rgb[0 * HW + pix];
      gl_rgb[1] = p.dl_rgb[1 * HW + pix];
      gl_rgb[2] = p.dl_rgb[2 * HW + pix];
      gl_depth = p.dl_depth[pix];
      gl_alpha = p.dl_alpha[pix];
    }
  }
  float Q = 0.f;

  if (tid == 0) s_max_last = 0;
  __syncthreads();
  if (last > 0) atomicMax(&s_max_last, last);
  __syncthreads();
  const int n = s_max_last;  // Gaussians at positions >= n contribute to no pixel
  const int start = p.tile_offsets[tile];

  for (int b = 0; b < n; b += kBatch) {
    const int count = min(kBatch, n - b);
    __syncthreads();  // the previous batch is consumed
    // Back to front: shared slot j holds position n - 1 - b - j of the tile's list.
    if (tid < count) {
      const int64_t g = p.gaussian_ids[start + n - 1 - b - tid];
      s_id[tid] = (int)g;
      s_xy[tid] = make_float2(p.means2d[2 * g], p.means2d[2 * g + 1]);
      s_con_o[tid] = make_float4(p.conics[3 * g], p.conics[3 * g + 1], p.conics[3 * g + 2],
                                 p.opacities[g]);
      if (base)
        s_col_d[tid] = make_float4(p.colors[3 * g], p.colors[3 * g + 1], p.colors[3 * g + 2],
                                   p.depths[g]);
    }
    if (cn > 0) {
      __syncthreads();  // s_id
      for (int e = tid; e < count * CT; e += kBlockPixels) {
        const int j = e / CT, c = e % CT;
        // Zeros past the valid channels: they meet gl_feat = 0 in the dot product.
        s_feat[j][c] = c < cn ? p.features[(int64_t)s_id[j] * p.C + c0 + c] : 0.f;
      }
    }
    __syncthreads();

    // Every thread visits every slot (no early exit): the warp reductions need
    // all 32 lanes.
    for (int j = 0; j < count; ++j) {
      const int pos = n - 1 - b - j;
      const float4 co = s_con_o[j];
      const Sym2 conic = {co.x, co.y, co.z};
      const float opacity = co.w;
      Splat s;
      bool valid = pos < last;
      if (valid) valid = eval_splat({s_xy[j].x, s_xy[j].y}, conic, opacity, center, s);
      if (!__any_sync(kFullMask, valid)) continue;  // warp-uniform

      float w = 0.f;
      SplatGrad sg = {{0.f, 0.f}, {0.f, 0.f, 0.f}, 0.f};
      if (valid) {
        const float one_minus = 1.f - s.alpha;
        T = T / one_minus;  // transmittance in front of this Gaussian
        w = s.alpha * T;
        // gv_k = dL/dout . v over the channels this block owns.
        float gv = 0.f;
        if (base) {
          const float4 cd = s_col_d[j];
          gv = gl_rgb[0] * cd.x + gl_rgb[1] * cd.y + gl_rgb[2] * cd.z + gl_depth * cd.w + gl_alpha;
        }
#pragma unroll
        for (int c8 = 0; c8 < CT; c8 += kChannelChunk) {
          if (c8 < cn) {
#pragma unroll
            for (int c = c8; c < c8 + kChannelChunk; c += 4) {
              const float4 f = *reinterpret_cast<const float4*>(&s_feat[j][c]);
              gv += gl_feat[c + 0] * f.x + gl_feat[c + 1] * f.y + gl_feat[c + 2] * f.z +
                    gl_feat[c + 3] * f.w;
            }
          }
        }
        const float d_alpha = T * gv - Q / one_minus;
        Q += w * gv;
        sg = eval_splat_backward(s, conic, opacity, d_alpha);
      }

      const int g = s_id[j];
      // means2d, conics, opacity (partial over channel tiles); colour and depth.
      float v[16] = {sg.mean2d.x, sg.mean2d.y, sg.conic.a, sg.conic.b, sg.conic.c, sg.opacity,
                     valid ? w * gl_rgb[0] : 0.f, valid ? w * gl_rgb[1] : 0.f,
                     valid ? w * gl_rgb[2] : 0.f, valid ? w * gl_depth : 0.f,
                     0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      if (base)
        reduce_add_slots<16>(p, g, v, kBaseValues, lane);
      else
        reduce_add_slots<8>(p, g, v, kGeomValues, lane);

      if (cn > 0) {
        // dL/dfeature_c = sum over pixels of w dL/dout_c.
        float f[CT];
#pragma unroll
        for (int c = 0; c < CT; ++c) f[c] = valid ? w * gl_feat[c] : 0.f;
        float* row = p.g_features + (int64_t)g * p.C + c0;
        if constexpr (CT >= 32) {
          if (cn > 16) {
            reduce_add_features<32>(row, f, cn, lane);
            continue;
          }
        }
        if constexpr (CT >= 16) {
          if (cn > 8) {
            reduce_add_features<16>(row, f, cn, lane);
            continue;
          }
        }
        reduce_add_features<8>(row, f, cn, lane);
      }
    }
  }
}

// The compiled variants of the backward, chosen at run time by the environment
// variable FEATURE3DGS_CUDA_BACKWARD (read at every call, so that a benchmark
// can time them against each other in one process):
//   ct32 (default): channel tiles of 32, no register cap (ptxas, CUDA 13.0:
//         115 registers on sm_80, 122 on sm_90: 2 blocks per SM);
//   ct16: channel tiles of 16 (half the feature registers and shared memory,
//         twice the blocks) under __launch_bounds__(256, 3): 76 / 80 registers,
//         no spill, 3 blocks per SM (without the cap ct16 takes 81 / 87: still 2);
//   lb3:  channel tiles of 32 under __launch_bounds__(256, 3): 80 registers,
//         3 blocks per SM, but ptxas spills (a 48-byte stack frame).
// benchmarks/cuda_resources.py records these figures; benchmarks/gpu_check.sh
// times the variants against each other.
enum class BackwardVariant { kCt32, kCt16, kLb3 };

BackwardVariant backward_variant() {
  const char* v = std::getenv("FEATURE3DGS_CUDA_BACKWARD");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "ct32") == 0) return BackwardVariant::kCt32;
  if (std::strcmp(v, "ct16") == 0) return BackwardVariant::kCt16;
  if (std::strcmp(v, "lb3") == 0) return BackwardVariant::kLb3;
  TORCH_CHECK_VALUE(false, "FEATURE3DGS_CUDA_BACKWARD must be ct32, ct16 or lb3, got '", v, "'");
}

}  // namespace

RasterizeGrads rasterize_backward_cuda(
    const torch::Tensor& means2d, const torch::Tensor& conics, const torch::Tensor& colors,
    const torch::Tensor& opacities, const torch::Tensor& depths, const torch::Tensor& features,
    int width, int height, const torch::Tensor& final_T, const torch::Tensor& last_contrib,
    const torch::Tensor& tile_offsets, const torch::Tensor& gaussian_ids,
    const torch::Tensor& d_rgb, const torch::Tensor& d_features, const torch::Tensor& d_depth,
    const torch::Tensor& d_alpha) {
  const BackwardVariant variant = backward_variant();
  const c10::cuda::CUDAGuard guard(means2d.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int64_t C = features.dim() == 2 ? features.size(1) : 0;  // as the CPU version
  TORCH_CHECK(C < (int64_t)INT32_MAX, "feature3dgs: too many feature channels");
  const gpu::TileGrid grid(width, height);
  RasterizeGrads grads = zero_rasterize_grads(means2d, conics, colors, opacities, depths, features);
  auto& [g_means2d, g_conics, g_colors, g_opacities, g_depths, g_features] = grads;
  if (means2d.size(0) == 0 || gaussian_ids.numel() == 0)
    return grads;
  TORCH_CHECK(tile_offsets.numel() == grid.count() + 1,
              "feature3dgs: tile_offsets does not match the image size");

  BackwardParams p;
  gpu::fill_raster_inputs(p, grid, C, tile_offsets, gaussian_ids, means2d, conics, opacities, colors, depths,
                          features);
  p.final_T = final_T.data_ptr<float>();
  p.last_contrib = last_contrib.data_ptr<int>();
  p.dl_rgb = d_rgb.data_ptr<float>();
  p.dl_feat = C > 0 ? d_features.data_ptr<float>() : nullptr;
  p.dl_depth = d_depth.data_ptr<float>();
  p.dl_alpha = d_alpha.data_ptr<float>();
  p.g_means2d = g_means2d.data_ptr<float>();
  p.g_conics = g_conics.data_ptr<float>();
  p.g_colors = g_colors.data_ptr<float>();
  p.g_opacities = g_opacities.data_ptr<float>();
  p.g_depths = g_depths.data_ptr<float>();
  p.g_features = C > 0 ? g_features.data_ptr<float>() : nullptr;

  const int ct = variant == BackwardVariant::kCt16 ? 16 : gpu::kChannelTile;
  const int64_t n_ct = gpu::num_channel_tiles(C, ct);
  TORCH_CHECK(n_ct <= 65535, "feature3dgs: too many feature channels (", C, ")");
  const dim3 block(kTileSize, kTileSize);
  const dim3 blocks((unsigned)grid.count(), (unsigned)n_ct);
  switch (variant) {
    case BackwardVariant::kCt32:
      gpu::launch(render_backward_kernel<gpu::kChannelTile, 1>, blocks, block, 0, stream, p);
      break;
    case BackwardVariant::kCt16:
      gpu::launch(render_backward_kernel<16, 3>, blocks, block, 0, stream, p);
      break;
    case BackwardVariant::kLb3:
      gpu::launch(render_backward_kernel<gpu::kChannelTile, 3>, blocks, block, 0, stream, p);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grads;
}

}  // namespace f3d
