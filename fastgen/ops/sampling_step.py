"""One reverse-diffusion step, fused: DDPM, DDIM and DPM-Solver++ are all this one affine update.

Per sample b, with the coefficient row ``c = coefs[index[b]]`` (float32, :data:`NUM_COEFS` wide),
x = sample, m = model_output, p = prev_x0 (the previous step's x0, multistep solvers only) and z
Gaussian noise::

    x0  = c[PX] * x + c[PM] * m                    # predicted clean sample (epsilon / sample / v)
    x0  = clamp(x0, -clip_range, clip_range)       # when clip_range is given
    eps = c[EX] * x + c[EM] * m + c[E0] * x0       # predicted noise (DDIM's direction term)
    out = c[OX] * x + c[O0] * x0 + c[OE] * eps + c[O1] * p + c[SZ] * z

``out`` is x_{t-1} in the sample's dtype; x0 is returned in float32 when asked for (multistep
state and diffusers' ``pred_original_sample``). All arithmetic is float32. The coefficient tables
are built once per schedule (``fastgen.ops.step_coefficients``) and live on the device, so a step
reads its row there: no host-device synchronisation, and a CUDA graph can capture it.

z is the caller's ``noise`` tensor, or Philox noise from ``rng`` (fastgen/_rng.py), or zero when
neither is given; rows with c[SZ] == 0 never touch noise (a NaN there does not leak into out).

Implementations: the reference below, a Triton kernel (``kernels/sampling_step.py``), a CUDA kernel
(``csrc/sampling_step.cu``) and a C++/OpenMP CPU kernel (``csrc/cpu/sampling_step.cpp``). The
kernels read sample, model_output and noise in the sample's dtype and prev_x0 in the sample's
dtype or float32; :func:`sampling_step` converts other dtypes first.
"""
from __future__ import annotations

import torch

from .. import _impl, _layout, _native, _rng, _validate
from .._cpu_signatures import DTYPE_CODES, call, ptr

IMPLS = ("triton", "cuda", "cpu", "reference")

# Columns of a coefficient row.
PX, PM, EX, EM, E0, OX, O0, OE, O1, SZ = range(10)
NUM_COEFS = 10


