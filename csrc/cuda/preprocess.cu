// CUDA preprocess: one thread per Gaussian. Each runs f3d/preprocess.h's
// per-Gaussian forward or backward, the very function the CPU loop runs, so the
// results match preprocess_forward_cpu / preprocess_backward_cpu up to float
// rounding. viewmat and K are read on the device, in the kernels.
#include "helpers.cuh"
#include "host_buffers.h"

#include <type_traits>

namespace f3d {

namespace {

// DEG is the SH degree, a compile-time constant so that the SH loops unroll and
// their arrays stay in registers; DEG < 0: no SH colours. The per-Gaussian work
// is f3d/preprocess.h's, the same function the CPU loop calls.
template <int DEG>
__global__ void __launch_bounds__(gpu::kThreads1D)
    preprocess_forward_kernel(int64_t N, const float* __restrict__ viewmat, const float* __restrict__ Kmat,
                              int width, int height, float near, const GaussianInputs in,
                              const PreprocessOutputs out) {
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= N) return;
  preprocess_forward_one(make_camera(viewmat, Kmat, width, height, near), g, in, DEG, out);
}

template <int DEG>
__global__ void __launch_bounds__(gpu::kThreads1D)
    preprocess_backward_kernel(int64_t N, const float* __restrict__ viewmat, const float* __restrict__ Kmat,
                               int width, int height, float near, const GaussianInputs in,
                               const PreprocessGradInputs gin, const PreprocessGradOutputs out) {
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= N) return;
  preprocess_backward_one(make_camera(viewmat, Kmat, width, height, near), g, in, DEG, gin, out);
}

// Calls fn(std::integral_constant<int, DEG>{}) with DEG = -1 without SH, else sh_degree.
template <typename Fn>
void dispatch_sh_degree(bool has_sh, int sh_degree, Fn&& fn) {
  if (!has_sh) return fn(std::integral_constant<int, -1>{});
  switch (sh_degree) {
    case 0: return fn(std::integral_constant<int, 0>{});
    case 1: return fn(std::integral_constant<int, 1>{});
    case 2: return fn(std::integral_constant<int, 2>{});
    case 3: return fn(std::integral_constant<int, 3>{});
    default: TORCH_CHECK(false, "feature3dgs: sh_degree ", sh_degree, " out of range");
  }
}
static_assert(kMaxShDegree == 3, "dispatch_sh_degree covers degrees 0..3");

}  // namespace

PreprocessOut preprocess_forward_cuda(const torch::Tensor& means, const torch::Tensor& quats,
                                      const torch::Tensor& scales, const torch::Tensor& sh,
                                      int sh_degree, const torch::Tensor& viewmat,
                                      const torch::Tensor& K, int width, int height, float near) {
  const c10::cuda::CUDAGuard guard(means.device());
  const int64_t N = means.size(0);
  const bool has_sh = has_sh_colors(sh);  // as the CPU version
  PreprocessOut result = zero_preprocess_out(means, has_sh);
  if (N == 0) return result;

  const GaussianInputs in = gaussian_inputs(means, quats, scales, sh);
  const PreprocessOutputs out = preprocess_output_ptrs(result, has_sh);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_sh_degree(has_sh, sh_degree, [&](auto deg) {
    gpu::launch(preprocess_forward_kernel<decltype(deg)::value>, gpu::blocks_for(N), gpu::kThreads1D, 0, stream,
                N, viewmat.data_ptr<float>(), K.data_ptr<float>(), width, height, near, in, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return result;
}

PreprocessGrads preprocess_backward_cuda(const torch::Tensor& means, const torch::Tensor& quats,
                                         const torch::Tensor& scales, const torch::Tensor& sh,
                                         int sh_degree, const torch::Tensor& viewmat,
                                         const torch::Tensor& K, int width, int height, float near,
                                         const torch::Tensor& radii,
                                         const torch::Tensor& colors_raw,
                                         const torch::Tensor& d_means2d,
                                         const torch::Tensor& d_conics,
                                         const torch::Tensor& d_depths,
                                         const torch::Tensor& d_colors) {
  const c10::cuda::CUDAGuard guard(means.device());
  const int64_t N = means.size(0);
  const bool has_sh = has_sh_colors(sh);  // as the CPU version
  PreprocessGrads result = zero_preprocess_grads(means, quats, scales, sh);
  if (N == 0) return result;

  const GaussianInputs in = gaussian_inputs(means, quats, scales, sh);
  const PreprocessGradInputs gin =
      preprocess_grad_inputs(radii, colors_raw, d_means2d, d_conics, d_depths, d_colors, has_sh);
  const PreprocessGradOutputs out = preprocess_grad_ptrs(result, has_sh);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_sh_degree(has_sh, sh_degree, [&](auto deg) {
    gpu::launch(preprocess_backward_kernel<decltype(deg)::value>, gpu::blocks_for(N), gpu::kThreads1D, 0, stream,
                N, viewmat.data_ptr<float>(), K.data_ptr<float>(), width, height, near, in, gin, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return result;
}

}  // namespace f3d
