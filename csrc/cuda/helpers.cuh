// Shared pieces of the CUDA kernels: launch geometry, the channel tile width,
// the warp reduction and the host-side binning entry point (binning.cu).
//
// All scratch memory comes from the torch caching allocator and every launch
// goes to the current torch CUDA stream of the tensors' device.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

#include <cstdint>
#include <utility>

#include "f3d/common.h"

namespace f3d {
namespace gpu {

// One thread per pixel of a kTileSize x kTileSize tile; the Gaussians of a tile
// are staged through shared memory in batches of one per thread.
constexpr int kBlockPixels = kTileSize * kTileSize;  // 256
constexpr int kBatch = kBlockPixels;
static_assert(kBlockPixels % 32 == 0, "a tile must be made of whole warps");

// Feature channels are processed in tiles of kChannelTile channels: one compiled
// kernel serves every C (grid.y = number of channel tiles). 32 = the warp size, so
// that the warp's reduce-scatter of one channel tile's gradients leaves channel l
// in lane l and the atomic adds of one Gaussian's channel tile form one coalesced
// warp instruction. Per-thread arrays are of this size only.
constexpr int kChannelTile = 32;
// Channels are visited in chunks of this many, skipped as a whole (a block-uniform
// branch) past the valid channels of the tile, so a small C costs little.
constexpr int kChannelChunk = 8;
static_assert(kChannelTile % kChannelChunk == 0 && kChannelTile <= 32, "channel tile");

// Channel tiles of C channels at CT channels per tile.
inline int64_t num_channel_tiles(int64_t C, int ct) { return C > 0 ? (C + ct - 1) / ct : 1; }

// 1D launches (one thread per Gaussian or per item).
constexpr int kThreads1D = 256;

constexpr unsigned kFullMask = 0xffffffffu;

inline int64_t num_channel_tiles(int64_t C) {
  return C > 0 ? (C + kChannelTile - 1) / kChannelTile : 1;
}

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>((n + kThreads1D - 1) / kThreads1D);
}

// Every kernel launch goes through here: `kernel<<<grid, block, shared_bytes,
// stream>>>(args...)` under nvcc; under the SIMT emulator (csrc/emu, which
// compiles these files as C++ for the tests) the emulator's launch.
template <typename... KArgs, typename... Args>
inline void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   Args&&... args) {
#ifdef F3D_EMULATOR
  (void)stream;
  ::emu::launch_kernel(kernel, grid, block, shared_bytes, std::forward<Args>(args)...);
#else
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
#endif
}

// One butterfly step of warp_reduce_scatter: pairs of lanes at distance D
// exchange halves of their first 2H values; then the next step on H values.
// A template recursion, so that every index into v is a compile-time constant
// and v stays in registers.
template <int H, int D, int LEN>
__device__ __forceinline__ void reduce_scatter_step(float (&v)[LEN], int lane) {
  if constexpr (H >= 1) {
    const bool upper = (lane & D) != 0;
#pragma unroll
    for (int i = 0; i < H; ++i) {
      const float send = upper ? v[i] : v[i + H];
      const float keep = upper ? v[i + H] : v[i];
      v[i] = keep + __shfl_xor_sync(kFullMask, send, D);
    }
    reduce_scatter_step<H / 2, D / 2>(v, lane);
  } else if constexpr (D >= 1) {
    // One value left; the lanes that hold the same index still differ in their
    // low lane bits: a plain butterfly sum over those.
    v[0] += __shfl_xor_sync(kFullMask, v[0], D);
    reduce_scatter_step<0, D / 2>(v, lane);
  }
}

// Reduce-scatter across a full warp (all 32 lanes must call it, converged).
// On entry each lane holds v[0..NV); on return v[0] of lane L holds the sum over
// the 32 lanes of v[L / (32 / NV)]. Butterfly: at each step the lane keeps the
// half of its values selected by one bit of its lane id and receives the
// partner's copy of that half, so NV - 1 + log2(32 / NV) shuffles in all
// (31 for NV = 32) instead of 5 NV for NV separate tree reductions.
template <int NV, int LEN>
__device__ __forceinline__ void warp_reduce_scatter(float (&v)[LEN], int lane) {
  static_assert(NV >= 1 && NV <= 32 && (NV & (NV - 1)) == 0 && NV <= LEN, "NV");
  reduce_scatter_step<NV / 2, 16>(v, lane);
}

// Float depth to an unsigned key with the same order (for every non-NaN float;
// for depth > 0 it is the float's bits with the top bit set).
__device__ __forceinline__ uint32_t depth_sort_key(float depth) {
  const uint32_t bits = __float_as_uint(depth);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Tiles of one image.
struct TileGrid {
  int width, height, gx, gy;
  TileGrid(int w, int h)
      : width(w), height(h), gx(div_round_up(w, kTileSize)), gy(div_round_up(h, kTileSize)) {}
  int64_t count() const { return (int64_t)gx * gy; }
};

// Result of binning: tile t's Gaussians, front to back, are
// gaussian_ids[tile_offsets[t] : tile_offsets[t + 1]].
struct Binning {
  torch::Tensor tile_offsets;  // (T + 1,) int32
  torch::Tensor gaussian_ids;  // (M,) int32
  int64_t num_pairs;           // M
};

// What the forward and backward blending kernels both read: the image, the
// binned Gaussians and their projected attributes (device pointers).
struct RasterInputs {
  int width, height, grid_x;
  int C;
  const int* tile_offsets;
  const int* gaussian_ids;
  const float* means2d;    // (N, 2)
  const float* conics;     // (N, 3)
  const float* opacities;  // (N,)
  const float* colors;     // (N, 3)
  const float* depths;     // (N,)
  const float* features;   // (N, C), null when C == 0
};

inline void fill_raster_inputs(RasterInputs& p, const TileGrid& grid, int64_t C, const torch::Tensor& tile_offsets,
                               const torch::Tensor& gaussian_ids, const torch::Tensor& means2d,
                               const torch::Tensor& conics, const torch::Tensor& opacities,
                               const torch::Tensor& colors, const torch::Tensor& depths,
                               const torch::Tensor& features) {
  p.width = grid.width;
  p.height = grid.height;
  p.grid_x = grid.gx;
  p.C = (int)C;
  p.tile_offsets = tile_offsets.data_ptr<int>();
  p.gaussian_ids = gaussian_ids.data_ptr<int>();
  p.means2d = means2d.data_ptr<float>();
  p.conics = conics.data_ptr<float>();
  p.opacities = opacities.data_ptr<float>();
  p.colors = colors.data_ptr<float>();
  p.depths = depths.data_ptr<float>();
  p.features = C > 0 ? features.data_ptr<float>() : nullptr;
}

// binning.cu. Reads M back to the host (the one synchronisation of the forward).
// Pairs that f3d/cull.h proves empty (alpha < kAlphaMin at every pixel of the
// tile) are sorted past the last tile: gaussian_ids keeps M entries, tile_offsets
// covers only the kept ones.
Binning bin_gaussians_cuda(const TileGrid& grid, const torch::Tensor& means2d,
                           const torch::Tensor& conics, const torch::Tensor& opacities,
                           const torch::Tensor& radii, const torch::Tensor& depths,
                           cudaStream_t stream);

}  // namespace gpu
}  // namespace f3d
