// Per-Gaussian projection: 3D mean, rotation and scale to the 2D mean, conic
// (inverse 2D covariance), depth, screen radius and touched tile rectangle; and
// its exact backward. Host and device share this file.
#pragma once

#include "f3d/common.h"

namespace f3d {

// Rotation matrix of the *normalised* quaternion q = (w, x, y, z).
F3D_HD Mat3 quat_to_rotmat(Vec4 q) {
  const float w = q.w, x = q.x, y = q.y, z = q.z;
  Mat3 R;
  R.m[0][0] = 1.f - 2.f * (y * y + z * z);
  R.m[0][1] = 2.f * (x * y - w * z);
  R.m[0][2] = 2.f * (x * z + w * y);
  R.m[1][0] = 2.f * (x * y + w * z);
  R.m[1][1] = 1.f - 2.f * (x * x + z * z);
  R.m[1][2] = 2.f * (y * z - w * x);
  R.m[2][0] = 2.f * (x * z - w * y);
  R.m[2][1] = 2.f * (y * z + w * x);
  R.m[2][2] = 1.f - 2.f * (x * x + y * y);
  return R;
}

// dL/dq for the normalised quaternion q, given G = dL/dR.
F3D_HD Vec4 quat_to_rotmat_backward(Vec4 q, const Mat3& G) {
  const float w = q.w, x = q.x, y = q.y, z = q.z;
  const auto& g = G.m;
  Vec4 d;
  d.w = 2.f * (-z * g[0][1] + y * g[0][2] + z * g[1][0] - x * g[1][2] - y * g[2][0] + x * g[2][1]);
  d.x = 2.f * (y * g[0][1] + z * g[0][2] + y * g[1][0] - 2.f * x * g[1][1] - w * g[1][2] +
               z * g[2][0] + w * g[2][1] - 2.f * x * g[2][2]);
  d.y = 2.f * (-2.f * y * g[0][0] + x * g[0][1] + w * g[0][2] + x * g[1][0] + z * g[1][2] -
               w * g[2][0] + z * g[2][1] - 2.f * y * g[2][2]);
  d.z = 2.f * (-2.f * z * g[0][0] - w * g[0][1] + x * g[0][2] + w * g[1][0] - 2.f * z * g[1][1] +
               y * g[1][2] + x * g[2][0] + y * g[2][1]);
  return d;
}

F3D_HD Vec4 normalize_quat(Vec4 q, float& norm) {
  norm = sqrtf(q.w * q.w + q.x * q.x + q.y * q.y + q.z * q.z);
  const float inv = 1.f / norm;
  return {q.w * inv, q.x * inv, q.y * inv, q.z * inv};
}

// Backward of qn = q / |q|: dL/dq from dL/dqn.
F3D_HD Vec4 normalize_quat_backward(Vec4 qn, float norm, Vec4 dqn) {
  const float proj = qn.w * dqn.w + qn.x * dqn.x + qn.y * dqn.y + qn.z * dqn.z;
  const float inv = 1.f / norm;
  return {(dqn.w - qn.w * proj) * inv, (dqn.x - qn.x * proj) * inv, (dqn.y - qn.y * proj) * inv,
          (dqn.z - qn.z * proj) * inv};
}

// Everything the forward derives for one Gaussian and the backward reuses.
struct Projection {
  Vec3 p_cam;    // mean in camera space
  Vec2 mean2d;   // pixels
  Sym2 cov2d;    // with the low-pass dilation
  Sym2 conic;    // inverse of cov2d
  float ux, uy;  // x/z, y/z before the Jacobian clamp
  float lim_x, lim_y;
  Mat3 M;        // R(q) diag(s)
  Mat3 Rq;
  Vec4 qn;
  float qnorm;
  int radius;
};

// Covariance factor M = R(q) diag(s): Sigma = M M^T.
F3D_HD void scaled_rotation(Vec4 quat, Vec3 scale, Projection& P) {
  P.qn = normalize_quat(quat, P.qnorm);
  P.Rq = quat_to_rotmat(P.qn);
  const float s[3] = {scale.x, scale.y, scale.z};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) P.M.m[i][j] = P.Rq.m[i][j] * s[j];
}

// The Jacobian rows of the perspective projection, with the clamped x/z, y/z.
// J = [[j00, 0, j02], [0, j11, j12]].
struct Jacobian {
  float j00, j02, j11, j12;
};

F3D_HD float clampf(float v, float lo, float hi) { return fminf(fmaxf(v, lo), hi); }

F3D_HD Jacobian projection_jacobian(const Camera& cam, const Projection& P) {
  const float z = P.p_cam.z;
  const float uxc = clampf(P.ux, -P.lim_x, P.lim_x);
  const float uyc = clampf(P.uy, -P.lim_y, P.lim_y);
  return {cam.fx / z, -cam.fx * uxc / z, cam.fy / z, -cam.fy * uyc / z};
}

