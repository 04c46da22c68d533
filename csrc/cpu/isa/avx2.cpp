// The SIMD blend kernels (cpu/blend_simd.h) compiled for AVX2: a Python extension
// module of its own (feature3dgs._cpu_avx2), built with the -m flags of
// feature3dgs/_build_config.py ISA_MODULES, so that no AVX2 instruction can reach
// code that other paths run. Its one attribute, `kernels`, is a capsule holding an
// f3d::CpuKernels, which feature3dgs/_backend.py hands to
// feature3dgs._C.register_cpu_kernels; feature3dgs._C runs them only when
// the CPU supports AVX2 (cpu/rasterize.cpp).
#include <Python.h>

#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define F3D_SIMD_NS simd_avx2
#define F3D_SIMD_ISA "avx2"
#include "cpu/blend_simd.h"

#define F3D_CAT2(a, b) a##b
#define F3D_CAT(a, b) F3D_CAT2(a, b)

namespace {

f3d::CpuKernels g_kernels;  // filled by the module's init: nothing of this ISA runs at load time

PyModuleDef g_module = {PyModuleDef_HEAD_INIT, "feature3dgs._cpu_avx2",
                        "feature3dgs CPU blend kernels compiled for AVX2", -1, nullptr};

}  // namespace

PyMODINIT_FUNC F3D_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  // Imported only after feature3dgs._C.cpu_isa_supported("avx2") (feature3dgs/_backend.py).
  g_kernels = f3d::simd_avx2::simd_kernels();
  PyObject* m = PyModule_Create(&g_module);
  if (m == nullptr) return nullptr;
  PyObject* capsule = PyCapsule_New(&g_kernels, "feature3dgs.cpu_kernels", nullptr);
  if (capsule == nullptr || PyModule_AddObject(m, "kernels", capsule) < 0) {
    Py_XDECREF(capsule);
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
