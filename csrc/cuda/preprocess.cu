// CUDA preprocess: one thread per Gaussian. The math (projection, SH colour and
// their backward) is the shared host/device code of f3d/projection.h and
// f3d/sh.h, so the results match preprocess_forward_cpu / preprocess_backward_cpu
// up to float rounding. viewmat and K are read on the device, in the kernels.
#include "f3d/projection.h"
#include "f3d/sh.h"
#include "helpers.cuh"
#include "ops.h"

#include <type_traits>

namespace f3d {

namespace {

__device__ __forceinline__ Vec3 load3(const float* p) { return {p[0], p[1], p[2]}; }
__device__ __forceinline__ Vec4 load4(const float* p) { return {p[0], p[1], p[2], p[3]}; }

// DEG is the SH degree, a compile-time constant so that the SH loops unroll and
// their arrays stay in registers; DEG < 0: no SH colours.
template <int DEG>
__global__ void __launch_bounds__(gpu::kThreads1D)
    preprocess_forward_kernel(int64_t N, const float* __restrict__ means,
                              const float* __restrict__ quats, const float* __restrict__ scales,
                              const float* __restrict__ sh, int64_t K_sh,
                              const float* __restrict__ viewmat, const float* __restrict__ Kmat,
                              int width, int height, float near, float* __restrict__ o_m2d,
                              float* __restrict__ o_con, float* __restrict__ o_dep,
                              int* __restrict__ o_rad, float* __restrict__ o_col,
                              float* __restrict__ o_raw) {
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= N) return;
  const Camera cam = make_camera(viewmat, Kmat, width, height, near);
  const Vec3 mean = load3(means + 3 * g);
  Projection P;
  // Outputs were zero-filled: a culled Gaussian keeps zeros and radius 0.
  if (!project_gaussian(cam, mean, load4(quats + 4 * g), load3(scales + 3 * g), P)) return;
  o_m2d[2 * g + 0] = P.mean2d.x;
  o_m2d[2 * g + 1] = P.mean2d.y;
  o_con[3 * g + 0] = P.conic.a;
  o_con[3 * g + 1] = P.conic.b;
  o_con[3 * g + 2] = P.conic.c;
  o_dep[g] = P.p_cam.z;
  o_rad[g] = P.radius;
  if constexpr (DEG >= 0) {
    const Vec3 center = camera_center(cam);
    float length;
    Vec3 raw;
    const Vec3 c = sh_to_color(DEG, sh + g * K_sh * 3, view_direction(mean, center, length), raw);
    o_col[3 * g + 0] = c.x;
    o_col[3 * g + 1] = c.y;
    o_col[3 * g + 2] = c.z;
    o_raw[3 * g + 0] = raw.x;
    o_raw[3 * g + 1] = raw.y;
    o_raw[3 * g + 2] = raw.z;
  }
}

template <int DEG>
__global__ void __launch_bounds__(gpu::kThreads1D)
    preprocess_backward_kernel(int64_t N, const float* __restrict__ means,
                               const float* __restrict__ quats, const float* __restrict__ scales,
                               const float* __restrict__ sh, int64_t K_sh,
                               const float* __restrict__ viewmat, const float* __restrict__ Kmat,
                               int width, int height, float near, const int* __restrict__ radii,
                               const float* __restrict__ colors_raw,
                               const float* __restrict__ g_m2d, const float* __restrict__ g_con,
                               const float* __restrict__ g_dep, const float* __restrict__ g_col,
                               float* __restrict__ o_m, float* __restrict__ o_q,
                               float* __restrict__ o_s, float* __restrict__ o_sh) {
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= N) return;
  if (radii[g] <= 0) return;
  const Camera cam = make_camera(viewmat, Kmat, width, height, near);
  const Vec3 mean = load3(means + 3 * g);
  const Vec3 scale = load3(scales + 3 * g);
  Projection P;
  if (!project_gaussian(cam, mean, load4(quats + 4 * g), scale, P)) return;
  ProjectionGrad pg;
  pg.mean2d = {g_m2d[2 * g], g_m2d[2 * g + 1]};
  pg.conic = {g_con[3 * g], g_con[3 * g + 1], g_con[3 * g + 2]};
  pg.depth = g_dep[g];
  GaussianGrad gg = project_gaussian_backward(cam, scale, P, pg);
  if constexpr (DEG >= 0) {
    const Vec3 center = camera_center(cam);
    // Writes the first sh_count(DEG) rows of d_sh; the others stay zero.
    const Vec3 d_mean_sh =
        sh_to_color_backward(DEG, sh + g * K_sh * 3, mean, center, load3(colors_raw + 3 * g),
                             load3(g_col + 3 * g), o_sh + g * K_sh * 3);
    gg.mean = gg.mean + d_mean_sh;
  }
  o_m[3 * g + 0] = gg.mean.x;
  o_m[3 * g + 1] = gg.mean.y;
  o_m[3 * g + 2] = gg.mean.z;
  o_q[4 * g + 0] = gg.quat.w;
  o_q[4 * g + 1] = gg.quat.x;
  o_q[4 * g + 2] = gg.quat.y;
  o_q[4 * g + 3] = gg.quat.z;
  o_s[3 * g + 0] = gg.scale.x;
  o_s[3 * g + 1] = gg.scale.y;
  o_s[3 * g + 2] = gg.scale.z;
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

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_sh_degree(has_sh, sh_degree, [&](auto deg) {
    preprocess_forward_kernel<decltype(deg)::value><<<gpu::blocks_for(N), gpu::kThreads1D, 0, stream>>>(
        N, means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
        has_sh ? sh.data_ptr<float>() : nullptr, K_sh, viewmat.data_ptr<float>(),
        K.data_ptr<float>(), width, height, near, means2d.data_ptr<float>(),
        conics.data_ptr<float>(), depths.data_ptr<float>(), radii.data_ptr<int>(),
        has_sh ? colors.data_ptr<float>() : nullptr,
        has_sh ? colors_raw.data_ptr<float>() : nullptr);
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

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  dispatch_sh_degree(has_sh, sh_degree, [&](auto deg) {
    preprocess_backward_kernel<decltype(deg)::value><<<gpu::blocks_for(N), gpu::kThreads1D, 0, stream>>>(
        N, means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
        has_sh ? sh.data_ptr<float>() : nullptr, K_sh, viewmat.data_ptr<float>(),
        K.data_ptr<float>(), width, height, near, radii.data_ptr<int>(),
        has_sh ? colors_raw.data_ptr<float>() : nullptr, d_means2d.data_ptr<float>(),
        d_conics.data_ptr<float>(), d_depths.data_ptr<float>(),
        has_sh ? d_colors.data_ptr<float>() : nullptr, d_means.data_ptr<float>(),
        d_quats.data_ptr<float>(), d_scales.data_ptr<float>(),
        has_sh ? d_sh.data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {d_means, d_quats, d_scales, d_sh};
}

}  // namespace f3d
