// Shared host/device basics: the qualifiers, the small vector types and the
// rendering constants. Every kernel (CPU and CUDA) includes this header, so the
// constants below are the one definition of the conventions in docs/conventions.md.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define F3D_HD __host__ __device__ __forceinline__
#else
#define F3D_HD inline
#endif

namespace f3d {

// Rendering constants (3DGS standard).
constexpr int kTileSize = 16;                    // pixels per tile side
constexpr float kAlphaMin = 1.0f / 255.0f;       // Gaussians below this alpha are skipped
constexpr float kAlphaMax = 0.99f;               // alpha is clamped to this
constexpr float kTransmittanceMin = 1e-4f;       // stop before T would fall below this
constexpr float kCovDilation = 0.3f;             // EWA low-pass filter added to cov2d
constexpr float kFrustumSlack = 1.3f;            // clamp of x/z, y/z in the Jacobian
constexpr int kMaxShDegree = 3;

struct Vec2 {
  float x, y;
};
struct Vec3 {
  float x, y, z;
};
struct Vec4 {
  float w, x, y, z;  // quaternion order: w first
};
// Symmetric 2x2 matrix [[a, b], [b, c]].
struct Sym2 {
  float a, b, c;
};
// Row-major 3x3 matrix.
struct Mat3 {
  float m[3][3];
};

F3D_HD Vec3 operator+(Vec3 p, Vec3 q) { return {p.x + q.x, p.y + q.y, p.z + q.z}; }
F3D_HD Vec3 operator-(Vec3 p, Vec3 q) { return {p.x - q.x, p.y - q.y, p.z - q.z}; }
F3D_HD Vec3 operator*(float s, Vec3 p) { return {s * p.x, s * p.y, s * p.z}; }
F3D_HD float dot(Vec3 p, Vec3 q) { return p.x * q.x + p.y * q.y + p.z * q.z; }

F3D_HD Vec3 matvec(const Mat3& A, Vec3 v) {
  return {A.m[0][0] * v.x + A.m[0][1] * v.y + A.m[0][2] * v.z,
          A.m[1][0] * v.x + A.m[1][1] * v.y + A.m[1][2] * v.z,
          A.m[2][0] * v.x + A.m[2][1] * v.y + A.m[2][2] * v.z};
}
// A^T v
F3D_HD Vec3 matvec_t(const Mat3& A, Vec3 v) {
  return {A.m[0][0] * v.x + A.m[1][0] * v.y + A.m[2][0] * v.z,
          A.m[0][1] * v.x + A.m[1][1] * v.y + A.m[2][1] * v.z,
          A.m[0][2] * v.x + A.m[1][2] * v.y + A.m[2][2] * v.z};
}

F3D_HD bool is_finite(float v) { return v - v == 0.0f; }  // false for NaN and +-Inf

// Camera: the rotation/translation of viewmat (world to camera, OpenCV axes) and
// the pinhole intrinsics, in pixels.
struct Camera {
  Mat3 R;
  Vec3 t;
  float fx, fy, cx, cy;
  int width, height;
  float near;
};

F3D_HD int div_round_up(int a, int b) { return (a + b - 1) / b; }

}  // namespace f3d

namespace f3d {

// Camera from a row-major world-to-camera 4x4 matrix and a 3x3 intrinsic matrix.
F3D_HD Camera make_camera(const float* viewmat, const float* K, int width, int height, float near) {
  Camera cam;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) cam.R.m[i][j] = viewmat[4 * i + j];
  cam.t = {viewmat[3], viewmat[7], viewmat[11]};
  cam.fx = K[0];
  cam.fy = K[4];
  cam.cx = K[2];
  cam.cy = K[5];
  cam.width = width;
  cam.height = height;
  cam.near = near;
  return cam;
}

// Camera centre in world space: -R^T t.
F3D_HD Vec3 camera_center(const Camera& cam) { return -1.f * matvec_t(cam.R, cam.t); }

}  // namespace f3d
