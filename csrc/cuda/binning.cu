// CUDA binning: every visible Gaussian (radius > 0) is duplicated once per tile
// it touches (tile_rect), with a 64-bit key (tile index << 32 | depth key); one
// stable radix sort then orders the pairs by tile and, within a tile, by depth,
// ties keeping the Gaussian index order in which the pairs were written. This
// reproduces the CPU's lists, sorted by depth with ties by index. Before the sort,
// a pair whose Gaussian has alpha < kAlphaMin at every pixel of its tile
// (f3d/cull.h, the CPU binning's test) gets the tile key T, which sorts it after
// every tile's list, outside all tile ranges: no render kernel visits it, and no
// pixel changes.
#include <cub/cub.cuh>

#include <climits>

#include "f3d/cull.h"
#include "f3d/projection.h"
#include "helpers.cuh"

namespace f3d {
namespace gpu {

namespace {

// counts[g]: the number of tiles Gaussian g touches (0 when radii[g] <= 0).
__global__ void __launch_bounds__(kThreads1D)
    count_tiles_kernel(int64_t N, const float* __restrict__ means2d,
                       const int* __restrict__ radii, int gx, int gy,
                       int64_t* __restrict__ counts) {
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= N) return;
  int64_t n = 0;
  const int r = radii[g];
  if (r > 0) {
    int x0, y0, x1, y1;
    tile_rect({means2d[2 * g], means2d[2 * g + 1]}, r, gx, gy, x0, y0, x1, y1);
    if (x1 > x0 && y1 > y0) n = (int64_t)(x1 - x0) * (y1 - y0);
  }
  counts[g] = n;
}

// Writes Gaussian g's pairs at [cum[g - 1], cum[g]) (cum: inclusive prefix sum of
// the counts), tiles in row-major order.
__global__ void __launch_bounds__(kThreads1D)
    duplicate_kernel(int64_t N, const float* __restrict__ means2d, const int* __restrict__ radii,
                     const float* __restrict__ depths, int gx, int gy,
                     const int64_t* __restrict__ cum, uint64_t* __restrict__ keys,
                     int* __restrict__ values) {
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= N) return;
  const int r = radii[g];
  if (r <= 0) return;
  int x0, y0, x1, y1;
  tile_rect({means2d[2 * g], means2d[2 * g + 1]}, r, gx, gy, x0, y0, x1, y1);
  int64_t out = g == 0 ? 0 : cum[g - 1];
  const int64_t end = cum[g];  // == out + the count of count_tiles_kernel
  const uint64_t dkey = depth_sort_key(depths[g]);
  for (int ty = y0; ty < y1; ++ty) {
    for (int tx = x0; tx < x1; ++tx) {
      if (out >= end) return;  // cannot happen: same tile_rect as count_tiles_kernel
      const uint64_t tile = (uint64_t)ty * (uint64_t)gx + (uint64_t)tx;
      keys[out] = (tile << 32) | dkey;
      values[out] = (int)g;
      ++out;
    }
  }
}

// Exact culling of pair i: its key's tile becomes T (past the last tile) when the
// Gaussian contributes to no pixel of the tile.
__global__ void __launch_bounds__(kThreads1D)
    cull_pairs_kernel(int64_t M, const float* __restrict__ means2d, const float* __restrict__ conics,
                      const float* __restrict__ opacities, int gx, int width, int height,
                      uint64_t T, uint64_t* __restrict__ keys, const int* __restrict__ values) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= M) return;
  const int64_t g = values[i];
  const uint64_t key = keys[i];
  const int tile = (int)(key >> 32);
  const CullSplat cs = make_cull_splat({means2d[2 * g], means2d[2 * g + 1]},
                                       {conics[3 * g], conics[3 * g + 1], conics[3 * g + 2]},
                                       opacities[g]);
  if (!cull_tile_may_contribute(cs, tile % gx, tile / gx, width, height))
    keys[i] = (T << 32) | (key & 0xffffffffull);
}

// tile_offsets[t] = the first sorted position whose tile is >= t, for t in [0, T];
// thread i in [0, M] writes the entries t in (tile(i - 1), tile(i)], with tile(-1)
// = -1 and tile(M) = T, so every entry is written exactly once.
__global__ void __launch_bounds__(kThreads1D)
    tile_ranges_kernel(int64_t M, int64_t T, const uint64_t* __restrict__ keys,
                       int* __restrict__ tile_offsets) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i > M) return;
  const int64_t cur = i < M ? (int64_t)(keys[i] >> 32) : T;
  const int64_t prev = i > 0 ? (int64_t)(keys[i - 1] >> 32) : -1;
  for (int64_t t = prev + 1; t <= cur; ++t) tile_offsets[t] = (int)i;
}

