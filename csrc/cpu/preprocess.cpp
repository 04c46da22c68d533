// CPU preprocess: per-Gaussian projection and SH colour (forward), and the
// chain rule from the 2D quantities back to the 3D parameters (backward).
#include <omp.h>

#include "f3d/projection.h"
#include "f3d/sh.h"
#include "ops.h"

namespace f3d {

namespace {

Vec3 load3(const float* p) { return {p[0], p[1], p[2]}; }
Vec4 load4(const float* p) { return {p[0], p[1], p[2], p[3]}; }

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
  const Vec3 center = camera_center(cam);
  const auto f32 = means.options();
  auto means2d = torch::zeros({N, 2}, f32);
  auto conics = torch::zeros({N, 3}, f32);
  auto depths = torch::zeros({N}, f32);
  auto radii = torch::zeros({N}, f32.dtype(torch::kInt32));
  const bool has_sh = sh.dim() == 3;
  auto colors = has_sh ? torch::zeros({N, 3}, f32) : torch::empty({0}, f32);
  auto colors_raw = has_sh ? torch::zeros({N, 3}, f32) : torch::empty({0}, f32);
  const int64_t K_sh = has_sh ? sh.size(1) : 0;

  const float* m = means.data_ptr<float>();
  const float* q = quats.data_ptr<float>();
  const float* s = scales.data_ptr<float>();
  const float* shp = has_sh ? sh.data_ptr<float>() : nullptr;
  float* o_m2d = means2d.data_ptr<float>();
  float* o_con = conics.data_ptr<float>();
  float* o_dep = depths.data_ptr<float>();
  int* o_rad = radii.data_ptr<int>();
  float* o_col = has_sh ? colors.data_ptr<float>() : nullptr;
  float* o_raw = has_sh ? colors_raw.data_ptr<float>() : nullptr;

#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < N; ++g) {
    Projection P;
    const Vec3 mean = load3(m + 3 * g);
    if (!project_gaussian(cam, mean, load4(q + 4 * g), load3(s + 3 * g), P)) continue;
    o_m2d[2 * g + 0] = P.mean2d.x;
    o_m2d[2 * g + 1] = P.mean2d.y;
    o_con[3 * g + 0] = P.conic.a;
    o_con[3 * g + 1] = P.conic.b;
    o_con[3 * g + 2] = P.conic.c;
    o_dep[g] = P.p_cam.z;
    o_rad[g] = P.radius;
    if (has_sh) {
      float length;
      Vec3 raw;
      const Vec3 c = sh_to_color(sh_degree, shp + g * K_sh * 3, view_direction(mean, center, length), raw);
      o_col[3 * g + 0] = c.x;
      o_col[3 * g + 1] = c.y;
      o_col[3 * g + 2] = c.z;
      o_raw[3 * g + 0] = raw.x;
      o_raw[3 * g + 1] = raw.y;
      o_raw[3 * g + 2] = raw.z;
    }
  }
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
  const Vec3 center = camera_center(cam);
  auto d_means = torch::zeros_like(means);
  auto d_quats = torch::zeros_like(quats);
  auto d_scales = torch::zeros_like(scales);
  const bool has_sh = sh.dim() == 3;
  auto d_sh = has_sh ? torch::zeros_like(sh) : torch::empty({0}, means.options());
  const int64_t K_sh = has_sh ? sh.size(1) : 0;

  const float* m = means.data_ptr<float>();
  const float* q = quats.data_ptr<float>();
  const float* s = scales.data_ptr<float>();
  const float* shp = has_sh ? sh.data_ptr<float>() : nullptr;
  const float* raw = has_sh ? colors_raw.data_ptr<float>() : nullptr;
  const int* rad = radii.data_ptr<int>();
  const float* g_m2d = d_means2d.data_ptr<float>();
  const float* g_con = d_conics.data_ptr<float>();
  const float* g_dep = d_depths.data_ptr<float>();
  const float* g_col = has_sh ? d_colors.data_ptr<float>() : nullptr;
  float* o_m = d_means.data_ptr<float>();
  float* o_q = d_quats.data_ptr<float>();
  float* o_s = d_scales.data_ptr<float>();
  float* o_sh = has_sh ? d_sh.data_ptr<float>() : nullptr;

#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < N; ++g) {
    if (rad[g] <= 0) continue;
    const Vec3 mean = load3(m + 3 * g);
    const Vec3 scale = load3(s + 3 * g);
    Projection P;
    if (!project_gaussian(cam, mean, load4(q + 4 * g), scale, P)) continue;
    ProjectionGrad pg;
    pg.mean2d = {g_m2d[2 * g], g_m2d[2 * g + 1]};
    pg.conic = {g_con[3 * g], g_con[3 * g + 1], g_con[3 * g + 2]};
    pg.depth = g_dep[g];
    GaussianGrad gg = project_gaussian_backward(cam, scale, P, pg);
    if (has_sh) {
      const Vec3 d_mean_sh =
          sh_to_color_backward(sh_degree, shp + g * K_sh * 3, mean, center, load3(raw + 3 * g),
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
  return {d_means, d_quats, d_scales, d_sh};
}

}  // namespace f3d
