// Declarations of the kernel entry points. bindings.cpp validates the tensors
// and dispatches on their device to the *_cpu or *_cuda versions, which share
// their signatures. All tensors are float32 (radii, ids: int32) and contiguous.
#pragma once

#include <torch/types.h>

#include <tuple>

#include "f3d/common.h"

namespace f3d {

// Preprocess forward: (means2d (N,2), conics (N,3), depths (N,), radii (N,) int32,
// colors (N,3) [empty when sh is empty], colors_raw (N,3) unclamped SH colour).
using PreprocessOut = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor,
                                 torch::Tensor, torch::Tensor>;
// Preprocess backward: (d_means (N,3), d_quats (N,4), d_scales (N,3), d_sh (N,K,3)).
using PreprocessGrads = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>;
// Rasterize forward: (rgb (3,H,W), features (C,H,W), depth (1,H,W), alpha (1,H,W),
// final_T (H,W), last_contrib (H,W) int32, tile_offsets (T+1,) int32, gaussian_ids (M,) int32).
using RasterizeOut = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor,
                                torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>;
// Rasterize backward: (d_means2d (N,2), d_conics (N,3), d_colors (N,3), d_opacities (N,),
// d_depths (N,), d_features (N,C)).
using RasterizeGrads = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor,
                                  torch::Tensor, torch::Tensor>;

// One set of entry points per backend; CPU and CUDA share the signatures.
// viewmat (4,4) and K (3,3) live on the same device as the Gaussians.
#define F3D_DECLARE_BACKEND(SUFFIX)                                                            \
  PreprocessOut preprocess_forward_##SUFFIX(                                                   \
      const torch::Tensor& means, const torch::Tensor& quats, const torch::Tensor& scales,     \
      const torch::Tensor& sh, int sh_degree, const torch::Tensor& viewmat,                    \
      const torch::Tensor& K, int width, int height, float near);                              \
  PreprocessGrads preprocess_backward_##SUFFIX(                                                \
      const torch::Tensor& means, const torch::Tensor& quats, const torch::Tensor& scales,     \
      const torch::Tensor& sh, int sh_degree, const torch::Tensor& viewmat,                    \
      const torch::Tensor& K, int width, int height, float near, const torch::Tensor& radii,   \
      const torch::Tensor& colors_raw, const torch::Tensor& d_means2d,                         \
      const torch::Tensor& d_conics, const torch::Tensor& d_depths,                            \
      const torch::Tensor& d_colors);                                                          \
  RasterizeOut rasterize_forward_##SUFFIX(                                                     \
      const torch::Tensor& means2d, const torch::Tensor& conics, const torch::Tensor& colors,  \
      const torch::Tensor& opacities, const torch::Tensor& depths,                             \
      const torch::Tensor& features, const torch::Tensor& radii, int width, int height);       \
  RasterizeGrads rasterize_backward_##SUFFIX(                                                  \
      const torch::Tensor& means2d, const torch::Tensor& conics, const torch::Tensor& colors,  \
      const torch::Tensor& opacities, const torch::Tensor& depths,                             \
      const torch::Tensor& features, int width, int height, const torch::Tensor& final_T,      \
      const torch::Tensor& last_contrib, const torch::Tensor& tile_offsets,                    \
      const torch::Tensor& gaussian_ids, const torch::Tensor& d_rgb,                           \
      const torch::Tensor& d_features, const torch::Tensor& d_depth,                           \
      const torch::Tensor& d_alpha);

F3D_DECLARE_BACKEND(cpu)
#ifdef F3D_WITH_CUDA
F3D_DECLARE_BACKEND(cuda)
#endif

}  // namespace f3d
