// The CUDA builtins for compiling the kernels of csrc/cuda/*.cu, unmodified, as
// C++ with g++ (test-only; see docs/testing.md "The SIMT emulator").
//
// Force-included (g++ -include emu/emu.h) before each .cu file. Each thread of a
// block runs as a cooperative fiber on one OS thread (runtime.cpp); __shared__
// variables are `static thread_local`, so the fibers of one block share them and
// blocks running at the same time on other OS threads have their own. Barriers,
// warp collectives and atomics call into the runtime, which checks them more
// strictly than the hardware does and reports mismatches with file:line, block
// and thread instead of hanging.
#pragma once

#define F3D_EMULATOR 1

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- qualifiers -------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __constant__ static
#define __align__(n) __attribute__((aligned(n)))

// ---- vector types -----------------------------------------------------------
// Trivial types (no constructors), so that `static thread_local` arrays of them
// need no dynamic initialisation.
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct __attribute__((aligned(8))) float2 {
  float x, y;
};
struct float3 {
  float x, y, z;
};
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
struct __attribute__((aligned(8))) int2 {
  int x, y;
};
struct __attribute__((aligned(16))) int4 {
  int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float3 make_float3(float x, float y, float z) { return {x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

// ---- the runtime's C++ interface (runtime.cpp) --------------------------------
typedef struct emu_stream_* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 719 };
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "emulated CUDA error";
}

namespace emu {

uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();

void syncthreads(const char* file, int line);
int syncthreads_count(int pred, const char* file, int line);
int syncthreads_and(int pred, const char* file, int line);
int syncthreads_or(int pred, const char* file, int line);

// Warp collectives. kind: what the lanes exchange; arg: the lane mask (xor),
// the source lane (idx), the offset (up, down).
enum CollectiveKind : int { kShflXor, kShflIdx, kShflUp, kShflDown, kAny, kAll, kBallot, kSyncWarp };
uint64_t warp_collective(int kind, unsigned mask, uint64_t value, int arg, int width, const char* file,
                         int line);

float atomic_add_f32(float* a, float v);
double atomic_add_f64(double* a, double v);
int atomic_add_i32(int* a, int v);
unsigned atomic_add_u32(unsigned* a, unsigned v);
unsigned long long atomic_add_u64(unsigned long long* a, unsigned long long v);
int atomic_max_i32(int* a, int v);
unsigned atomic_max_u32(unsigned* a, unsigned v);
int atomic_min_i32(int* a, int v);
int atomic_cas_i32(int* a, int compare, int v);
int atomic_exch_i32(int* a, int v);

// One kernel launch: entry(data) is called once per thread, on its fiber.
struct Launch {
  dim3 grid, block;
  size_t shared_bytes;
  void (*entry)(void*);
  void* data;
  const void* kernel;
};
// Runs every block (throws std::runtime_error on a reported error).
void launch(const Launch& l);

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of a type over 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

inline void syncwarp(const char* file, int line, unsigned mask = 0xffffffffu) {
  warp_collective(kSyncWarp, mask, 0, 0, 32, file, line);
}

template <typename T>
__attribute__((always_inline)) inline T shfl(int kind, const char* file, int line, unsigned mask, T v,
                                             int arg, int width = 32) {
  return from_bits<T>(warp_collective(kind, mask, to_bits(v), arg, width, file, line));
}

// Calls the kernel with a copy of the launch arguments, converted to the
// kernel's parameter types as <<<>>> would.
template <typename... KArgs, typename... Args>
void launch_kernel(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t shared_bytes, Args&&... args) {
  struct Data {
    void (*kernel)(KArgs...);
    std::tuple<std::decay_t<KArgs>...> args;
  };
  Data data{kernel, std::tuple<std::decay_t<KArgs>...>(std::forward<Args>(args)...)};
  auto entry = [](void* p) {
    Data* d = static_cast<Data*>(p);
    std::apply(d->kernel, d->args);
  };
  launch(Launch{grid, block, shared_bytes, +entry, &data, reinterpret_cast<const void*>(kernel)});
}

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
constexpr int warpSize = 32;

#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncthreads_count(p) ::emu::syncthreads_count((p) ? 1 : 0, __FILE__, __LINE__)
#define __syncthreads_and(p) ::emu::syncthreads_and((p) ? 1 : 0, __FILE__, __LINE__)
#define __syncthreads_or(p) ::emu::syncthreads_or((p) ? 1 : 0, __FILE__, __LINE__)
#define __syncwarp(...) ::emu::syncwarp(__FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_xor_sync(...) ::emu::shfl(::emu::kShflXor, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_sync(...) ::emu::shfl(::emu::kShflIdx, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::emu::shfl(::emu::kShflUp, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::emu::shfl(::emu::kShflDown, __FILE__, __LINE__, __VA_ARGS__)
#define __any_sync(m, p) (::emu::warp_collective(::emu::kAny, (m), (p) ? 1 : 0, 0, 32, __FILE__, __LINE__) != 0)
#define __all_sync(m, p) (::emu::warp_collective(::emu::kAll, (m), (p) ? 1 : 0, 0, 32, __FILE__, __LINE__) != 0)
#define __ballot_sync(m, p) \
  ((unsigned)::emu::warp_collective(::emu::kBallot, (m), (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))

// ---- atomics ----------------------------------------------------------------
inline float atomicAdd(float* a, float v) { return ::emu::atomic_add_f32(a, v); }
inline double atomicAdd(double* a, double v) { return ::emu::atomic_add_f64(a, v); }
inline int atomicAdd(int* a, int v) { return ::emu::atomic_add_i32(a, v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return ::emu::atomic_add_u32(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return ::emu::atomic_add_u64(a, v);
}
inline int atomicMax(int* a, int v) { return ::emu::atomic_max_i32(a, v); }
inline unsigned atomicMax(unsigned* a, unsigned v) { return ::emu::atomic_max_u32(a, v); }
inline int atomicMin(int* a, int v) { return ::emu::atomic_min_i32(a, v); }
inline int atomicCAS(int* a, int c, int v) { return ::emu::atomic_cas_i32(a, c, v); }
inline int atomicExch(int* a, int v) { return ::emu::atomic_exch_i32(a, v); }

// ---- arithmetic builtins ------------------------------------------------------
inline unsigned __float_as_uint(float f) { return ::emu::from_bits<unsigned>(::emu::to_bits(f)); }
inline int __float_as_int(float f) { return ::emu::from_bits<int>(::emu::to_bits(f)); }
inline float __uint_as_float(unsigned u) { return ::emu::from_bits<float>(::emu::to_bits(u)); }
inline float __int_as_float(int u) { return ::emu::from_bits<float>(::emu::to_bits(u)); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
// The strict build's semantics: the fast-math intrinsics are the IEEE functions.
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }

// CUDA's global min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
