// The host block cache (see host_block_cache.h).
#include "cpu/host_block_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>

#include <pthread.h>
#include <string>

namespace f3d {
namespace {

constexpr size_t kBlockAlign = 64;
constexpr size_t kBlockGranule = size_t(64) << 10;  // sizes rounded up to 64 KiB

struct Block {
  void* p;
  size_t bytes;
};

int64_t cache_cap_bytes() {
  const char* v = std::getenv("FEATURE3DGS_CPU_CACHE_MB");
  if (!v || !*v) return int64_t(1024) << 20;
  char* end = nullptr;
  errno = 0;
  const long long mb = std::strtoll(v, &end, 10);
  TORCH_CHECK_VALUE(end && *end == '\0' && errno == 0 && mb >= 0 && mb <= (int64_t(1) << 30),
                    "FEATURE3DGS_CPU_CACHE_MB=", v, ": expected a whole number of MiB >= 0 (0 disables the cache)");
  return int64_t(mb) << 20;
}

class HostBlockCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const int64_t cap = cache_cap_bytes();
    if (n < kCachedBlockMinBytes || cap == 0) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kBlockGranule - 1) / kBlockGranule * kBlockGranule;
    Block* b = take(bytes);
    if (!b) {
      void* p = nullptr;
      TORCH_CHECK(posix_memalign(&p, kBlockAlign, bytes) == 0 && p,
                  "feature3dgs: out of host memory allocating ", bytes, " bytes");
      b = new Block{p, bytes};
    }
    return {b->p, b, &HostBlockCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  HostBlockCacheInfo info() {
    std::lock_guard<std::mutex> lock(mu_);
    return {cache_cap_bytes(), cached_bytes_, (int64_t)free_.size(), hits_, misses_};
  }

  void clear() {
    std::list<Block*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.swap(free_);
      cached_bytes_ = 0;
      hits_ = misses_ = 0;
    }
    for (Block* b : drop) destroy(b);
  }

 private:
  // The smallest free block of at least `bytes` and at most 5/4 of it, or null (a miss).
  Block* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if ((*it)->bytes >= bytes && (*it)->bytes <= bytes + bytes / 4 &&
          (best == free_.end() || (*it)->bytes < (*best)->bytes))
        best = it;
    if (best == free_.end()) {
      ++misses_;
      return nullptr;
    }
    Block* b = *best;
    free_.erase(best);
    cached_bytes_ -= (int64_t)b->bytes;
    ++hits_;
    return b;
  }

  // Keeps the block, newest last, then frees the oldest ones beyond the cap.
  void put(Block* b) {
    std::list<Block*> drop;
    {
      int64_t cap = 0;
      try {
        cap = cache_cap_bytes();
      } catch (...) {  // a deleter must not throw: an unreadable cap keeps nothing
      }
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(b);
      cached_bytes_ += (int64_t)b->bytes;
      while (cached_bytes_ > cap && !free_.empty()) {
        cached_bytes_ -= (int64_t)free_.front()->bytes;
        drop.push_back(free_.front());
        free_.pop_front();
      }
    }
    for (Block* d : drop) destroy(d);
  }

  static void destroy(Block* b) {
    std::free(b->p);
    delete b;
  }

  static void release(void* ctx);

  std::mutex mu_;
  std::list<Block*> free_;  // oldest first
  int64_t cached_bytes_ = 0, hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors holding its blocks may be freed during interpreter exit.
HostBlockCache* g_cache = nullptr;

// A forked child (a DataLoader worker) starts with a new, empty cache: the parent's
// mutex may have been held by a thread that does not exist in the child. The parent's
// free blocks stay behind, unused (copy-on-write pages); blocks of tensors that the child
// inherited and releases go to the new cache.
void renew_cache_after_fork() { g_cache = new HostBlockCache(); }

HostBlockCache& cache() {
  static const bool init = [] {
    g_cache = new HostBlockCache();
    pthread_atfork(nullptr, nullptr, &renew_cache_after_fork);
    return true;
  }();
  (void)init;
  return *g_cache;
}

void HostBlockCache::release(void* ctx) { cache().put(static_cast<Block*>(ctx)); }

}  // namespace

torch::Tensor cached_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::detail::empty_generic(sizes, &cache(), c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   std::nullopt);
}

torch::Tensor cached_zeros(at::IntArrayRef sizes, at::ScalarType dtype) {
  torch::Tensor t = cached_empty(sizes, dtype);
  char* p = static_cast<char*>(t.data_ptr());
  const int64_t n = (int64_t)t.nbytes(), piece = int64_t(1) << 20;
#pragma omp parallel for schedule(static) if (n > 4 * piece)
  for (int64_t i = 0; i < n; i += piece) std::memset(p + i, 0, (size_t)std::min(piece, n - i));
  return t;
}

CachedScratch::CachedScratch(size_t bytes) : ptr_(cache().allocate(bytes > 0 ? bytes : 1)) {}
CachedScratch::~CachedScratch() = default;

HostBlockCacheInfo host_block_cache_info() { return cache().info(); }
void host_block_cache_clear() { cache().clear(); }

}  // namespace f3d
