// Force-included before every csrc/cuda/*.cu file the emulator compiles (and
// precompiled once per build): torch first, so that the CUDA builtin macros of
// emu.h never touch its headers, then the builtins and the shims of cub and
// c10's CUDA headers (found first on the include path: csrc/emu/shim).
#pragma once

#include <torch/types.h>

#include "emu.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cub/cub.cuh>
