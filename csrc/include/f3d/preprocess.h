// One Gaussian's preprocess, forward and backward, as the CPU loop and the CUDA
// kernel both run it: read its parameters, project it, evaluate its SH colour,
// and write its outputs (or, backward, its parameter gradients). The backends
// differ only in how they iterate over g. Host and device share this file.
#pragma once

#include <cstdint>

#include "f3d/projection.h"
#include "f3d/sh.h"

namespace f3d {

F3D_HD Vec3 load3(const float* p) { return {p[0], p[1], p[2]}; }
F3D_HD Vec4 load4(const float* p) { return {p[0], p[1], p[2], p[3]}; }
F3D_HD void store3(float* p, Vec3 v) { p[0] = v.x; p[1] = v.y; p[2] = v.z; }

// Per-Gaussian inputs: means (N,3), quats (N,4), scales (N,3), sh (N,K_sh,3) or
// nullptr when the colours are not SH.
struct GaussianInputs {
  const float* means;
  const float* quats;
  const float* scales;
  const float* sh;
  int64_t K_sh;
};

// Forward outputs, zero-filled by the caller: a culled Gaussian keeps zeros and
// radius 0. colors / colors_raw (N,3) are nullptr without SH.
struct PreprocessOutputs {
  float* means2d;
  float* conics;
  float* depths;
  int* radii;
  float* colors;
  float* colors_raw;
};

// Gradients flowing in (from the rasterizer) and the saved forward values.
struct PreprocessGradInputs {
  const int* radii;
  const float* colors_raw;
  const float* d_means2d;
  const float* d_conics;
  const float* d_depths;
  const float* d_colors;
};

// Parameter gradients, zero-filled by the caller; d_sh is nullptr without SH.
struct PreprocessGradOutputs {
  float* d_means;
  float* d_quats;
  float* d_scales;
  float* d_sh;
};

// sh_degree < 0: no SH colours. With a compile-time constant degree (the CUDA
// kernels pass a template argument) the SH loops unroll after inlining.
F3D_HD void preprocess_forward_one(const Camera& cam, int64_t g, const GaussianInputs& in, int sh_degree,
                                   const PreprocessOutputs& out) {
  const Vec3 mean = load3(in.means + 3 * g);
  Projection P;
  if (!project_gaussian(cam, mean, load4(in.quats + 4 * g), load3(in.scales + 3 * g), P)) return;
  out.means2d[2 * g + 0] = P.mean2d.x;
  out.means2d[2 * g + 1] = P.mean2d.y;
  out.conics[3 * g + 0] = P.conic.a;
  out.conics[3 * g + 1] = P.conic.b;
  out.conics[3 * g + 2] = P.conic.c;
  out.depths[g] = P.p_cam.z;
  out.radii[g] = P.radius;
  if (sh_degree >= 0) {
    float length;
    Vec3 raw;
    const Vec3 dir = view_direction(mean, camera_center(cam), length);
    store3(out.colors + 3 * g, sh_to_color(sh_degree, in.sh + g * in.K_sh * 3, dir, raw));
    store3(out.colors_raw + 3 * g, raw);
  }
}

F3D_HD void preprocess_backward_one(const Camera& cam, int64_t g, const GaussianInputs& in, int sh_degree,
                                    const PreprocessGradInputs& gin, const PreprocessGradOutputs& out) {
  if (gin.radii[g] <= 0) return;
  const Vec3 mean = load3(in.means + 3 * g);
  const Vec3 scale = load3(in.scales + 3 * g);
  Projection P;
  if (!project_gaussian(cam, mean, load4(in.quats + 4 * g), scale, P)) return;
  ProjectionGrad pg;
  pg.mean2d = {gin.d_means2d[2 * g], gin.d_means2d[2 * g + 1]};
  pg.conic = {gin.d_conics[3 * g], gin.d_conics[3 * g + 1], gin.d_conics[3 * g + 2]};
  pg.depth = gin.d_depths[g];
  GaussianGrad gg = project_gaussian_backward(cam, scale, P, pg);
  if (sh_degree >= 0) {
    // Writes the first sh_count(sh_degree) rows of d_sh; the others stay zero.
    const Vec3 d_mean_sh = sh_to_color_backward(sh_degree, in.sh + g * in.K_sh * 3, mean, camera_center(cam),
                                                 load3(gin.colors_raw + 3 * g), load3(gin.d_colors + 3 * g),
                                                 out.d_sh + g * in.K_sh * 3);
    gg.mean = gg.mean + d_mean_sh;
  }
  store3(out.d_means + 3 * g, gg.mean);
  out.d_quats[4 * g + 0] = gg.quat.w;
  out.d_quats[4 * g + 1] = gg.quat.x;
  out.d_quats[4 * g + 2] = gg.quat.y;
  out.d_quats[4 * g + 3] = gg.quat.z;
  store3(out.d_scales + 3 * g, gg.scale);
}

}  // namespace f3d
