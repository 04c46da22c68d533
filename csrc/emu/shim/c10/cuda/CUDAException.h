// Emulator shim of c10/cuda/CUDAException.h: the error-check macros. A failed
// emulated launch already threw from emu::launch, so the launch check has
// nothing left to do.
#pragma once

#include <c10/util/Exception.h>

#define C10_CUDA_CHECK(EXPR)                                                           \
  do {                                                                                 \
    const cudaError_t f3d_emu_err = (EXPR);                                            \
    TORCH_CHECK(f3d_emu_err == cudaSuccess, "emulated CUDA error ", (int)f3d_emu_err, \
                " in ", #EXPR);                                                        \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