// Number of bits needed for the values 0 .. n - 1.
int bit_width_of_count(int64_t n) {
  int b = 0;
  while (b < 63 && ((int64_t)1 << b) < n) ++b;
  return b;
}

}  // namespace

Binning bin_gaussians_cuda(const TileGrid& grid, const torch::Tensor& means2d,
                           const torch::Tensor& conics, const torch::Tensor& opacities,
                           const torch::Tensor& radii, const torch::Tensor& depths,
                           cudaStream_t stream) {
  const int64_t N = means2d.size(0);
  const int64_t T = grid.count();
  TORCH_CHECK(T < (int64_t)INT32_MAX, "feature3dgs: too many tiles (", T, ")");
  TORCH_CHECK(N < (int64_t)INT32_MAX, "feature3dgs: too many Gaussians (", N, ") for int32 ids");
  const auto opts = means2d.options();
  const auto i32 = opts.dtype(torch::kInt32);
  const auto i64 = opts.dtype(torch::kInt64);
  if (N == 0) return {torch::zeros({T + 1}, i32), torch::empty({0}, i32), 0};

  const float* m2d = means2d.data_ptr<float>();
  const int* rad = radii.data_ptr<int>();
  auto counts = torch::empty({N}, i64);
  launch(count_tiles_kernel, blocks_for(N), kThreads1D, 0, stream, N, m2d, rad, grid.gx, grid.gy,
         counts.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Inclusive prefix sum, in 64 bits so that an overflow of int32 is detected.
  auto cum = torch::empty({N}, i64);
  size_t scan_bytes = 0;
  C10_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, counts.data_ptr<int64_t>(),
                                               cum.data_ptr<int64_t>(), (int)N, stream));
  auto scan_temp = torch::empty({(int64_t)scan_bytes}, opts.dtype(torch::kByte));
  C10_CUDA_CHECK(cub::DeviceScan::InclusiveSum(scan_temp.data_ptr(), scan_bytes,
                                               counts.data_ptr<int64_t>(),
                                               cum.data_ptr<int64_t>(), (int)N, stream));

  // The one host synchronisation of the forward (as in 3DGS): the number M of
  // tile-Gaussian pairs is read back to size the sort buffers.
  const int64_t M = cum[N - 1].item<int64_t>();
  TORCH_CHECK(M < (int64_t)INT32_MAX, "feature3dgs: too many tile-Gaussian pairs (", M,
              ") for int32 indexing; lower the resolution or the number of Gaussians");
  if (M == 0) return {torch::zeros({T + 1}, i32), torch::empty({0}, i32), 0};

  auto keys_in = torch::empty({M}, i64);
  auto values_in = torch::empty({M}, i32);
  uint64_t* kin = reinterpret_cast<uint64_t*>(keys_in.data_ptr<int64_t>());
  launch(duplicate_kernel, blocks_for(N), kThreads1D, 0, stream, N, m2d, rad, depths.data_ptr<float>(),
         grid.gx, grid.gy, cum.data_ptr<int64_t>(), kin, values_in.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  launch(cull_pairs_kernel, blocks_for(M), kThreads1D, 0, stream, M, m2d, conics.data_ptr<float>(),
         opacities.data_ptr<float>(), grid.gx, grid.width, grid.height, (uint64_t)T, kin,
         values_in.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Stable LSD radix sort on the key bits in use: 32 depth bits and the tile bits
  // (tiles 0 .. T, T for the culled pairs).
  auto keys_out = torch::empty({M}, i64);
  auto gaussian_ids = torch::empty({M}, i32);
  uint64_t* kout = reinterpret_cast<uint64_t*>(keys_out.data_ptr<int64_t>());
  const int end_bit = 32 + bit_width_of_count(T + 1);
  size_t sort_bytes = 0;
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, kin, kout,
                                                 values_in.data_ptr<int>(),
                                                 gaussian_ids.data_ptr<int>(), (int)M, 0,
                                                 end_bit, stream));
  auto sort_temp = torch::empty({(int64_t)sort_bytes}, opts.dtype(torch::kByte));
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp.data_ptr(), sort_bytes, kin, kout,
                                                 values_in.data_ptr<int>(),
                                                 gaussian_ids.data_ptr<int>(), (int)M, 0,
                                                 end_bit, stream));

  auto tile_offsets = torch::empty({T + 1}, i32);
  launch(tile_ranges_kernel, blocks_for(M + 1), kThreads1D, 0, stream, M, T, kout,
         tile_offsets.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {tile_offsets, gaussian_ids, M};
}

}  // namespace gpu
}  // namespace f3d
