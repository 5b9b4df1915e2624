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
// (batch-major dense); each present history slot h1..h4 has those strides in that dtype or
// float32; state float32; index int64 (B,) (stride 0 allowed); coefs contiguous float32
// (N, 16); clip_range None for no clamp.
void sampling_step(const at::Tensor& sample, const at::Tensor& model_output, const c10::optional<at::Tensor>& h1,
                   const c10::optional<at::Tensor>& h2, const c10::optional<at::Tensor>& h3,
                   const c10::optional<at::Tensor>& h4, const c10::optional<at::Tensor>& noise, at::Tensor& out,
                   const c10::optional<at::Tensor>& state, const at::Tensor& index, const at::Tensor& coefs,
                   const c10::optional<at::Tensor>& rng, c10::optional<double> clip_range) {
  FG_CHECK_CUDA(sample); FG_CHECK_DENSE(sample); FG_CHECK_CUDA(model_output); FG_CHECK_CUDA(out);
  FG_CHECK_CUDA(index); FG_CHECK_CUDA(coefs);
  // the kernels walk flat storage: equal strides make element i the same (b, c, h, w) everywhere
  auto matches = [&](const at::Tensor& t) {
    return t.sizes() == sample.sizes() && (sample.numel() <= 1 || t.strides() == sample.strides());
  };
  TORCH_CHECK(matches(model_output) && model_output.scalar_type() == sample.scalar_type(), "model_output must match sample");
  TORCH_CHECK(matches(out) && out.scalar_type() == sample.scalar_type(), "out must match sample");
  TORCH_CHECK(index.scalar_type() == at::kLong && index.dim() == 1 && index.size(0) == sample.size(0), "index must be int64 (B,)");
  TORCH_CHECK(coefs.scalar_type() == at::kFloat && coefs.is_contiguous() && coefs.dim() == 2 && coefs.size(1) == 16 &&
              coefs.size(0) > 0, "coefs must be a contiguous float32 (N, 16) table");
  TORCH_CHECK(!(noise.has_value() && rng.has_value()), "at most one of noise and rng");
  const c10::optional<at::Tensor>* slots[4] = {&h1, &h2, &h3, &h4};
  const void* history[4] = {nullptr, nullptr, nullptr, nullptr};
  int history_dtypes[4] = {0, 0, 0, 0};
  for (int s = 0; s < 4; ++s) {
    const c10::optional<at::Tensor>& h = *slots[s];
    if (!h) continue;
    TORCH_CHECK(h->is_cuda(), "history[", s, "] must be a CUDA tensor");
    TORCH_CHECK(matches(*h) && (h->scalar_type() == sample.scalar_type() || h->scalar_type() == at::kFloat),
                "history[", s, "] must match sample (in its dtype or float32)");
    history[s] = h->data_ptr();
    history_dtypes[s] = dtype_code(*h);
  }
  if (noise) { FG_CHECK_CUDA(*noise); TORCH_CHECK(matches(*noise) && noise->scalar_type() == sample.scalar_type(), "noise must match sample"); }
  if (state) { FG_CHECK_CUDA(*state); TORCH_CHECK(matches(*state) && state->scalar_type() == at::kFloat, "state must be float32 shaped like sample"); }
  if (rng) { FG_CHECK_CUDA(*rng); TORCH_CHECK(rng->scalar_type() == at::kLong && rng->numel() == 2, "rng must be int64 [seed, offset]"); }
  const c10::cuda::CUDAGuard guard(sample.device());
  const int64_t batch = sample.size(0), per_sample = batch ? sample.numel() / batch : 0;
  const float clip = clip_range ? static_cast<float>(*clip_range) : INFINITY;
  check_status(fastgen::sampling_step_cuda(dtype_code(sample), sample.data_ptr(), model_output.data_ptr(), history,
                                           history_dtypes, noise ? noise->data_ptr() : nullptr, out.data_ptr(),
                                           state ? state->data_ptr<float>() : nullptr, index.data_ptr<int64_t>(),
                                           index.stride(0), coefs.data_ptr<float>(), coefs.size(0),
                                           rng ? rng->data_ptr<int64_t>() : nullptr, clip, batch, per_sample,
                                           c10::cuda::getCurrentCUDAStream()),
               "sampling_step");
}

// --- GroupNorm, channels_last --------------------------------------------------------------------

// A 4-D CUDA tensor whose storage is NHWC (channels_last), shaped and typed like x.
void check_nhwc(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == x.device(), name, " must be on x's device ", x.device(), ", got ", t.device());
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D (B, C, H, W), got ", t.dim(), " dimensions");
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have x's shape ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " must have x's dtype ", x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              " must be channels_last (NHWC storage: t.is_contiguous(memory_format=torch.channels_last)), got strides ",
              t.strides());
}

// None, or a contiguous tensor of the given shape with x's dtype on x's device; its pointer or null.
const void* optional_operand(const c10::optional<at::Tensor>& t, const char* name, at::IntArrayRef shape, const at::Tensor& x) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->device() == x.device(), name, " must be on x's device ", x.device(), ", got ", t->device());
  TORCH_CHECK(t->sizes() == shape, name, " must have shape ", shape, ", got ", t->sizes());
  TORCH_CHECK(t->scalar_type() == x.scalar_type(), name, " must have x's dtype ", x.scalar_type(), ", got ", t->scalar_type());
  TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
  return t->data_ptr();
}

// A contiguous float32 tensor of the given shape on x's device (statistics and per-channel sums).
float* float32_operand(const at::Tensor& t, const char* name, at::IntArrayRef shape, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), name, " must be on x's device ", x.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  return t.data_ptr<float>();
}

