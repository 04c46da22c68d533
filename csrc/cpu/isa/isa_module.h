// The body of one ISA module (csrc/cpu/isa/<isa>.cpp): the SIMD blend kernels of
// cpu/blend_simd.h compiled for that ISA, as a Python extension module of its own
// (feature3dgs._cpu_<isa>, built with the -m flags of feature3dgs/rendering/_build.py
// ISA_MODULES), so that no instruction of the ISA can reach code that other paths run. Its
// one attribute, `kernels`, is a capsule holding an f3d::CpuKernels, which
// feature3dgs/rendering/_backend.py hands to feature3dgs._C.register_cpu_kernels;
// feature3dgs._C runs them only when the CPU supports the ISA (cpu/rasterize.cpp).
//
// The including file defines CPU_CAPABILITY / CPU_CAPABILITY_<ISA> (ATen's Vectorized
// selects its implementation from them), F3D_SIMD_NS (the kernels' namespace) and
// F3D_SIMD_ISA (the ISA's name as a string literal).
#pragma once
#include <Python.h>

#include "cpu/blend_simd.h"

#define F3D_CAT2(a, b) a##b
#define F3D_CAT(a, b) F3D_CAT2(a, b)

namespace {

f3d::CpuKernels g_kernels;  // filled by the module's init: nothing of this ISA runs at load time

PyModuleDef g_module = {PyModuleDef_HEAD_INIT, "feature3dgs._cpu_" F3D_SIMD_ISA,
                        "feature3dgs CPU blend kernels compiled for " F3D_SIMD_ISA, -1, nullptr};

}  // namespace

PyMODINIT_FUNC F3D_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  // Imported only after feature3dgs._C.cpu_isa_supported(F3D_SIMD_ISA).
  g_kernels = f3d::F3D_SIMD_NS::simd_kernels();
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
