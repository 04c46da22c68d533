// A cache of the large host blocks that the CPU kernels allocate per call: their
// outputs ((C, H, W) features, (N, C) feature gradients) and the backward's pair
// buffers. A fresh block of that size comes from mmap, so every first write to
// each of its pages costs a page fault and the kernel's zero fill: measured about
// 20-25 ms for the (64, 512, 512) features of one forward on the 2-core CI machine,
// about half as long as the feature blend itself (40-odd ms). Blocks released here
// are kept (up to a byte cap) and handed to the next request of a size they fit,
// already mapped.
//
// Handed-out memory is uninitialised (it may hold an earlier call's values): the
// kernels write every element of an output, or the caller zeroes it.
//
// FEATURE3DGS_CPU_CACHE_MB sets the cap (default 1024; 0 disables the cache, so
// every block is allocated and freed as torch would).
#pragma once

#include <torch/extension.h>

#include <cstddef>
#include <cstdint>

namespace f3d {

// Blocks below this many bytes are not cached (they come from the heap, which
// keeps them mapped already).
constexpr size_t kCachedBlockMinBytes = size_t(1) << 20;

struct HostBlockCacheInfo {
  int64_t cap_bytes;     // FEATURE3DGS_CPU_CACHE_MB, in bytes
  int64_t cached_bytes;  // held in free blocks now
  int64_t cached_blocks;
  int64_t hits;          // requests served from a free block, since the last clear
  int64_t misses;        // requests that allocated
};

// A CPU tensor of `sizes` whose storage comes from the cache (uninitialised).
torch::Tensor cached_empty(at::IntArrayRef sizes, at::ScalarType dtype);
// Same, zero-filled (a memset of mapped pages instead of first-touch faults).
torch::Tensor cached_zeros(at::IntArrayRef sizes, at::ScalarType dtype);

// Scratch of n bytes from the cache for the duration of a scope.
class CachedScratch {
 public:
  explicit CachedScratch(size_t bytes);
  ~CachedScratch();
  CachedScratch(const CachedScratch&) = delete;
  CachedScratch& operator=(const CachedScratch&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_.get()); }

 private:
  c10::DataPtr ptr_;
};

HostBlockCacheInfo host_block_cache_info();
// Frees every cached block and resets the counters.
void host_block_cache_clear();

}  // namespace f3d
