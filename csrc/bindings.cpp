// torch bindings of the CUDA kernels (fastgen._C). The Python op layer has already validated
// shapes, dtypes and layouts with clear messages; the checks here guard the C++ boundary itself.
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
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
                                       c10::cuda::getCurrentCUDAStream()),
               "add_noise");
}

// One reverse-diffusion step: sample, model_output, noise and out share dtype and strides
// (batch-major dense); prev_x0 has those strides in that dtype or float32; x0 float32; index int64
// (B,) (stride 0 allowed); coefs contiguous float32 (N, 10); clip_range None for no clamp.
void sampling_step(const at::Tensor& sample, const at::Tensor& model_output, const c10::optional<at::Tensor>& prev_x0,
                   const c10::optional<at::Tensor>& noise, at::Tensor& out, const c10::optional<at::Tensor>& x0,
                   const at::Tensor& index, const at::Tensor& coefs, const c10::optional<at::Tensor>& rng,
                   c10::optional<double> clip_range) {
  FG_CHECK_CUDA(sample); FG_CHECK_DENSE(sample); FG_CHECK_CUDA(model_output); FG_CHECK_CUDA(out);
  FG_CHECK_CUDA(index); FG_CHECK_CUDA(coefs);
  // the kernels walk flat storage: equal strides make element i the same (b, c, h, w) everywhere
  auto matches = [&](const at::Tensor& t) {
    return t.sizes() == sample.sizes() && (sample.numel() <= 1 || t.strides() == sample.strides());
  };
  TORCH_CHECK(matches(model_output) && model_output.scalar_type() == sample.scalar_type(), "model_output must match sample");
  TORCH_CHECK(matches(out) && out.scalar_type() == sample.scalar_type(), "out must match sample");
  TORCH_CHECK(index.scalar_type() == at::kLong && index.dim() == 1 && index.size(0) == sample.size(0), "index must be int64 (B,)");
  TORCH_CHECK(coefs.scalar_type() == at::kFloat && coefs.is_contiguous() && coefs.dim() == 2 && coefs.size(1) == 10 &&
              coefs.size(0) > 0, "coefs must be a contiguous float32 (N, 10) table");
  TORCH_CHECK(!(noise.has_value() && rng.has_value()), "at most one of noise and rng");
  int prev_dtype = fastgen::kFloat32;
  if (prev_x0) {
    FG_CHECK_CUDA(*prev_x0);
    TORCH_CHECK(matches(*prev_x0) && (prev_x0->scalar_type() == sample.scalar_type() || prev_x0->scalar_type() == at::kFloat),
                "prev_x0 must match sample (in its dtype or float32)");
    prev_dtype = dtype_code(*prev_x0);
  }
  if (noise) { FG_CHECK_CUDA(*noise); TORCH_CHECK(matches(*noise) && noise->scalar_type() == sample.scalar_type(), "noise must match sample"); }
  if (x0) { FG_CHECK_CUDA(*x0); TORCH_CHECK(matches(*x0) && x0->scalar_type() == at::kFloat, "x0 must be float32 shaped like sample"); }
  if (rng) { FG_CHECK_CUDA(*rng); TORCH_CHECK(rng->scalar_type() == at::kLong && rng->numel() == 2, "rng must be int64 [seed, offset]"); }
  const c10::cuda::CUDAGuard guard(sample.device());
  const int64_t batch = sample.size(0), per_sample = batch ? sample.numel() / batch : 0;
  const float clip = clip_range ? static_cast<float>(*clip_range) : INFINITY;
  check_status(fastgen::sampling_step_cuda(dtype_code(sample), sample.data_ptr(), model_output.data_ptr(),
                                           prev_x0 ? prev_x0->data_ptr() : nullptr, prev_dtype,
                                           noise ? noise->data_ptr() : nullptr, out.data_ptr(),
                                           x0 ? x0->data_ptr<float>() : nullptr, index.data_ptr<int64_t>(), index.stride(0),
                                           coefs.data_ptr<float>(), coefs.size(0), rng ? rng->data_ptr<int64_t>() : nullptr,
                                           clip, batch, per_sample, c10::cuda::getCurrentCUDAStream()),
               "sampling_step");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("add_noise", &add_noise, "DDPM forward noising (see fastgen.ops.add_noise)");
  m.def("sampling_step", &sampling_step, "one fused reverse-diffusion step (see fastgen.ops.sampling_step)");
}
