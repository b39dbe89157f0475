// sparseopt_kernels._C: the module definition. Each kernel family's binding lives in its own
// file (csrc/torch/<family>.cpp) and registers its functions here.
#include "common.h"

#ifndef SPARSEOPT_TORCH_VERSION
#define SPARSEOPT_TORCH_VERSION "unknown"
#endif
#ifndef SPARSEOPT_CUDA_VERSION
#define SPARSEOPT_CUDA_VERSION ""
#endif
#ifndef SPARSEOPT_CUDA_ARCHS
#define SPARSEOPT_CUDA_ARCHS ""
#endif

namespace sparseopt {
namespace binding {
namespace {

py::dict build_info() {
  py::dict info;
  info["torch_version"] = SPARSEOPT_TORCH_VERSION;
#ifdef SPARSEOPT_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = SPARSEOPT_CUDA_VERSION;
  info["cuda_archs"] = SPARSEOPT_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_version"] = "";
  info["cuda_archs"] = "";
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["cpu_isa"] = cpu::cpu_isa();
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
  return info;
}

}  // namespace

}  // namespace binding
}  // namespace sparseopt

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sparseopt_kernels native kernels (C++ CPU, CUDA when built with it)";
  m.def("build_info", &sparseopt::binding::build_info, "How this extension was built");
  sparseopt::binding::register_mirror_step(m);
  sparseopt::binding::register_masked_adam(m);
  sparseopt::binding::register_row_scale(m);
  sparseopt::binding::register_block_sparse(m);
  sparseopt::binding::register_tensor_lists(m);
}