// T = J W, a 2x3 matrix (rows t0, t1).
F3D_HD void jacobian_times_rotation(const Jacobian& J, const Mat3& W, Vec3& t0, Vec3& t1) {
  t0 = {J.j00 * W.m[0][0] + J.j02 * W.m[2][0], J.j00 * W.m[0][1] + J.j02 * W.m[2][1],
        J.j00 * W.m[0][2] + J.j02 * W.m[2][2]};
  t1 = {J.j11 * W.m[1][0] + J.j12 * W.m[2][0], J.j11 * W.m[1][1] + J.j12 * W.m[2][1],
        J.j11 * W.m[1][2] + J.j12 * W.m[2][2]};
}

// Sigma v where Sigma = M M^T.
F3D_HD Vec3 sigma_times(const Mat3& M, Vec3 v) { return matvec(M, matvec_t(M, v)); }

// Tile rectangle [x0, x1) x [y0, y1) touched by a Gaussian at mean2d with radius r.
F3D_HD void tile_rect(Vec2 mean2d, int radius, int grid_x, int grid_y, int& x0, int& y0, int& x1,
                      int& y1) {
  const float r = (float)radius;
  const float inv = 1.f / (float)kTileSize;
  x0 = (int)clampf(floorf((mean2d.x - r) * inv), 0.f, (float)grid_x);
  x1 = (int)clampf(floorf((mean2d.x + r) * inv) + 1.f, 0.f, (float)grid_x);
  y0 = (int)clampf(floorf((mean2d.y - r) * inv), 0.f, (float)grid_y);
  y1 = (int)clampf(floorf((mean2d.y + r) * inv) + 1.f, 0.f, (float)grid_y);
}

// Projects one Gaussian. Returns false (culled) when it lies behind the near
// plane, its parameters are not finite, its 2D covariance is degenerate, or it
// touches no tile. On success fills P (radius > 0).
F3D_HD bool project_gaussian(const Camera& cam, Vec3 mean, Vec4 quat, Vec3 scale, Projection& P) {
  P.radius = 0;
  P.p_cam = matvec(cam.R, mean) + cam.t;
  const float z = P.p_cam.z;
  if (!(z >= cam.near) || !is_finite(z) || !is_finite(P.p_cam.x) || !is_finite(P.p_cam.y))
    return false;
  scaled_rotation(quat, scale, P);
  P.ux = P.p_cam.x / z;
  P.uy = P.p_cam.y / z;
  P.lim_x = kFrustumSlack * 0.5f * (float)cam.width / cam.fx;
  P.lim_y = kFrustumSlack * 0.5f * (float)cam.height / cam.fy;
  const Jacobian J = projection_jacobian(cam, P);
  Vec3 t0, t1;
  jacobian_times_rotation(J, cam.R, t0, t1);
  const Vec3 st0 = sigma_times(P.M, t0), st1 = sigma_times(P.M, t1);
  P.cov2d = {dot(t0, st0) + kCovDilation, dot(t0, st1), dot(t1, st1) + kCovDilation};
  const float det = P.cov2d.a * P.cov2d.c - P.cov2d.b * P.cov2d.b;
  if (!(det > 0.f) || !is_finite(det)) return false;
  const float inv_det = 1.f / det;
  P.conic = {P.cov2d.c * inv_det, -P.cov2d.b * inv_det, P.cov2d.a * inv_det};
  const float mid = 0.5f * (P.cov2d.a + P.cov2d.c);
  const float lambda_max = mid + sqrtf(fmaxf(mid * mid - det, 0.f));
  const float radius = fminf(ceilf(3.f * sqrtf(lambda_max)), 1e8f);
  if (!(radius > 0.f)) return false;
  P.mean2d = {cam.fx * P.ux + cam.cx, cam.fy * P.uy + cam.cy};
  if (!is_finite(P.mean2d.x) || !is_finite(P.mean2d.y)) return false;
  P.radius = (int)radius;
  int x0, y0, x1, y1;
  const int gx = div_round_up(cam.width, kTileSize), gy = div_round_up(cam.height, kTileSize);
  tile_rect(P.mean2d, P.radius, gx, gy, x0, y0, x1, y1);
  if ((x1 - x0) * (y1 - y0) <= 0) {
    P.radius = 0;
    return false;
  }
  return true;
}

// Gradients of the 2D quantities a Gaussian produces.
struct ProjectionGrad {
  Vec2 mean2d;
  Sym2 conic;   // dL/d(A, B, C) with B the single off-diagonal scalar
  float depth;
};

// Gradients of the 3D parameters. d_mean is in world space.
struct GaussianGrad {
  Vec3 mean;
  Vec4 quat;
  Vec3 scale;
};

