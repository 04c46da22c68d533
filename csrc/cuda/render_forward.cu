// CUDA rasterizer forward: binning (binning.cu), then one 16x16 thread block per
// tile and one thread per pixel, blending the tile's Gaussians front to back in
// batches staged through shared memory.
//
// Feature channels are processed in tiles of gpu::kChannelTile (CT) channels, so
// that one compiled kernel serves every C with per-thread arrays of CT floats:
//   pass 1, grid (tiles, 1): the full front-to-back walk with the transmittance
//     threshold; writes rgb, depth, alpha, final_T, last_contrib and channel
//     tile 0.
//   pass 2, grid (tiles, n_ct - 1), only when C > CT: channel tile 1 + blockIdx.y.
//     Reuses pass 1's last_contrib: each pixel blends exactly the Gaussians before
//     its last contributor (recomputing alpha and T, with no threshold test), so
//     neither the sort nor the per-pixel termination logic is repeated.
// Channels [k CT, (k + 1) CT) of one Gaussian are contiguous in features (N, C)
// and are staged with the batch. Outputs are channel-first (C, H, W): each
// channel's write is coalesced across the tile's rows. No atomics: deterministic.
#include "f3d/blend.h"
#include "helpers.cuh"
#include "ops.h"

namespace f3d {

namespace {

using gpu::kBatch;
using gpu::kBlockPixels;
using gpu::kChannelChunk;

struct ForwardParams : gpu::RasterInputs {
  float* out_rgb;          // (3, H, W)
  float* out_feat;         // (C, H, W)
  float* out_depth;        // (H, W)
  float* out_alpha;        // (H, W)
  float* out_T;            // (H, W)
  int* last_contrib;       // (H, W): written by pass 1, read by pass 2
};

// kFirst: pass 1 (channel tile 0 and everything else); otherwise pass 2 (channel
// tile 1 + blockIdx.y).
template <int CT, bool kFirst>
__global__ void __launch_bounds__(kBlockPixels) render_forward_kernel(const ForwardParams p) {
  __shared__ int s_id[kBatch];
  __shared__ float2 s_xy[kBatch];
  __shared__ float4 s_con_o[kBatch];  // conic a, b, c, opacity
  __shared__ float4 s_col_d[kBatch];  // rgb, depth (pass 1 only)
  __shared__ __align__(16) float s_feat[kBatch][CT];
  __shared__ int s_max_last;

  const int tile = blockIdx.x;
  const int k = kFirst ? 0 : 1 + (int)blockIdx.y;  // channel tile
  const int c0 = k * CT;
  const int cn = max(0, min(CT, p.C - c0));  // valid channels of this tile (0 when C == 0)
  const int tid = threadIdx.y * kTileSize + threadIdx.x;
  const int px = (tile % p.grid_x) * kTileSize + threadIdx.x;
  const int py = (tile / p.grid_x) * kTileSize + threadIdx.y;
  const bool inside = px < p.width && py < p.height;
  const int64_t HW = (int64_t)p.width * p.height;
  const int64_t pix = inside ? (int64_t)py * p.width + px : 0;
  const Vec2 center = pixel_center(px, py);

  const int start = p.tile_offsets[tile];
  int end = p.tile_offsets[tile + 1];
  int last = 0;  // pass 1: the last contributor so far; pass 2: pass 1's
  if constexpr (!kFirst) {
    if (inside) last = p.last_contrib[pix];
    if (tid == 0) s_max_last = 0;
    __syncthreads();
    if (last > 0) atomicMax(&s_max_last, last);
    __syncthreads();
    end = start + s_max_last;  // nothing behind the block's last contributor
  }
  bool done = kFirst ? !inside : last == 0;

  float T = 1.f;
  float acc_rgb[3] = {0.f, 0.f, 0.f};
  float acc_depth = 0.f;
  float acc_feat[CT];
#pragma unroll
  for (int c = 0; c < CT; ++c) acc_feat[c] = 0.f;

  for (int batch = start; batch < end; batch += kBatch) {
    // Also the barrier before the batch's shared memory is overwritten.
    if (__syncthreads_count(done) == kBlockPixels) break;
    const int count = min(kBatch, end - batch);
    if (tid < count) {
      const int64_t g = p.gaussian_ids[batch + tid];
      s_id[tid] = (int)g;
      s_xy[tid] = make_float2(p.means2d[2 * g], p.means2d[2 * g + 1]);
      s_con_o[tid] = make_float4(p.conics[3 * g], p.conics[3 * g + 1], p.conics[3 * g + 2],
                                 p.opacities[g]);
      if constexpr (kFirst)
        s_col_d[tid] = make_float4(p.colors[3 * g], p.colors[3 * g + 1], p.colors[3 * g + 2],
                                   p.depths[g]);
    }
    if (cn > 0) {
      __syncthreads();  // s_id
      // One warp reads CT consecutive channels of one Gaussian; channels past the
      // tile's valid ones are zeroed.
      for (int e = tid; e < count * CT; e += kBlockPixels) {
        const int j = e / CT, c = e % CT;
        s_feat[j][c] = c < cn ? p.features[(int64_t)s_id[j] * p.C + c0 + c] : 0.f;
      }
    }
    __syncthreads();

    for (int j = 0; j < count && !done; ++j) {
      const int pos = batch - start + j;  // position in the tile's sorted list
      if constexpr (!kFirst) {
        if (pos >= last) {
          done = true;
          break;
        }
      }
      const float4 co = s_con_o[j];
      Splat s;
      if (!eval_splat({s_xy[j].x, s_xy[j].y}, {co.x, co.y, co.z}, co.w, center, s)) continue;
      const float next_T = T * (1.f - s.alpha);
      if constexpr (kFirst) {
        if (next_T < kTransmittanceMin) {
          done = true;
          break;
        }
      }
      const float w = s.alpha * T;
      if constexpr (kFirst) {
        const float4 cd = s_col_d[j];
        acc_rgb[0] += w * cd.x;
        acc_rgb[1] += w * cd.y;
        acc_rgb[2] += w * cd.z;
        acc_depth += w * cd.w;
      }
#pragma unroll
      for (int c8 = 0; c8 < CT; c8 += kChannelChunk) {
        if (c8 < cn) {
#pragma unroll
          for (int c = c8; c < c8 + kChannelChunk; c += 4) {
            const float4 f = *reinterpret_cast<const float4*>(&s_feat[j][c]);
            acc_feat[c + 0] += w * f.x;
            acc_feat[c + 1] += w * f.y;
            acc_feat[c + 2] += w * f.z;
            acc_feat[c + 3] += w * f.w;
          }
        }
      }
      T = next_T;
      if constexpr (kFirst) last = pos + 1;
    }
  }

  if (!inside) return;
#pragma unroll
  for (int c = 0; c < CT; ++c)
    if (c < cn) p.out_feat[(int64_t)(c0 + c) * HW + pix] = acc_feat[c];
  if constexpr (kFirst) {
    p.out_rgb[0 * HW + pix] = acc_rgb[0];
    p.out_rgb[1 * HW + pix] = acc_rgb[1];
    p.out_rgb[2 * HW + pix] = acc_rgb[2];
    p.out_depth[pix] = acc_depth;
    p.out_alpha[pix] = 1.f - T;
    p.out_T[pix] = T;
    p.last_contrib[pix] = last;
  }
}

}  // namespace

RasterizeOut rasterize_forward_cuda(const torch::Tensor& means2d, const torch::Tensor& conics,
                                    const torch::Tensor& colors, const torch::Tensor& opacities,
                                    const torch::Tensor& depths, const torch::Tensor& features,
                                    const torch::Tensor& radii, int width, int height) {
  constexpr int CT = gpu::kChannelTile;
  const c10::cuda::CUDAGuard guard(means2d.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int64_t C = features.dim() == 2 ? features.size(1) : 0;  // as the CPU version
  TORCH_CHECK(C < (int64_t)INT32_MAX, "feature3dgs: too many feature channels");
  const gpu::TileGrid grid(width, height);
  const auto f32 = means2d.options();
  const auto i32 = f32.dtype(torch::kInt32);

  // Sorts the tile-Gaussian pairs; reads their number M back to the host.
  gpu::Binning bins = gpu::bin_gaussians_cuda(grid, means2d, conics, opacities, radii, depths, stream);

  if (bins.num_pairs == 0) {  // nothing visible: the CPU's empty image
    return {torch::zeros({3, height, width}, f32), torch::zeros({C, height, width}, f32),
            torch::zeros({1, height, width}, f32), torch::zeros({1, height, width}, f32),
            torch::ones({height, width}, f32), torch::zeros({height, width}, i32),
            bins.tile_offsets, bins.gaussian_ids};
  }

  // Every pixel of every tile is written by the kernels.
  auto out_rgb = torch::empty({3, height, width}, f32);
  auto out_feat = torch::empty({C, height, width}, f32);
  auto out_depth = torch::empty({1, height, width}, f32);
  auto out_alpha = torch::empty({1, height, width}, f32);
  auto final_T = torch::empty({height, width}, f32);
  auto last_contrib = torch::empty({height, width}, i32);

  ForwardParams p;
  gpu::fill_raster_inputs(p, grid, C, bins.tile_offsets, bins.gaussian_ids, means2d, conics, opacities, colors,
                          depths, features);
  p.out_rgb = out_rgb.data_ptr<float>();
  p.out_feat = C > 0 ? out_feat.data_ptr<float>() : nullptr;
  p.out_depth = out_depth.data_ptr<float>();
  p.out_alpha = out_alpha.data_ptr<float>();
  p.out_T = final_T.data_ptr<float>();
  p.last_contrib = last_contrib.data_ptr<int>();

  const dim3 block(kTileSize, kTileSize);
  const unsigned tiles = (unsigned)grid.count();
  gpu::launch(render_forward_kernel<CT, true>, dim3(tiles, 1), block, 0, stream, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t n_ct = gpu::num_channel_tiles(C);
  if (n_ct > 1) {
    TORCH_CHECK(n_ct - 1 <= 65535, "feature3dgs: too many feature channels (", C, ")");
    gpu::launch(render_forward_kernel<CT, false>, dim3(tiles, (unsigned)(n_ct - 1)), block, 0, stream, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {out_rgb, out_feat, out_depth, out_alpha, final_T, last_contrib, bins.tile_offsets,
          bins.gaussian_ids};
}

}  // namespace f3d
