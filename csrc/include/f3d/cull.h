// Exact culling of (Gaussian, pixel set) pairs: proves that a Gaussian's alpha is
// below kAlphaMin at every pixel centre of a rectangle (a tile, a row segment), so
// that the blend, which would skip it at each of those pixels, can skip the pair
// without changing a single output bit. Used by the CPU binning and blend and by
// the CUDA binning.
//
// The blend (f3d/blend.h) uses a Gaussian at pixel d = centre - mean2d iff
//   power = -0.5 (a dx^2 + c dy^2) - b dx dy <= 0   and   fl(o * E(power)) >= kAlphaMin
// in float, with E the exp of the path (glibc expf, ATen's vectorised exp, CUDA's
// fast-math __expf); the 0.99 clamp only lowers alpha and 0.99 > kAlphaMin, so it
// never makes a pair contribute. Write q(d) = a dx^2 + 2 b dx dy + c dy^2 (= -2 power).
// The bound is conservative against the float evaluation:
//  - for a positive-definite conic, |b| <= sqrt(ac), so the terms' magnitudes
//    |a| dx^2 + 2|b||dx dy| + |c| dy^2 are at most 2 (a dx^2 + c dy^2); the float
//    power (a few roundings of those terms, FMA-contracted or not, and the rounding
//    of dx, dy) is within kCullFormSlack of that sum, so q_float >= q'(d) with the
//    shrunk form q' = a (1 - 2 s) dx^2 + 2 b dx dy + c (1 - 2 s) dy^2;
//  - E(x) <= exp(x) (1 + 1e-5) on [-6, 0] for all three exps, and fl(o * E) adds
//    one rounding, so a contributing pixel has q'(d) <= t = 2 ln(o / kAlphaMin) + slack.
// A pixel set is culled when min q' over the rectangle spanned by its pixel
// centres exceeds t, computed in double (exactly the minimum of a convex quadratic
// over a rectangle: the centre if inside, else the least of the four edge minima).
// Anything the bound cannot judge (non-finite values, a conic that is not positive
// definite after shrinking) is kept, and the blend decides as before.
#pragma once

#include "f3d/common.h"

namespace f3d {

constexpr double kCullFormSlack = 1e-5;       // relative, on the quadratic form (~170 float ulp)
constexpr double kCullThresholdSlack = 1e-4;  // additive, on 2 ln(o / kAlphaMin) (exp and product rounding)

enum CullKind : int {
  kCullKeep = 0,  // no bound: may contribute anywhere
  kCullNone = 1,  // contributes at no pixel (opacity below kAlphaMin)
  kCullTest = 2,  // contributes only where q'(d) <= t
};

struct CullSplat {
  double mx, my;  // mean2d, pixels
  double a, b, c; // shrunk conic q'
  double t;       // threshold on q'
  double kx, ky;  // -b / a and -b / c: the minimiser along x for a fixed dy, along y for a fixed dx
  double ry;      // half-height of the ellipse q' <= t
  int kind;
};

F3D_HD double cull_clamp(double v, double lo, double hi) { return v < lo ? lo : (v > hi ? hi : v); }

F3D_HD CullSplat make_cull_splat(Vec2 mean2d, Sym2 conic, float opacity) {
  CullSplat s;
  s.mx = mean2d.x;
  s.my = mean2d.y;
  s.a = s.b = s.c = s.t = s.kx = s.ky = s.ry = 0.0;
  s.kind = kCullKeep;
  const double o = opacity;
  if (!(o == o)) return s;  // NaN: keep (the blend skips it anyway)
  if (o <= 0.0) {           // alpha = o G <= 0 < kAlphaMin everywhere
    s.kind = kCullNone;
    return s;
  }
  const double t = 2.0 * (log(o) - log((double)kAlphaMin)) + kCullThresholdSlack;
  if (t < 0.0) {  // even at the centre (q' >= 0 when positive definite, else the blend's power > 0)
    s.kind = kCullNone;
    return s;
  }
  const double a = (double)conic.a * (1.0 - 2.0 * kCullFormSlack);
  const double b = conic.b;
  const double c = (double)conic.c * (1.0 - 2.0 * kCullFormSlack);
  const double det = a * c - b * b;
  const bool finite = is_finite(mean2d.x) && is_finite(mean2d.y) && is_finite(conic.a) &&
                      is_finite(conic.b) && is_finite(conic.c) && t - t == 0.0;
  if (!finite || !(a > 0.0) || !(c > 0.0) || !(det > 0.0)) return s;
  s.a = a;
  s.b = b;
  s.c = c;
  s.t = t;
  s.kx = -b / a;
  s.ky = -b / c;
  // max |dy| over q' <= t is sqrt(t a / det); widened by a relative 1e-6 and 1e-3 px.
  s.ry = sqrt(t * a / det) * (1.0 + 1e-6) + 1e-3;
  s.kind = kCullTest;
  return s;
}

F3D_HD double cull_form(const CullSplat& s, double dx, double dy) {
  return s.a * dx * dx + 2.0 * s.b * dx * dy + s.c * dy * dy;
}

// Whether the Gaussian may contribute at some pixel centre (x, y) with dy = y - my
// fixed and x - mx in [dx0, dx1].
F3D_HD bool cull_segment_may_contribute(const CullSplat& s, double dy, double dx0, double dx1) {
  if (s.kind != kCullTest) return s.kind == kCullKeep;
  const double dx = cull_clamp(s.kx * dy, dx0, dx1);
  return cull_form(s, dx, dy) <= s.t;
}

// Whether the Gaussian may contribute at some pixel centre in [x0, x1] x [y0, y1]
// (pixel-centre coordinates, inclusive).
F3D_HD bool cull_rect_may_contribute(const CullSplat& s, double x0, double x1, double y0, double y1) {
  if (s.kind != kCullTest) return s.kind == kCullKeep;
  const double dx0 = x0 - s.mx, dx1 = x1 - s.mx, dy0 = y0 - s.my, dy1 = y1 - s.my;
  if (dx0 <= 0.0 && dx1 >= 0.0 && dy0 <= 0.0 && dy1 >= 0.0) return true;  // mean inside
  if (dy0 > s.ry || dy1 < -s.ry) return false;  // beyond the ellipse's height
  double m = cull_form(s, dx0, cull_clamp(s.ky * dx0, dy0, dy1));
  m = fmin(m, cull_form(s, dx1, cull_clamp(s.ky * dx1, dy0, dy1)));
  m = fmin(m, cull_form(s, cull_clamp(s.kx * dy0, dx0, dx1), dy0));
  m = fmin(m, cull_form(s, cull_clamp(s.kx * dy1, dx0, dx1), dy1));
  return m <= s.t;
}

// Whether the Gaussian may contribute at some pixel of tile (tx, ty) of an image
// width x height (tiles of kTileSize, clipped to the image).
F3D_HD bool cull_tile_may_contribute(const CullSplat& s, int tx, int ty, int width, int height) {
  const int x0 = tx * kTileSize, y0 = ty * kTileSize;
  const int x1 = x0 + kTileSize < width ? x0 + kTileSize : width;    // exclusive
  const int y1 = y0 + kTileSize < height ? y0 + kTileSize : height;
  return cull_rect_may_contribute(s, x0 + 0.5, x1 - 0.5, y0 + 0.5, y1 - 0.5);
}

}  // namespace f3d
