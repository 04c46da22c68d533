// The SIMD blend kernels for the baseline instruction set of the build (SSE2 on
// x86-64, NEON on aarch64), compiled into feature3dgs._C with its ordinary flags:
// ATen's generic Vectorized<float> (8 lanes). The AVX2 and AVX-512 versions of the
// same code are separate modules (isa/*.cpp).
#define F3D_SIMD_NS simd_baseline
#define F3D_SIMD_ISA "baseline"
#include "cpu/blend_simd.h"
