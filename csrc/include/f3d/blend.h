// Per-pixel alpha of one Gaussian, and its backward. The front-to-back loop that
// uses these lives in the CPU and CUDA render kernels, which share this math.
#pragma once

#include "f3d/common.h"

namespace f3d {

// Pixel (col, row) has its centre at (col + 0.5, row + 0.5).
F3D_HD Vec2 pixel_center(int col, int row) { return {(float)col + 0.5f, (float)row + 0.5f}; }

// What one Gaussian does at one pixel.
struct Splat {
  float alpha;  // min(kAlphaMax, opacity * G)
  float G;      // exp(power)
  float dx, dy; // pixel centre - mean2d
  bool clamped; // alpha hit kAlphaMax
};

// Returns false when the Gaussian is skipped at this pixel: the exponent is
// positive (a non positive-definite conic) or alpha < kAlphaMin.
F3D_HD bool eval_splat(Vec2 mean2d, Sym2 conic, float opacity, Vec2 pixel, Splat& s) {
  s.dx = pixel.x - mean2d.x;
  s.dy = pixel.y - mean2d.y;
  const float power =
      -0.5f * (conic.a * s.dx * s.dx + conic.c * s.dy * s.dy) - conic.b * s.dx * s.dy;
  if (power > 0.f) return false;
  s.G = expf(power);
  const float a = opacity * s.G;
  s.clamped = a > kAlphaMax;
  s.alpha = s.clamped ? kAlphaMax : a;
  return s.alpha >= kAlphaMin;
}

// Gradients of one splat's parameters given dL/dalpha.
struct SplatGrad {
  Vec2 mean2d;
  Sym2 conic;
  float opacity;
};

F3D_HD SplatGrad eval_splat_backward(const Splat& s, Sym2 conic, float opacity, float d_alpha) {
  SplatGrad g = {{0.f, 0.f}, {0.f, 0.f, 0.f}, 0.f};
  if (s.clamped) return g;
  g.opacity = d_alpha * s.G;
  const float d_power = d_alpha * opacity * s.G;
  g.conic = {-0.5f * s.dx * s.dx * d_power, -s.dx * s.dy * d_power, -0.5f * s.dy * s.dy * d_power};
  // d = pixel - mean, d power / d d = -(conic d), so d power / d mean = conic d.
  g.mean2d = {d_power * (conic.a * s.dx + conic.b * s.dy), d_power * (conic.b * s.dx + conic.c * s.dy)};
  return g;
}

}  // namespace f3d
