// The SIMD blend kernels compiled for AVX512: the module feature3dgs._cpu_avx512
// (cpu/isa/isa_module.h).
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define F3D_SIMD_NS simd_avx512
#define F3D_SIMD_ISA "avx512"
#include "cpu/isa/isa_module.h"
