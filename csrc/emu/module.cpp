// The emulator's Python module (test-only): the CUDA entry points of ops.h,
// executed by the SIMT emulator on CPU tensors, and the emulator's controls.
// One copy of this object is linked into every build variant (the kernels of
// csrc/cuda, or a mutated scratch copy of them); see csrc/emu/build.py.
#include <torch/extension.h>

#include "ops.h"
#include "runtime_api.h"

namespace py = pybind11;

namespace emu_selftest {
torch::Tensor run(const std::string& name, int which);  // selftest.cpp
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "feature3dgs CUDA kernels run on the CPU by the SIMT emulator (tests only)";
  m.def("preprocess_forward", &f3d::preprocess_forward_cuda, py::call_guard<py::gil_scoped_release>());
  m.def("preprocess_backward", &f3d::preprocess_backward_cuda, py::call_guard<py::gil_scoped_release>());
  m.def("rasterize_forward", &f3d::rasterize_forward_cuda, py::call_guard<py::gil_scoped_release>());
  m.def("rasterize_backward", &f3d::rasterize_backward_cuda, py::call_guard<py::gil_scoped_release>());
  m.def(
      "set_options",
      [](int order, uint64_t seed, bool race, int threads, int64_t stack_bytes) {
        emu::Options o;
        o.order = order;
        o.seed = seed;
        o.race = race;
        o.threads = threads;
        o.stack_bytes = stack_bytes;
        emu::set_options(o);
      },
      "order: 0 ascending, 1 descending, 2 seeded random thread (and block) order; race: shadow tracking; "
      "threads: OpenMP threads running blocks",
      py::arg("order") = 0, py::arg("seed") = 0, py::arg("race") = false, py::arg("threads") = 1,
      py::arg("stack_bytes") = 64 * 1024);
  m.def("options", []() {
    const emu::Options o = emu::options();
    py::dict d;
    d["order"] = o.order;
    d["seed"] = o.seed;
    d["race"] = o.race;
    d["threads"] = o.threads;
    d["stack_bytes"] = o.stack_bytes;
    return d;
  });
  m.def("stats", []() {
    const emu::Stats s = emu::stats();
    py::dict d;
    d["launches"] = s.launches;
    d["blocks"] = s.blocks;
    d["threads"] = s.threads;
    d["barriers"] = s.barriers;
    d["collectives"] = s.collectives;
    d["switches"] = s.switches;
    return d;
  });
  m.def("reset_stats", &emu::reset_stats);
  m.def("take_race_reports", &emu::take_race_reports);
  m.def("module_path", &emu::module_path);
  m.def("selftest", &emu_selftest::run, "runs one of the emulator's self-test kernels (selftest.cpp)",
        py::arg("name"), py::arg("which") = 0);
}