def sampling_step_ref(sample: torch.Tensor, model_output: torch.Tensor, coefs: torch.Tensor, index: torch.Tensor,
                      prev_x0: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                      rng: torch.Tensor | None = None, clip_range: float | None = None,
                      return_x0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch step. sample, model_output: (B, ...) float; coefs: float32 (N, NUM_COEFS);
    index: int64 (B,); prev_x0: float (B, ...) or None; noise: (B, ...) or None; rng: int64
    [seed, offset] or None. Returns (x_{t-1} in sample's dtype, x0 float32 or an empty tensor)."""
    acc = torch.promote_types(sample.dtype, torch.float32)
    c = coefs[index.clamp(0, coefs.shape[0] - 1)].to(acc)  # (B, NUM_COEFS)

    def col(k):
        return _layout.per_sample(c[:, k], sample)

    x, m = sample.to(acc), model_output.to(acc)
    x0 = col(PX) * x + col(PM) * m
    if clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    eps = col(EX) * x + col(EM) * m + col(E0) * x0
    out = col(OX) * x + col(O0) * x0 + col(OE) * eps
    if prev_x0 is not None:
        out = out + col(O1) * prev_x0.to(acc)
    if noise is None and rng is not None:
        noise = _layout.flat_as(_rng.philox_normal_ref(rng, sample.numel()), sample)
    if noise is not None:
        sz = col(SZ)
        # rows with SZ == 0 ignore z entirely, as the kernels do (0 * NaN would be NaN)
        out = out + sz * noise.to(acc).masked_fill(sz == 0, 0.0)
    x0_out = x0.to(acc) if return_x0 else sample.new_empty(0, dtype=acc)
    return out.to(sample.dtype), x0_out


@torch.library.custom_op("fastgen::sampling_step", mutates_args=())
def _sampling_step_op(sample: torch.Tensor, model_output: torch.Tensor, coefs: torch.Tensor, index: torch.Tensor,
                      prev_x0: torch.Tensor | None, noise: torch.Tensor | None, rng: torch.Tensor | None,
                      clip_range: float | None, return_x0: bool, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    if impl == "reference":
        out, x0 = sampling_step_ref(sample, model_output, coefs, index, prev_x0, noise, rng, clip_range, return_x0)
        return out, x0
    out = _layout.new_output(sample)
    x0 = _layout.new_output(sample, torch.float32) if return_x0 else sample.new_empty(0, dtype=torch.float32)
    if out.numel() == 0:
        return out, x0
    x0_arg = x0 if return_x0 else None
    if impl == "triton":
        from fastgen.kernels import sampling_step as kernel

        kernel.sampling_step(sample, model_output, prev_x0, noise, index, coefs, rng, clip_range, out, x0_arg)
    elif impl == "cuda":
        _native.cuda_ext().sampling_step(sample, model_output, prev_x0, noise, out, x0_arg, index, coefs, rng,
                                         clip_range)
    elif impl == "cpu":
        batch = sample.shape[0]
        call(_native.cpu_lib(), "fastgen_sampling_step_cpu", DTYPE_CODES[sample.dtype], ptr(sample),
             ptr(model_output), ptr(prev_x0), DTYPE_CODES[prev_x0.dtype] if prev_x0 is not None else 0, ptr(noise),
             ptr(out), ptr(x0_arg), ptr(index), index.stride(0), ptr(coefs), coefs.shape[0], ptr(rng),
             float("inf") if clip_range is None else clip_range, batch, sample.numel() // batch)
    else:
        raise AssertionError(impl)
    return out, x0


@_sampling_step_op.register_fake
def _(sample, model_output, coefs, index, prev_x0, noise, rng, clip_range, return_x0, impl):
    x0 = torch.empty_like(sample, dtype=torch.float32) if return_x0 else sample.new_empty(0, dtype=torch.float32)
    return torch.empty_like(sample), x0


def _setup_context(ctx, inputs, output):
    sample, model_output, coefs, index, prev_x0, noise, rng, clip_range, return_x0, impl = inputs
    ctx.save_for_backward(sample, model_output, coefs, index, prev_x0, noise, rng)
    ctx.clip_range = clip_range


def _backward(ctx, grad_out, grad_x0):
    # The step is affine up to the clamp, so the reference's vector-Jacobian product is exact and
    # cheap; computed with torch ops it is itself differentiable (guidance through a sampler).
    sample, model_output, coefs, index, prev_x0, noise, rng = ctx.saved_tensors
    wants = [t for t in (sample, model_output, prev_x0, noise) if t is not None]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in wants]
        it = iter(leaves)
        args = [next(it) if t is not None else None for t in (sample, model_output, prev_x0, noise)]
        out, x0 = sampling_step_ref(args[0], args[1], coefs, index, args[2], args[3], rng, ctx.clip_range,
                                    return_x0=grad_x0 is not None and grad_x0.numel() > 0)
        outputs, grads = [out], [grad_out]
        if x0.numel() > 0:
            outputs.append(x0)
            grads.append(grad_x0)
        got = iter(torch.autograd.grad(outputs, leaves, grads, allow_unused=True,
                                       create_graph=torch.is_grad_enabled()))
    g = [next(got) if t is not None else None for t in (sample, model_output, prev_x0, noise)]
    return g[0], g[1], None, None, g[2], g[3], None, None, None, None


_sampling_step_op.register_autograd(_backward, setup_context=_setup_context)


def sampling_step(sample: torch.Tensor, model_output: torch.Tensor, coefs: torch.Tensor, index, *,
                  prev_x0: torch.Tensor | None = None, noise: torch.Tensor | None = None, generator=None,
                  seed=None, clip_range: float | None = None, return_x0: bool = False,
                  impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """One fused reverse-diffusion step (see the module docstring for the math).

    Args:
        sample: x_t, (B, ...) float32 / float16 / bfloat16 (float64 runs the reference); any
            dense batch-major layout (NCHW, channels_last). The output keeps dtype and layout.
        model_output: the network's output for x_t, x_t's shape, on its device. The kernels read
            it (and noise) in the sample's dtype, so another dtype is converted first.
        coefs: float32 (N, NUM_COEFS) coefficient table on the device.
        index: which row of ``coefs`` each sample uses: an int, or an integer tensor of shape
            () / (1,) / (B,) on the device (a device tensor costs no host synchronisation).
        prev_x0: the previous step's x0 (multistep solvers), x_t's shape, in the sample's dtype or
            float32 (other dtypes are converted to float32); None means zero.
        noise: z, x_t's shape. Else drawn from ``generator`` exactly as diffusers' randn_tensor
            draws it (shape and dtype of model_output), else Philox noise from ``seed`` (int or
            an int64 state tensor [seed, offset] on the device), else z = 0.
        clip_range: clamp x0 into [-clip_range, clip_range] (diffusers' clip_sample).
        return_x0: also return x0 (float32); otherwise the second result is None.
        impl: "auto", "triton", "cuda", "cpu" or "reference".

    Returns (x_{t-1}, x0 or None).
    """
    sample = _validate.check_floating("sample", sample)
    model_output = _validate.check_like("model_output", model_output, "sample", sample)
    coefs = _validate.check_tensor("coefs", coefs)
    if coefs.dim() != 2 or coefs.shape[1] != NUM_COEFS or coefs.dtype != torch.float32 or coefs.shape[0] == 0:
        raise ValueError(f"coefs must be a float32 table of shape (N, {NUM_COEFS}), got {coefs.dtype} {tuple(coefs.shape)}")
    _validate.check_same_device("coefs", coefs, "sample", sample)
    index = _validate.check_timesteps("index", index, sample.shape[0], coefs.shape[0], sample.device)
    if clip_range is not None and (isinstance(clip_range, bool) or not isinstance(clip_range, (int, float))):
        raise TypeError(f"clip_range must be a positive number or None, got {type(clip_range).__name__}")
    if clip_range is not None and not clip_range > 0:
        raise ValueError(f"clip_range must be a positive number or None, got {clip_range}")
    sample = _layout.batch_major(sample)
    model_output = _layout.match_layout(model_output, sample)
    if prev_x0 is not None:
        prev_x0 = _layout.match_layout(_validate.check_like("prev_x0", prev_x0, "sample", sample), sample)
    if noise is None and generator is not None:
        noise = _rng.randn_like_diffusers(model_output.shape, generator, sample.device, model_output.dtype)
    rng = None
    if noise is not None:
        if seed is not None:
            raise ValueError("seed must be None when noise or generator is given: z comes from exactly one source")
        noise = _layout.match_layout(_validate.check_like("noise", noise, "sample", sample), sample)
    else:
        rng = _validate.check_seed("seed", seed, sample.device)
    chosen = _impl.resolve("sampling_step", impl, sample.device, IMPLS, sample.dtype)
    if chosen != "reference":
        # The kernels read every operand in the sample's dtype, except prev_x0 which may stay float32.
        model_output = model_output.to(sample.dtype)
        noise = None if noise is None else noise.to(sample.dtype)
        if prev_x0 is not None and prev_x0.dtype not in (sample.dtype, torch.float32):
            prev_x0 = prev_x0.to(torch.float32)
    out, x0 = _sampling_step_op(sample, model_output, coefs.contiguous(), index, prev_x0, noise, rng,
                                None if clip_range is None else float(clip_range), return_x0, chosen)
    return out, (x0 if return_x0 else None)
