// CPU preprocess: per-Gaussian projection and SH colour (forward), and the
// chain rule from the 2D quantities back to the 3D parameters (backward).
#include <omp.h>

#include "host_buffers.h"

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
  const bool has_sh = has_sh_colors(sh);
  PreprocessOut result = zero_preprocess_out(means, has_sh);
  const GaussianInputs in = gaussian_inputs(means, quats, scales, sh);
  const PreprocessOutputs out = preprocess_output_ptrs(result, has_sh);
  const int degree = has_sh ? sh_degree : -1;

#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < N; ++g) preprocess_forward_one(cam, g, in, degree, out);
  return result;
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
  const bool has_sh = has_sh_colors(sh);
  PreprocessGrads result = zero_preprocess_grads(means, quats, scales, sh);
  const GaussianInputs in = gaussian_inputs(means, quats, scales, sh);
  const PreprocessGradInputs gin =
      preprocess_grad_inputs(radii, colors_raw, d_means2d, d_conics, d_depths, d_colors, has_sh);
  const PreprocessGradOutputs out = preprocess_grad_ptrs(result, has_sh);
  const int degree = has_sh ? sh_degree : -1;

#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < N; ++g) preprocess_backward_one(cam, g, in, degree, gin, out);
  return result;
}

}  // namespace f3d
