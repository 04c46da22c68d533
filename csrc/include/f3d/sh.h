// Real spherical harmonics (the 3DGS basis and signs, degree <= 3): colour from
// view direction, and the backward to the coefficients and the direction.
#pragma once

#include "f3d/common.h"

namespace f3d {

constexpr float kShC0 = 0.28209479177387814f;
constexpr float kShC1 = 0.4886025119029199f;
// Scalars, not arrays: constexpr arrays are not visible in CUDA device code.
constexpr float kShC2_0 = 1.0925484305920792f, kShC2_1 = -1.0925484305920792f,
                kShC2_2 = 0.31539156525252005f, kShC2_3 = -1.0925484305920792f,
                kShC2_4 = 0.5462742152960396f;
constexpr float kShC3_0 = -0.5900435899266435f, kShC3_1 = 2.890611442640554f,
                kShC3_2 = -0.4570457994644658f, kShC3_3 = 0.3731763325901154f,
                kShC3_4 = -0.4570457994644658f, kShC3_5 = 1.445305721320277f,
                kShC3_6 = -0.5900435899266435f;

F3D_HD int sh_count(int degree) { return (degree + 1) * (degree + 1); }

// Basis values b[k] for k < sh_count(degree) at the unit direction d; with grad
// non-null also db[k] = d b[k] / d(x, y, z) (x, y, z treated as independent).
F3D_HD void sh_basis(int degree, Vec3 d, float* b, Vec3* grad) {
  const float x = d.x, y = d.y, z = d.z;
  b[0] = kShC0;
  if (grad) grad[0] = {0.f, 0.f, 0.f};
  if (degree < 1) return;
  b[1] = -kShC1 * y;
  b[2] = kShC1 * z;
  b[3] = -kShC1 * x;
  if (grad) {
    grad[1] = {0.f, -kShC1, 0.f};
    grad[2] = {0.f, 0.f, kShC1};
    grad[3] = {-kShC1, 0.f, 0.f};
  }
  if (degree < 2) return;
  const float xx = x * x, yy = y * y, zz = z * z;
  b[4] = kShC2_0 * x * y;
  b[5] = kShC2_1 * y * z;
  b[6] = kShC2_2 * (2.f * zz - xx - yy);
  b[7] = kShC2_3 * x * z;
  b[8] = kShC2_4 * (xx - yy);
  if (grad) {
    grad[4] = {kShC2_0 * y, kShC2_0 * x, 0.f};
    grad[5] = {0.f, kShC2_1 * z, kShC2_1 * y};
    grad[6] = {-2.f * kShC2_2 * x, -2.f * kShC2_2 * y, 4.f * kShC2_2 * z};
    grad[7] = {kShC2_3 * z, 0.f, kShC2_3 * x};
    grad[8] = {2.f * kShC2_4 * x, -2.f * kShC2_4 * y, 0.f};
  }
  if (degree < 3) return;
  b[9] = kShC3_0 * y * (3.f * xx - yy);
  b[10] = kShC3_1 * x * y * z;
  b[11] = kShC3_2 * y * (4.f * zz - xx - yy);
  b[12] = kShC3_3 * z * (2.f * zz - 3.f * xx - 3.f * yy);
  b[13] = kShC3_4 * x * (4.f * zz - xx - yy);
  b[14] = kShC3_5 * z * (xx - yy);
  b[15] = kShC3_6 * x * (xx - 3.f * yy);
  if (grad) {
    grad[9] = {kShC3_0 * 6.f * x * y, kShC3_0 * 3.f * (xx - yy), 0.f};
    grad[10] = {kShC3_1 * y * z, kShC3_1 * x * z, kShC3_1 * x * y};
    grad[11] = {-2.f * kShC3_2 * x * y, kShC3_2 * (4.f * zz - xx - 3.f * yy), 8.f * kShC3_2 * y * z};
    grad[12] = {-6.f * kShC3_3 * x * z, -6.f * kShC3_3 * y * z,
                kShC3_3 * (6.f * zz - 3.f * xx - 3.f * yy)};
    grad[13] = {kShC3_4 * (4.f * zz - 3.f * xx - yy), -2.f * kShC3_4 * x * y, 8.f * kShC3_4 * x * z};
    grad[14] = {2.f * kShC3_5 * x * z, -2.f * kShC3_5 * y * z, kShC3_5 * (xx - yy)};
    grad[15] = {kShC3_6 * 3.f * (xx - yy), -6.f * kShC3_6 * x * y, 0.f};
  }
}

// Unit view direction from the camera centre to the Gaussian mean, and its length.
F3D_HD Vec3 view_direction(Vec3 mean, Vec3 cam_center, float& length) {
  const Vec3 v = mean - cam_center;
  length = sqrtf(dot(v, v));
  return (1.f / length) * v;
}

// colour = max(sum_k b_k sh[k] + 0.5, 0). sh points at K*3 floats (k-major).
// Writes the unclamped value to raw (for the clamp mask in the backward).
F3D_HD Vec3 sh_to_color(int degree, const float* sh, Vec3 dir, Vec3& raw) {
  float b[16];
  sh_basis(degree, dir, b, nullptr);
  Vec3 c = {0.f, 0.f, 0.f};
  for (int k = 0; k < sh_count(degree); ++k) {
    c.x += b[k] * sh[3 * k + 0];
    c.y += b[k] * sh[3 * k + 1];
    c.z += b[k] * sh[3 * k + 2];
  }
  raw = {c.x + 0.5f, c.y + 0.5f, c.z + 0.5f};
  return {fmaxf(raw.x, 0.f), fmaxf(raw.y, 0.f), fmaxf(raw.z, 0.f)};
}

// Backward of sh_to_color. d_color is dL/dcolour (after the clamp); raw the
// forward's unclamped value. Writes dL/dsh (K*3, only the first sh_count(degree)
// rows) and returns dL/dmean through the view direction.
F3D_HD Vec3 sh_to_color_backward(int degree, const float* sh, Vec3 mean, Vec3 cam_center, Vec3 raw,
                                 Vec3 d_color, float* d_sh) {
  const Vec3 g = {raw.x >= 0.f ? d_color.x : 0.f, raw.y >= 0.f ? d_color.y : 0.f,
                  raw.z >= 0.f ? d_color.z : 0.f};
  float length;
  const Vec3 dir = view_direction(mean, cam_center, length);
  float b[16];
  Vec3 db[16];
  sh_basis(degree, dir, b, db);
  Vec3 d_dir = {0.f, 0.f, 0.f};
  for (int k = 0; k < sh_count(degree); ++k) {
    d_sh[3 * k + 0] = b[k] * g.x;
    d_sh[3 * k + 1] = b[k] * g.y;
    d_sh[3 * k + 2] = b[k] * g.z;
    const float s = sh[3 * k + 0] * g.x + sh[3 * k + 1] * g.y + sh[3 * k + 2] * g.z;
    d_dir = d_dir + s * db[k];
  }
  // dir = v / |v|: dL/dv = (d_dir - dir (dir . d_dir)) / |v|
  return (1.f / length) * (d_dir - dot(dir, d_dir) * dir);
}

}  // namespace f3d