// Backward of project_gaussian (P must come from a successful forward).
F3D_HD GaussianGrad project_gaussian_backward(const Camera& cam, Vec3 scale, const Projection& P,
                                              const ProjectionGrad& g) {
  const float a = P.cov2d.a, b = P.cov2d.b, c = P.cov2d.c;
  const float det = a * c - b * b;
  const float inv_det2 = 1.f / (det * det);
  const float gA = g.conic.a, gB = g.conic.b, gC = g.conic.c;
  // conic = (c, -b, a) / det  ->  dL/d(a, b, c)
  const float ga = (-c * c * gA + b * c * gB - b * b * gC) * inv_det2;
  const float gb = (2.f * b * c * gA - (a * c + b * b) * gB + 2.f * a * b * gC) * inv_det2;
  const float gc = (-b * b * gA + a * b * gB - a * a * gC) * inv_det2;

  // cov2d = T Sigma T^T with G2 = [[ga, gb/2], [gb/2, gc]].
  const Jacobian J = projection_jacobian(cam, P);
  Vec3 t0, t1;
  jacobian_times_rotation(J, cam.R, t0, t1);
  const Vec3 u0 = ga * t0 + (0.5f * gb) * t1;  // rows of G2 T
  const Vec3 u1 = (0.5f * gb) * t0 + gc * t1;
  // dL/dSigma = T^T G2 T = t0 u0^T + t1 u1^T (symmetric)
  Mat3 dSigma;
  const float t0a[3] = {t0.x, t0.y, t0.z}, t1a[3] = {t1.x, t1.y, t1.z};
  const float u0a[3] = {u0.x, u0.y, u0.z}, u1a[3] = {u1.x, u1.y, u1.z};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) dSigma.m[i][j] = t0a[i] * u0a[j] + t1a[i] * u1a[j];
  // dL/dT = 2 G2 T Sigma
  const Vec3 dT0 = 2.f * sigma_times(P.M, u0), dT1 = 2.f * sigma_times(P.M, u1);

  // Sigma = M M^T: dL/dM = 2 dSigma M; M = Rq diag(s).
  const float s[3] = {scale.x, scale.y, scale.z};
  Mat3 dRq;
  float ds[3] = {0.f, 0.f, 0.f};
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      float dM = 0.f;
      for (int k = 0; k < 3; ++k) dM += dSigma.m[i][k] * P.M.m[k][j];
      dM *= 2.f;
      dRq.m[i][j] = dM * s[j];
      ds[j] += dM * P.Rq.m[i][j];
    }
  }
  GaussianGrad out;
  out.scale = {ds[0], ds[1], ds[2]};
  out.quat = normalize_quat_backward(P.qn, P.qnorm, quat_to_rotmat_backward(P.qn, dRq));

  // T = J W: dL/dJ = dL/dT W^T (only the non-zero entries of J).
  const Mat3& W = cam.R;
  const float dj00 = dT0.x * W.m[0][0] + dT0.y * W.m[0][1] + dT0.z * W.m[0][2];
  const float dj02 = dT0.x * W.m[2][0] + dT0.y * W.m[2][1] + dT0.z * W.m[2][2];
  const float dj11 = dT1.x * W.m[1][0] + dT1.y * W.m[1][1] + dT1.z * W.m[1][2];
  const float dj12 = dT1.x * W.m[2][0] + dT1.y * W.m[2][1] + dT1.z * W.m[2][2];

  const float x = P.p_cam.x, y = P.p_cam.y, z = P.p_cam.z;
  const float iz = 1.f / z, iz2 = iz * iz;
  const float uxc = clampf(P.ux, -P.lim_x, P.lim_x);
  const float uyc = clampf(P.uy, -P.lim_y, P.lim_y);
  float dx = 0.f, dy = 0.f, dz = 0.f;
  // J00 = fx / z, J02 = -fx uxc / z (and likewise in y).
  dz += -cam.fx * iz2 * dj00 + cam.fx * uxc * iz2 * dj02;
  dz += -cam.fy * iz2 * dj11 + cam.fy * uyc * iz2 * dj12;
  float dux = -cam.fx * iz * dj02;  // through the clamp
  float duy = -cam.fy * iz * dj12;
  if (!(P.ux >= -P.lim_x && P.ux <= P.lim_x)) dux = 0.f;
  if (!(P.uy >= -P.lim_y && P.uy <= P.lim_y)) duy = 0.f;
  // mean2d = (fx ux + cx, fy uy + cy) with the unclamped ux, uy.
  dux += cam.fx * g.mean2d.x;
  duy += cam.fy * g.mean2d.y;
  dx += dux * iz;
  dy += duy * iz;
  dz += -(dux * x + duy * y) * iz2;
  dz += g.depth;
  out.mean = matvec_t(cam.R, Vec3{dx, dy, dz});
  return out;
}

}  // namespace f3d
