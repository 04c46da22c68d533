// The SIMD blend kernels compiled for AVX2: the module feature3dgs._cpu_avx2
// (cpu/isa/isa_module.h).
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define F3D_SIMD_NS simd_avx2
#define F3D_SIMD_ISA "avx2"
#include "cpu/isa/isa_module.h"