// The optional operands of the fused GroupNorm, checked: weight, bias (C,); emb, scale, shift (B, C).
struct FusedOperands {
  const void *w, *b, *e, *sc, *sh;
  FusedOperands(const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                const c10::optional<at::Tensor>& emb, const c10::optional<at::Tensor>& scale,
                const c10::optional<at::Tensor>& shift, const at::Tensor& x)
      : w(optional_operand(weight, "weight", {x.size(1)}, x)),
        b(optional_operand(bias, "bias", {x.size(1)}, x)),
        e(optional_operand(emb, "emb", {x.size(0), x.size(1)}, x)),
        sc(optional_operand(scale, "scale", {x.size(0), x.size(1)}, x)),
        sh(optional_operand(shift, "shift", {x.size(0), x.size(1)}, x)) {}
};

void check_groups(const at::Tensor& x, int64_t num_groups) {
  TORCH_CHECK(num_groups > 0 && x.size(1) % num_groups == 0, "num_groups must be a positive divisor of the channel count ",
              x.size(1), ", got ", num_groups);
  TORCH_CHECK(x.size(0) > 0 && x.size(1) > 0 && x.size(2) * x.size(3) > 0,
              "x must have a sample, a channel and a spatial position, got shape ", x.sizes());
}

// y = silu?((GroupNorm(x + emb) * weight + bias) * (1 + scale) + shift) with the group mean and
// rstd (float32 (B, G)) for the backward. x, out: channels_last (B, C, H, W); weight, bias (C,)
// and emb, scale, shift (B, C) contiguous in x's dtype, or None.
void group_norm_forward(const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                        const c10::optional<at::Tensor>& emb, const c10::optional<at::Tensor>& scale,
                        const c10::optional<at::Tensor>& shift, int64_t num_groups, double eps, bool silu, at::Tensor& out,
                        at::Tensor& mean, at::Tensor& rstd) {
  check_nhwc(x, "x", x);
  check_nhwc(out, "out", x);
  check_groups(x, num_groups);
  const int64_t B = x.size(0), C = x.size(1), S = x.size(2) * x.size(3);
  const c10::cuda::CUDAGuard guard(x.device());
  const FusedOperands o(weight, bias, emb, scale, shift, x);
  float* m = float32_operand(mean, "mean", {B, num_groups}, x);
  float* r = float32_operand(rstd, "rstd", {B, num_groups}, x);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  size_t bytes = 0;
  check_status(fastgen::group_norm_forward_cuda(dtype_code(x), x.data_ptr(), o.w, o.b, o.e, o.sc, o.sh, out.data_ptr(), m, r, B, S,
                                                C, num_groups, static_cast<float>(eps), silu, nullptr, &bytes, stream),
               "group_norm_forward");
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
  check_status(fastgen::group_norm_forward_cuda(dtype_code(x), x.data_ptr(), o.w, o.b, o.e, o.sc, o.sh, out.data_ptr(), m, r, B, S,
                                                C, num_groups, static_cast<float>(eps), silu, workspace.data_ptr(), &bytes,
                                                stream),
               "group_norm_forward");
}

// dx (channels_last like x) and the float32 (B, C) sums sum_s dz, sum_s dz * n and d_emb =
// sum_s dL/dh, from dy (channels_last like x) and the forward's operands and statistics.
void group_norm_backward(const at::Tensor& dy, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                         const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& emb,
                         const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                         const at::Tensor& mean, const at::Tensor& rstd, int64_t num_groups, bool silu, at::Tensor& dx,
                         at::Tensor& sum_dz, at::Tensor& sum_dz_n, at::Tensor& d_emb) {
  check_nhwc(x, "x", x);
  check_nhwc(dy, "dy", x);
  check_nhwc(dx, "dx", x);
  check_groups(x, num_groups);
  const int64_t B = x.size(0), C = x.size(1), S = x.size(2) * x.size(3);
  const c10::cuda::CUDAGuard guard(x.device());
  const FusedOperands o(weight, bias, emb, scale, shift, x);
  const float* m = float32_operand(mean, "mean", {B, num_groups}, x);
  const float* r = float32_operand(rstd, "rstd", {B, num_groups}, x);
  float* s_dz = float32_operand(sum_dz, "sum_dz", {B, C}, x);
  float* s_dzn = float32_operand(sum_dz_n, "sum_dz_n", {B, C}, x);
  float* s_emb = float32_operand(d_emb, "d_emb", {B, C}, x);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  size_t bytes = 0;
  check_status(fastgen::group_norm_backward_cuda(dtype_code(x), dy.data_ptr(), x.data_ptr(), o.w, o.b, o.e, o.sc, o.sh, m, r,
                                                 dx.data_ptr(), s_dz, s_dzn, s_emb, B, S, C, num_groups, silu, nullptr,
                                                 &bytes, stream),
               "group_norm_backward");
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
  check_status(fastgen::group_norm_backward_cuda(dtype_code(x), dy.data_ptr(), x.data_ptr(), o.w, o.b, o.e, o.sc, o.sh, m, r,
                                                 dx.data_ptr(), s_dz, s_dzn, s_emb, B, S, C, num_groups, silu,
                                                 workspace.data_ptr(), &bytes, stream),
               "group_norm_backward");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("add_noise", &add_noise, "DDPM forward noising (see fastgen.ops.add_noise)");
  m.def("sampling_step", &sampling_step, "one fused reverse-diffusion step (see fastgen.ops.sampling_step)");
  m.def("group_norm_forward", &group_norm_forward, "GroupNorm forward on channels_last x (see fastgen.ops.group_norm)");
  m.def("group_norm_backward", &group_norm_backward, "GroupNorm backward on channels_last x (see fastgen.ops.group_norm)");
}
