// torch bindings of the CUDA kernels (fastgen._C). The Python op layer has already validated
// shapes, dtypes and layouts with clear messages; the checks here guard the C++ boundary itself.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "launchers.h"

namespace {

#define FG_CHECK_CUDA(x) TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor")
#define FG_CHECK_DENSE(x) TORCH_CHECK((x).is_non_overlapping_and_dense(), #x " must be dense (contiguous or channels_last)")

int dtype_code(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return fastgen::kFloat32;
    case at::kHalf: return fastgen::kFloat16;
    case at::kBFloat16: return fastgen::kBFloat16;
    default: TORCH_CHECK(false, "fastgen CUDA kernels take float32, float16 or bfloat16, got ", x.scalar_type());
  }
}

void check_status(int status, const char* op) {
  TORCH_CHECK(status == 0, "fastgen.", op, ": CUDA launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(status)));
}

// out = sqrt(abar[t]) * x0 + sqrt(1 - abar[t]) * (noise if given else Philox(rng)); all tensors
// batch-major dense with x0's strides; t int64 (B,) (stride 0 allowed), abar float32 (T,).
void add_noise(const at::Tensor& x0, const c10::optional<at::Tensor>& noise, at::Tensor& out, const at::Tensor& t,
               const at::Tensor& abar, const c10::optional<at::Tensor>& rng) {
  FG_CHECK_CUDA(x0); FG_CHECK_DENSE(x0); FG_CHECK_CUDA(out); FG_CHECK_CUDA(t); FG_CHECK_CUDA(abar);
  TORCH_CHECK(out.strides() == x0.strides() && out.scalar_type() == x0.scalar_type(), "out must match x0");
  TORCH_CHECK(t.scalar_type() == at::kLong && t.dim() == 1 && t.size(0) == x0.size(0), "t must be int64 (B,)");
  TORCH_CHECK(abar.scalar_type() == at::kFloat && abar.is_contiguous(), "abar must be contiguous float32");
  TORCH_CHECK(noise.has_value() != rng.has_value(), "exactly one of noise and rng");
  if (noise) { FG_CHECK_CUDA(*noise); TORCH_CHECK(noise->strides() == x0.strides() && noise->scalar_type() == x0.scalar_type(), "noise must match x0"); }
  if (rng) { FG_CHECK_CUDA(*rng); TORCH_CHECK(rng->scalar_type() == at::kLong && rng->numel() == 2, "rng must be int64 [seed, offset]"); }
  const c10::cuda::CUDAGuard guard(x0.device());
  const int64_t batch = x0.size(0), per_sample = batch ? x0.numel() / batch : 0;
  check_status(fastgen::add_noise_cuda(dtype_code(x0), x0.data_ptr(), noise ? noise->data_ptr() : nullptr, out.data_ptr(),
                                       t.data_ptr<int64_t>(), t.stride(0), abar.data_ptr<float>(), abar.numel(),
                                       rng ? rng->data_ptr<int64_t>() : nullptr, batch, per_sample,
                                       at::cuda::getCurrentCUDAStream()),
               "add_noise");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("add_noise", &add_noise, "DDPM forward noising (see fastgen.ops.add_noise)");
}
