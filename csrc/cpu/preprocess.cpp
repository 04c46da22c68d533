// CPU preprocess: per-Gaussian projection and SH colour (forward), and the
// chain rule from the 2D quantities back to the 3D parameters (backward).
#include <omp.h>

#include "f3d/preprocess.h"
#include "ops.h"

namespace f3d {

namespace {

Camera camera_of(const torch::Tensor& viewmat, const torch::Tensor& K, int width, int height,
                 float near) {
  return make_camera(viewmat.data_ptr<float>(), K.data_ptr<float>(), width, height, near);
}

}  // namespace

PreprocessOut preprocess_forward_cpu(const torch::Tensor& means, const torch::Tensor& quats,
                                     const torch::Tensor& scales, const torch::Tensor& sh,
                                     int sh_degree, const torch::Tensor& viewmat,
                                     const torch::Tensor& K, int width, int height, float near) {
  const int64_t N = means.size(0);
  const Camera cam = camera_of(viewmat, K, width, height, near);
  const auto f32 = means.options();
  auto means2d = torch::zeros({N, 2}, f32);
  auto conics = torch::zeros({N, 3}, f32);
  auto depths = torch::zeros({N}, f32);
  auto radii = torch::zeros({N}, f32.dtype(torch::kInt32));
  const bool has_sh = sh.dim() == 3;
  auto colors = has_sh ? torch::zeros({N, 3}, f32) : torch::empty({0}, f32);
  auto colors_raw = has_sh ? torch::zeros({N, 3}, f32) : torch::empty({0}, f32);
  const GaussianInputs in{means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
                          has_sh ? sh.data_ptr<float>() : nullptr, has_sh ? sh.size(1) : 0};
  const PreprocessOutputs out{means2d.data_ptr<float>(), conics.data_ptr<float>(), depths.data_ptr<float>(),
                              radii.data_ptr<int>(), has_sh ? colors.data_ptr<float>() : nullptr,
                              has_sh ? colors_raw.data_ptr<float>() : nullptr};
  const int degree = has_sh ? sh_degree : -1;

#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < N; ++g) preprocess_forward_one(cam, g, in, degree, out);
  return {means2d, conics, depths, radii, colors, colors_raw};
}

PreprocessGrads preprocess_backward_cpu(const torch::Tensor& means, const torch::Tensor& quats,
                                        const torch::Tensor& scales, const torch::Tensor& sh,
                                        int sh_degree, const torch::Tensor& viewmat,
                                        const torch::Tensor& K, int width, int height, float near,
                                        const torch::Tensor& radii,
                                        const torch::Tensor& colors_raw,
                                        const torch::Tensor& d_means2d,
                                        const torch::Tensor& d_conics,
                                        const torch::Tensor& d_depths,
                                        const torch::Tensor& d_colors) {
  const int64_t N = means.size(0);
  const Camera cam = camera_of(viewmat, K, width, height, near);
  auto d_means = torch::zeros_like(means);
  auto d_quats = torch::zeros_like(quats);
  auto d_scales = torch::zeros_like(scales);
  const bool has_sh = sh.dim() == 3;
  auto d_sh = has_sh ? torch::zeros_like(sh) : torch::empty({0}, means.options());
  const GaussianInputs in{means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
                          has_sh ? sh.data_ptr<float>() : nullptr, has_sh ? sh.size(1) : 0};
  const PreprocessGradInputs gin{radii.data_ptr<int>(), has_sh ? colors_raw.data_ptr<float>() : nullptr,
                                 d_means2d.data_ptr<float>(), d_conics.data_ptr<float>(),
                                 d_depths.data_ptr<float>(), has_sh ? d_colors.data_ptr<float>() : nullptr};
  const PreprocessGradOutputs out{d_means.data_ptr<float>(), d_quats.data_ptr<float>(),
                                  d_scales.data_ptr<float>(), has_sh ? d_sh.data_ptr<float>() : nullptr};
  const int degree = has_sh ? sh_degree : -1;

#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < N; ++g) preprocess_backward_one(cam, g, in, degree, gin, out);
  return {d_means, d_quats, d_scales, d_sh};
}

}  // namespace f3d
