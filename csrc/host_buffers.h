// Host-side plumbing the CPU and CUDA backends share: allocating the zero-filled
// outputs of an entry point and packing tensors into the pointer structs of
// f3d/preprocess.h. Only the loop over the work differs between the backends.
#pragma once

#include "f3d/preprocess.h"
#include "ops.h"

namespace f3d {

// sh is (N, K, 3) with SH colours, a 1-D empty tensor without.
inline bool has_sh_colors(const torch::Tensor& sh) { return sh.dim() == 3; }

inline GaussianInputs gaussian_inputs(const torch::Tensor& means, const torch::Tensor& quats,
                                      const torch::Tensor& scales, const torch::Tensor& sh) {
  const bool has_sh = has_sh_colors(sh);
  return {means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
          has_sh ? sh.data_ptr<float>() : nullptr, has_sh ? sh.size(1) : 0};
}

// Zero-filled preprocess outputs for N Gaussians (a culled Gaussian keeps zeros, radius 0).
inline PreprocessOut zero_preprocess_out(const torch::Tensor& means, bool has_sh) {
  const int64_t N = means.size(0);
  const auto f32 = means.options();
  return {torch::zeros({N, 2}, f32), torch::zeros({N, 3}, f32), torch::zeros({N}, f32),
          torch::zeros({N}, f32.dtype(torch::kInt32)),
          has_sh ? torch::zeros({N, 3}, f32) : torch::empty({0}, f32),
          has_sh ? torch::zeros({N, 3}, f32) : torch::empty({0}, f32)};
}

inline PreprocessOutputs preprocess_output_ptrs(const PreprocessOut& out, bool has_sh) {
  return {std::get<0>(out).data_ptr<float>(), std::get<1>(out).data_ptr<float>(),
          std::get<2>(out).data_ptr<float>(), std::get<3>(out).data_ptr<int>(),
          has_sh ? std::get<4>(out).data_ptr<float>() : nullptr,
          has_sh ? std::get<5>(out).data_ptr<float>() : nullptr};
}

inline PreprocessGrads zero_preprocess_grads(const torch::Tensor& means, const torch::Tensor& quats,
                                             const torch::Tensor& scales, const torch::Tensor& sh) {
  return {torch::zeros_like(means), torch::zeros_like(quats), torch::zeros_like(scales),
          has_sh_colors(sh) ? torch::zeros_like(sh) : torch::empty({0}, means.options())};
}

inline PreprocessGradOutputs preprocess_grad_ptrs(const PreprocessGrads& g, bool has_sh) {
  return {std::get<0>(g).data_ptr<float>(), std::get<1>(g).data_ptr<float>(),
          std::get<2>(g).data_ptr<float>(), has_sh ? std::get<3>(g).data_ptr<float>() : nullptr};
}

inline PreprocessGradInputs preprocess_grad_inputs(const torch::Tensor& radii, const torch::Tensor& colors_raw,
                                                   const torch::Tensor& d_means2d, const torch::Tensor& d_conics,
                                                   const torch::Tensor& d_depths, const torch::Tensor& d_colors,
                                                   bool has_sh) {
  return {radii.data_ptr<int>(), has_sh ? colors_raw.data_ptr<float>() : nullptr, d_means2d.data_ptr<float>(),
          d_conics.data_ptr<float>(), d_depths.data_ptr<float>(), has_sh ? d_colors.data_ptr<float>() : nullptr};
}

// Zero gradients of the rasterizer's inputs (means2d, conics, colors, opacities, depths, features).
inline RasterizeGrads zero_rasterize_grads(const torch::Tensor& means2d, const torch::Tensor& conics,
                                           const torch::Tensor& colors, const torch::Tensor& opacities,
                                           const torch::Tensor& depths, const torch::Tensor& features) {
  return {torch::zeros_like(means2d), torch::zeros_like(conics), torch::zeros_like(colors),
          torch::zeros_like(opacities), torch::zeros_like(depths), torch::zeros_like(features)};
}

}  // namespace f3d
