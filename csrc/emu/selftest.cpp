// Self-test kernels of the emulator's own builtins (compiled like the kernels of
// csrc/cuda: force-included prelude, race-mode instrumentation). They use the
// builtins the project's kernels do not (yet): tests/test_cuda_emu.py checks
// their results against values computed in Python, the errors that misuse must
// raise, and the race reports of deliberately racy code.
#include <string>

namespace emu_selftest {

constexpr int kCols = 12;

// One block of 64 threads (two warps); row t of out (64, kCols) is thread t's.
__global__ void collectives_kernel(int* out) {
  const int t = threadIdx.x, lane = t & 31;
  int* o = out + t * kCols;
  const int v = t * 10 + 1;
  o[0] = __shfl_sync(0xffffffffu, v, 3);
  o[1] = __shfl_up_sync(0xffffffffu, v, 1);
  o[2] = __shfl_down_sync(0xffffffffu, v, 2, 16);
  o[3] = __shfl_xor_sync(0xffffffffu, v, 5);
  o[4] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
  o[5] = __all_sync(0xffffffffu, t < 40);
  o[6] = __any_sync(0xffffffffu, t == 63);
  o[7] = __syncthreads_count(t % 4 == 0);
  o[8] = __syncthreads_and(t < 64);
  o[9] = __syncthreads_or(t == 5);
  o[10] = lane < 16 ? __shfl_xor_sync(0x0000ffffu, v, 1) : -1;  // a partial mask
  __syncwarp();
  o[11] = (int)(blockDim.x * 1000 + gridDim.x);
}

// 4 blocks of 64 threads; out: float sum, int count, max, CAS winners, CAS value, exchanges.
__global__ void atomics_kernel(float* fsum, int* out) {
  const int t = threadIdx.x, g = blockIdx.x * blockDim.x + t;
  atomicAdd(fsum, 0.5f);
  atomicAdd(out + 0, 1);
  atomicMax(out + 1, t + 100 * (int)blockIdx.x);
  const int old = atomicCAS(out + 3, 0, 1 + g);
  atomicAdd(out + 2, old == 0 ? 1 : 0);
  atomicExch(out + 4, 7);
  atomicMin(out + 5, -g);
}

// Misuse that must be reported (one block of 64 threads unless said otherwise).
__global__ void error_kernel(int which, int* out) {
  const int t = threadIdx.x, lane = t & 31;
  int v = t;
  switch (which) {
    case 0:  // a mask that does not name the calling lane
      v = __shfl_xor_sync(lane == 0 ? 0x2u : 0xffffffffu, v, 1);
      break;
    case 1:  // barriers at two sites
      if (t < 32) {
        __syncthreads();
      } else {
        __syncthreads();
      }
      break;
    case 2:  // half a warp at a shuffle, the other half at a barrier
      if (lane < 16) {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
      } else {
        __syncthreads();
      }
      break;
    case 3:  // lanes exit while the others shuffle with a full mask
      if (lane < 16) return;
      v = __shfl_xor_sync(0xffffffffu, v, 1);
      break;
    case 4:  // reading a lane outside the mask
      if (lane < 16) v = __shfl_sync(0x0000ffffu, v, 20);
      break;
    case 5:  // collectives at two sites
      if (lane < 16) {
        v = __any_sync(0xffffffffu, v > 3);
      } else {
        v = __any_sync(0xffffffffu, v > 4);
      }
      break;
  }
  out[t] = v;
}

// Racy (and clean) shared and global memory use, for race mode (4 blocks of 64 threads).
__global__ void race_kernel(int which, int* out) {
  __shared__ int s[64];
  const int t = threadIdx.x;
  switch (which) {
    case 0:  // clean: write, barrier, read another thread's word
      s[t] = t;
      __syncthreads();
      out[blockIdx.x * 64 + t] = s[(t + 1) % 64];
      break;
    case 1:  // two threads write one word
      s[t / 2] = t;
      __syncthreads();
      out[blockIdx.x * 64 + t] = s[t / 2];
      break;
    case 2:  // a word never written in this block
      if (t > 0) s[t] = t;
      __syncthreads();
      out[blockIdx.x * 64 + t] = s[0];
      break;
    case 3:  // atomics mixed with plain reads in one barrier interval
      if (t == 0) s[0] = 0;
      __syncthreads();
      atomicAdd(&s[0], 1);
      out[blockIdx.x * 64 + t] = s[0];
      break;
    case 4:  // every block writes the same global word
      out[t] = (int)blockIdx.x;
      break;
  }
}

torch::Tensor run(const std::string& name, int which) {
  const auto i32 = torch::TensorOptions().dtype(torch::kInt32);
  if (name == "collectives") {
    auto out = torch::zeros({64, kCols}, i32);
    emu::launch_kernel(collectives_kernel, dim3(1), dim3(64), 0, out.data_ptr<int>());
    return out;
  }
  if (name == "atomics") {
    auto f = torch::zeros({1}, torch::kFloat32);
    auto out = torch::zeros({6}, i32);
    emu::launch_kernel(atomics_kernel, dim3(4), dim3(64), 0, f.data_ptr<float>(), out.data_ptr<int>());
    return torch::cat({f.to(torch::kInt32), out});
  }
  if (name == "error") {
    auto out = torch::zeros({64}, i32);
    emu::launch_kernel(error_kernel, dim3(1), dim3(64), 0, which, out.data_ptr<int>());
    return out;
  }
  if (name == "race") {
    auto out = torch::zeros({4 * 64}, i32);
    emu::launch_kernel(race_kernel, dim3(4), dim3(64), 0, which, out.data_ptr<int>());
    return out;
  }
  TORCH_CHECK_VALUE(false, "emulator selftest: unknown name '", name, "'");
}

}  // namespace emu_selftest
