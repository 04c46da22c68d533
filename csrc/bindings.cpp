// pybind11 module feature3dgs._C: checks the tensors it is handed and
// dispatches on their device. The user-facing validation (with messages that
// name the argument) is in feature3dgs/rasterize.py; the checks here only keep
// a wrong internal call from reading out of bounds.
#include <omp.h>
#include <pthread.h>
#include <torch/extension.h>

#include "cpu/cpu_dispatch.h"
#include "cpu/host_block_cache.h"
#include "ops.h"

#define F3D_STRINGIFY(...) #__VA_ARGS__
#define F3D_EXPAND_STRINGIFY(...) F3D_STRINGIFY(__VA_ARGS__)

namespace f3d {
namespace {

void check_tensor(const torch::Tensor& t, const char* name, torch::ScalarType dtype,
                  const torch::Device& device) {
  TORCH_CHECK_VALUE(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == device, name, " must be on ", device, ", got ", t.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

bool on_cuda(const torch::Tensor& t) { return t.device().is_cuda(); }

[[noreturn]] void no_cuda() {
  TORCH_CHECK(false,
              "feature3dgs._C was built without CUDA kernels; rebuild with a CUDA toolkit and a "
              "CUDA build of torch, or render on CPU tensors");
}

PreprocessOut preprocess_forward(const torch::Tensor& means, const torch::Tensor& quats,
                                 const torch::Tensor& scales, const torch::Tensor& sh,
                                 int sh_degree, const torch::Tensor& viewmat,
                                 const torch::Tensor& K, int width, int height, float near) {
  const auto dev = means.device();
  for (auto [t, n] : {std::pair{&means, "means"}, {&quats, "quats"}, {&scales, "scales"},
                      {&sh, "sh"}, {&viewmat, "viewmat"}, {&K, "K"}})
    check_tensor(*t, n, torch::kFloat32, dev);
  TORCH_CHECK_VALUE(sh_degree >= 0 && sh_degree <= kMaxShDegree, "sh_degree out of range");
  if (on_cuda(means)) {
#ifdef F3D_WITH_CUDA
    return preprocess_forward_cuda(means, quats, scales, sh, sh_degree, viewmat, K, width, height, near);
#else
    no_cuda();
#endif
  }
  return preprocess_forward_cpu(means, quats, scales, sh, sh_degree, viewmat, K, width, height, near);
}

PreprocessGrads preprocess_backward(const torch::Tensor& means, const torch::Tensor& quats,
                                    const torch::Tensor& scales, const torch::Tensor& sh,
                                    int sh_degree, const torch::Tensor& viewmat,
                                    const torch::Tensor& K, int width, int height, float near,
                                    const torch::Tensor& radii, const torch::Tensor& colors_raw,
                                    const torch::Tensor& d_means2d, const torch::Tensor& d_conics,
                                    const torch::Tensor& d_depths, const torch::Tensor& d_colors) {
  const auto dev = means.device();
  check_tensor(radii, "radii", torch::kInt32, dev);
  for (auto [t, n] : {std::pair{&colors_raw, "colors_raw"}, {&d_means2d, "d_means2d"},
                      {&d_conics, "d_conics"}, {&d_depths, "d_depths"}, {&d_colors, "d_colors"}})
    check_tensor(*t, n, torch::kFloat32, dev);
  if (on_cuda(means)) {
#ifdef F3D_WITH_CUDA
    return preprocess_backward_cuda(means, quats, scales, sh, sh_degree, viewmat, K, width, height,
                                    near, radii, colors_raw, d_means2d, d_conics, d_depths, d_colors);
#else
    no_cuda();
#endif
  }
  return preprocess_backward_cpu(means, quats, scales, sh, sh_degree, viewmat, K, width, height,
                                 near, radii, colors_raw, d_means2d, d_conics, d_depths, d_colors);
}

RasterizeOut rasterize_forward(const torch::Tensor& means2d, const torch::Tensor& conics,
                               const torch::Tensor& colors, const torch::Tensor& opacities,
                               const torch::Tensor& depths, const torch::Tensor& features,
                               const torch::Tensor& radii, int width, int height) {
  const auto dev = means2d.device();
  for (auto [t, n] : {std::pair{&means2d, "means2d"}, {&conics, "conics"}, {&colors, "colors"},
                      {&opacities, "opacities"}, {&depths, "depths"}, {&features, "features"}})
    check_tensor(*t, n, torch::kFloat32, dev);
  check_tensor(radii, "radii", torch::kInt32, dev);
  TORCH_CHECK_VALUE(width > 0 && height > 0, "width and height must be positive");
  if (on_cuda(means2d)) {
#ifdef F3D_WITH_CUDA
    return rasterize_forward_cuda(means2d, conics, colors, opacities, depths, features, radii, width, height);
#else
    no_cuda();
#endif
  }
  return rasterize_forward_cpu(means2d, conics, colors, opacities, depths, features, radii, width, height);
}

RasterizeGrads rasterize_backward(
    const torch::Tensor& means2d, const torch::Tensor& conics, const torch::Tensor& colors,
    const torch::Tensor& opacities, const torch::Tensor& depths, const torch::Tensor& features,
    int width, int height, const torch::Tensor& final_T, const torch::Tensor& last_contrib,
    const torch::Tensor& tile_offsets, const torch::Tensor& gaussian_ids,
    const torch::Tensor& d_rgb, const torch::Tensor& d_features, const torch::Tensor& d_depth,
    const torch::Tensor& d_alpha) {
  const auto dev = means2d.device();
  for (auto [t, n] : {std::pair{&final_T, "final_T"}, {&d_rgb, "d_rgb"}, {&d_features, "d_features"},
                      {&d_depth, "d_depth"}, {&d_alpha, "d_alpha"}})
    check_tensor(*t, n, torch::kFloat32, dev);
  for (auto [t, n] : {std::pair{&last_contrib, "last_contrib"}, {&tile_offsets, "tile_offsets"},
                      {&gaussian_ids, "gaussian_ids"}})
    check_tensor(*t, n, torch::kInt32, dev);
  if (on_cuda(means2d)) {
#ifdef F3D_WITH_CUDA
    return rasterize_backward_cuda(means2d, conics, colors, opacities, depths, features, width,
                                   height, final_T, last_contrib, tile_offsets, gaussian_ids, d_rgb,
                                   d_features, d_depth, d_alpha);
#else
    no_cuda();
#endif
  }
  return rasterize_backward_cpu(means2d, conics, colors, opacities, depths, features, width, height,
                                final_T, last_contrib, tile_offsets, gaussian_ids, d_rgb, d_features,
                                d_depth, d_alpha);
}

// The CPU kernels of an ISA module (feature3dgs._cpu_avx2, _cpu_avx512): a capsule
// holding an f3d::CpuKernels (cpu/kernels_api.h).
void register_cpu_kernels_capsule(const pybind11::capsule& capsule) {
  auto* k = static_cast<const CpuKernels*>(PyCapsule_GetPointer(capsule.ptr(), "feature3dgs.cpu_kernels"));
  if (k == nullptr) throw pybind11::error_already_set();
  register_cpu_kernels(*k);
}

// rasterize_forward on CPU tensors, returning the pair counts of the binning and
// the blend with the outputs: (rgb, features, depth, alpha, stats dict).
pybind11::tuple cpu_forward_stats(const torch::Tensor& means2d, const torch::Tensor& conics,
                                  const torch::Tensor& colors, const torch::Tensor& opacities,
                                  const torch::Tensor& depths, const torch::Tensor& features,
                                  const torch::Tensor& radii, int width, int height) {
  const auto dev = means2d.device();
  TORCH_CHECK_VALUE(dev.is_cpu(), "cpu_forward_stats takes CPU tensors");
  for (auto [t, n] : {std::pair{&means2d, "means2d"}, {&conics, "conics"}, {&colors, "colors"},
                      {&opacities, "opacities"}, {&depths, "depths"}, {&features, "features"}})
    check_tensor(*t, n, torch::kFloat32, dev);
  check_tensor(radii, "radii", torch::kInt32, dev);
  TORCH_CHECK_VALUE(width > 0 && height > 0, "width and height must be positive");
  CpuRasterStats st;
  RasterizeOut out;
  {
    pybind11::gil_scoped_release no_gil;
    out = rasterize_forward_cpu_stats(means2d, conics, colors, opacities, depths, features, radii,
                                      width, height, &st);
  }
  pybind11::dict d;
  d["isa"] = st.isa;
  d["lanes"] = st.lanes;
  d["cull"] = st.cull;
  d["bbox_tile_pairs"] = st.bbox_tile_pairs;
  d["tile_pairs"] = st.tile_pairs;
  d["visited_pairs"] = st.visited;
  d["contributing_pairs"] = st.contributing;
  d["feature_gather_thread_s"] = st.feature_gather_s;
  d["feature_gemm_thread_s"] = st.feature_gemm_s;
  d["feature_gemm_lanes"] = st.feature_list_lanes;
  return pybind11::make_tuple(std::get<0>(out), std::get<1>(out), std::get<2>(out), std::get<3>(out), d);
}

// Brute-force check of the exact culling (f3d/cull.h) against f3d::eval_splat.
pybind11::dict cpu_check_culling(const torch::Tensor& means2d, const torch::Tensor& conics,
                                 const torch::Tensor& opacities, const torch::Tensor& radii,
                                 int width, int height, int lanes) {
  const auto dev = means2d.device();
  TORCH_CHECK_VALUE(dev.is_cpu(), "cpu_check_culling takes CPU tensors");
  for (auto [t, n] : {std::pair{&means2d, "means2d"}, {&conics, "conics"}, {&opacities, "opacities"}})
    check_tensor(*t, n, torch::kFloat32, dev);
  check_tensor(radii, "radii", torch::kInt32, dev);
  TORCH_CHECK_VALUE(width > 0 && height > 0, "width and height must be positive");
  TORCH_CHECK_VALUE(lanes == 1 || lanes == 4 || lanes == 8 || lanes == 16, "lanes must be 1, 4, 8 or 16");
  CpuCullCheck c;
  {
    pybind11::gil_scoped_release no_gil;
    c = check_cpu_culling(means2d, conics, opacities, radii, width, height, lanes);
  }
  pybind11::dict d;
  d["tiles_culled"] = c.tiles_culled;
  d["tiles_wrong"] = c.tiles_wrong;
  d["segments_culled"] = c.segments_culled;
  d["segments_wrong"] = c.segments_wrong;
  d["pixels_wrong"] = c.pixels_wrong;
  return d;
}

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef F3D_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#ifdef F3D_CUDA_ARCHS
  info["cuda_archs"] = std::string(F3D_EXPAND_STRINGIFY(F3D_CUDA_ARCHS));
#else
  info["cuda_archs"] = std::string();
#endif
  info["openmp_threads"] = omp_get_max_threads();
  info["tile_size"] = kTileSize;
  // The CPU blend kernels that a render would use now (FEATURE3DGS_CPU_ISA), those
  // registered and supported, and the switches (cpu/rasterize.cpp).
  info["cpu_isa"] = std::string(selected_cpu_kernels().isa);
  info["cpu_isa_lanes"] = selected_cpu_kernels().lanes;
  info["cpu_isas_available"] = cpu_isas_available();
  info["cpu_tile_culling"] = cpu_culling_enabled();
  info["cpu_deterministic_backward"] = cpu_deterministic_enabled();
  return info;
}

}  // namespace
}  // namespace f3d

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "feature3dgs compiled kernels (CPU always, CUDA when built with it)";
  // A forked child (a DataLoader worker) cannot use the parent's OpenMP thread pool
  // (GNU OpenMP hangs in it): like torch for its own pool, the child runs the CPU
  // kernels on one thread unless it sets another count itself.
  pthread_atfork(nullptr, nullptr, [] { omp_set_num_threads(1); });
  m.def("preprocess_forward", &f3d::preprocess_forward);
  m.def("preprocess_backward", &f3d::preprocess_backward);
  m.def("rasterize_forward", &f3d::rasterize_forward);
  m.def("rasterize_backward", &f3d::rasterize_backward);
  m.def("build_info", &f3d::build_info);
  m.def("cpu_isa_supported", [](const std::string& isa) { return f3d::cpu_supports(isa); });
  m.def("register_cpu_kernels", &f3d::register_cpu_kernels_capsule);
  m.def("cpu_forward_stats", &f3d::cpu_forward_stats);
  m.def("cpu_check_culling", &f3d::cpu_check_culling);
  m.def("cpu_cache_info", []() {
    const f3d::HostBlockCacheInfo c = f3d::host_block_cache_info();
    pybind11::dict d;
    d["cap_bytes"] = c.cap_bytes;
    d["cached_bytes"] = c.cached_bytes;
    d["cached_blocks"] = c.cached_blocks;
    d["hits"] = c.hits;
    d["misses"] = c.misses;
    return d;
  });
  m.def("cpu_cache_clear", &f3d::host_block_cache_clear);
  m.def(
      "cpu_fma_gflops",
      [](double seconds) {
        TORCH_CHECK_VALUE(seconds > 0 && seconds <= 60, "cpu_fma_gflops: seconds must be in (0, 60], got ", seconds);
        const f3d::CpuKernels k = f3d::selected_cpu_kernels();
        pybind11::gil_scoped_release no_gil;
        return k.fma_gflops(seconds);
      },
      "The fp32 multiply-add throughput (GFLOP/s) of the CPU kernels that FEATURE3DGS_CPU_ISA selects, on "
      "all OpenMP threads, measured over about `seconds`.");
}
