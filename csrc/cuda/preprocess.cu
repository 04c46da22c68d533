// CUDA preprocess: one thread per Gaussian. Each runs f3d/preprocess.h's
// per-Gaussian forward or backward, the very function the CPU loop runs, so the
// results match preprocess_forward_cpu / preprocess_backward_cpu up to float
// rounding. viewmat and K are read on the device, in the kernels.
#include "f3d/preprocess.h"
#include "helpers.cuh"
#include "ops.h"

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
  const auto f32 = means.options();
  auto means2d = torch::zeros({N, 2}, f32);
  auto conics = torch::zeros({N, 3}, f32);
  auto depths = torch::zeros({N}, f32);
  auto radii = torch::zeros({N}, f32.dtype(torch::kInt32));
  const bool has_sh = sh.dim() == 3;  // as the CPU version
  auto colors = has_sh ? torch::zeros({N, 3}, f32) : torch::empty({0}, f32);
  auto colors_raw = has_sh ? torch::zeros({N, 3}, f32) : torch::empty({0}, f32);
  const int64_t K_sh = has_sh ? sh.size(1) : 0;
  if (N == 0) return {means2d, conics, depths, radii, colors, colors_raw};

  const GaussianInputs in{means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
                          has_sh ? sh.data_ptr<float>() : nullptr, K_sh};
  const PreprocessOutputs out{means2d.data_ptr<float>(), conics.data_ptr<float>(), depths.data_ptr<float>(),
                              radii.data_ptr<int>(), has_sh ? colors.data_ptr<float>() : nullptr,
                              has_sh ? colors_raw.data_ptr<float>() : nullptr};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_sh_degree(has_sh, sh_degree, [&](auto deg) {
    preprocess_forward_kernel<decltype(deg)::value><<<gpu::blocks_for(N), gpu::kThreads1D, 0, stream>>>(
        N, viewmat.data_ptr<float>(), K.data_ptr<float>(), width, height, near, in, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {means2d, conics, depths, radii, colors, colors_raw};
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
  auto d_means = torch::zeros_like(means);
  auto d_quats = torch::zeros_like(quats);
  auto d_scales = torch::zeros_like(scales);
  const bool has_sh = sh.dim() == 3;  // as the CPU version
  auto d_sh = has_sh ? torch::zeros_like(sh) : torch::empty({0}, means.options());
  const int64_t K_sh = has_sh ? sh.size(1) : 0;
  if (N == 0) return {d_means, d_quats, d_scales, d_sh};

  const GaussianInputs in{means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
                          has_sh ? sh.data_ptr<float>() : nullptr, K_sh};
  const PreprocessGradInputs gin{radii.data_ptr<int>(), has_sh ? colors_raw.data_ptr<float>() : nullptr,
                                 d_means2d.data_ptr<float>(), d_conics.data_ptr<float>(),
                                 d_depths.data_ptr<float>(), has_sh ? d_colors.data_ptr<float>() : nullptr};
  const PreprocessGradOutputs out{d_means.data_ptr<float>(), d_quats.data_ptr<float>(),
                                  d_scales.data_ptr<float>(), has_sh ? d_sh.data_ptr<float>() : nullptr};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_sh_degree(has_sh, sh_degree, [&](auto deg) {
    preprocess_backward_kernel<decltype(deg)::value><<<gpu::blocks_for(N), gpu::kThreads1D, 0, stream>>>(
        N, viewmat.data_ptr<float>(), K.data_ptr<float>(), width, height, near, in, gin, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {d_means, d_quats, d_scales, d_sh};
}

}  // namespace f3d
