"""The diffusion training loss (Ho et al. 2020, eq. 14) with eps regenerated, never stored.

Per sample b with a = abar[t_b] and the noise eps that noised x0 into x_t::

    target = eps                                  prediction_type "epsilon"
           = x0                                   "sample"
           = sqrt(a) * eps - sqrt(1 - a) * x0     "v_prediction" (Salimans & Ho 2022)
    loss   = mean((model_output - target)^2)      over all elements ("mean") or per sample ("none")

eps is the caller's ``noise``, or Philox element i (storage index of x0) of the state given as
``seed`` - the very numbers :func:`fastgen.ops.add_noise` generated from the same seed. The
forward and the backward both regenerate eps, so a training step (noising + loss) moves only
x0, x_t, the prediction and its gradient through memory.

The op computes per-sample sums of squared residuals (float32) with a deterministic two-stage
reduction: a float32 partial sum per (sample, chunk), then the partials summed in a fixed order.
The gradient is 2 * dL/dsum_b * (pred - target) for model_output, and -(d target / d x0) times
that for x0 (zero for epsilon). noise is a constant for the kernels; a ``noise`` that requires
grad gets its gradient from the reference formula. The backward is differentiable again on the
reference path only (float64 gradgradcheck); the loss never sits inside a gradient penalty.

Implementations: the reference below, a Triton kernel (``kernels/diffusion_loss.py``, which also
serves CUDA tensors) and a C++/OpenMP CPU kernel (``csrc/cpu/diffusion_loss.cpp``); no CUDA C++.
"""
from __future__ import annotations

import math

import torch

from .. import _impl, _layout, _native, _rng, _validate
from .._cpu_signatures import DTYPE_CODES, call, ptr

IMPLS = ("triton", "cpu", "reference")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")  # index = kernel MODE
REDUCTIONS = ("mean", "none")


def _target(model_output, x0, timesteps, alphas_cumprod, noise, rng, prediction_type):
    """(target, d target / d x0 per sample or None, accumulation dtype)."""
    acc = torch.promote_types(torch.promote_types(model_output.dtype, x0.dtype), torch.float32)
    abar = alphas_cumprod[timesteps.clamp(0, alphas_cumprod.numel() - 1)].to(acc)
    if prediction_type != "sample" and noise is None:
        noise = _layout.flat_as(_rng.philox_normal_ref(rng, x0.numel()), x0)
    if prediction_type == "epsilon":  # x0 is not read: a NaN in it must not reach the loss
        return noise.to(acc), None, acc
    if prediction_type == "sample":
        return x0.to(acc), torch.ones_like(abar), acc
    sig, sig_noise = _layout.per_sample(abar.sqrt(), x0), _layout.per_sample((1.0 - abar).sqrt(), x0)
    return sig * noise.to(acc) - sig_noise * x0.to(acc), -(1.0 - abar).sqrt(), acc


def _sums_ref(model_output, x0, timesteps, alphas_cumprod, noise, rng, prediction_type):
    """Per-sample sums of (model_output - target)^2: (B,) float32 (float64 for float64 inputs)."""
    target, _, acc = _target(model_output, x0, timesteps, alphas_cumprod, noise, rng, prediction_type)
    d = model_output.to(acc) - target
    return (d * d).reshape(d.shape[0], math.prod(d.shape[1:])).sum(dim=1)


def _reduce(sums: torch.Tensor, x0: torch.Tensor, reduction: str) -> torch.Tensor:
    per_sample = math.prod(x0.shape[1:])
    if reduction == "none":
        return sums / per_sample
    return sums.sum() / (x0.shape[0] * per_sample)


def diffusion_loss_ref(model_output: torch.Tensor, x0: torch.Tensor, timesteps: torch.Tensor,
                       alphas_cumprod: torch.Tensor, noise: torch.Tensor | None = None,
                       rng: torch.Tensor | None = None, prediction_type: str = "epsilon",
                       reduction: str = "mean") -> torch.Tensor:
    """Pure-torch loss. model_output, x0: (B, ...) float sharing strides; timesteps: int64 (B,);
    alphas_cumprod: float32 (T,); exactly one of noise (x0's shape) and rng (int64 [seed, offset]).
    Returns a float32 scalar ("mean") or (B,) per-sample means ("none"); float64 for float64 inputs."""
    sums = _sums_ref(model_output, x0, timesteps, alphas_cumprod, noise, rng, prediction_type)
    return _reduce(sums, x0, reduction)


@torch.library.custom_op("fastgen::diffusion_loss", mutates_args=())
def _diffusion_loss_op(model_output: torch.Tensor, x0: torch.Tensor, timesteps: torch.Tensor,
                       alphas_cumprod: torch.Tensor, noise: torch.Tensor | None, rng: torch.Tensor | None,
                       prediction_type: str, save_residual: bool, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample sums (B,), the residual model_output - target or an empty tensor).

    ``save_residual`` (the "cpu" kernel only) writes the residual in model_output's dtype and layout
    during the forward pass, so the backward is one scaling pass instead of a second regeneration
    of eps: on a CPU, Philox eps costs more than a pass over memory; on a GPU it is free, and the
    Triton path regenerates it instead of storing a tensor.
    """
    empty = model_output.new_empty(0)
    if impl == "reference" or x0.numel() == 0:
        return _sums_ref(model_output, x0, timesteps, alphas_cumprod, noise, rng, prediction_type), empty
    mode = PREDICTION_TYPES.index(prediction_type)
    if impl == "triton":
        from fastgen.kernels import diffusion_loss as kernel

        return kernel.loss_forward(model_output, x0, noise, timesteps, alphas_cumprod, rng, mode), empty
    if impl == "cpu":
        batch = x0.shape[0]
        sums = torch.empty(batch, dtype=torch.float32)
        residual = _layout.new_output(model_output) if save_residual else empty
        call(_native.cpu_lib(), "fastgen_diffusion_loss_fwd_cpu", mode, DTYPE_CODES[model_output.dtype],
             DTYPE_CODES[x0.dtype], ptr(model_output), ptr(x0), ptr(noise), ptr(timesteps), timesteps.stride(0),
             ptr(alphas_cumprod), alphas_cumprod.numel(), ptr(rng), batch, x0.numel() // batch, ptr(sums),
             ptr(residual) if save_residual else None)
        return sums, residual
    raise AssertionError(impl)


@_diffusion_loss_op.register_fake
def _(model_output, x0, timesteps, alphas_cumprod, noise, rng, prediction_type, save_residual, impl):
    acc = torch.promote_types(torch.promote_types(model_output.dtype, x0.dtype), torch.float32)
    saved = save_residual and impl == "cpu" and x0.numel() > 0
    residual = torch.empty_like(model_output) if saved else model_output.new_empty(0)
    return model_output.new_empty(model_output.shape[:1], dtype=acc), residual


@torch.library.custom_op("fastgen::diffusion_loss_backward", mutates_args=())
def _diffusion_loss_backward_op(scale: torch.Tensor, model_output: torch.Tensor, x0: torch.Tensor,
                                timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, noise: torch.Tensor | None,
                                rng: torch.Tensor | None, prediction_type: str, want_x0: bool,
                                impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad model_output, grad x0 or an empty tensor) for per-sample scales ``scale`` = 2 dL/dsum (float32 (B,))."""
    grad_pred = _layout.new_output(model_output)
    grad_x0 = _layout.new_output(x0) if want_x0 else x0.new_empty(0)
    if grad_pred.numel() == 0:
        return grad_pred, grad_x0.zero_()
    mode = PREDICTION_TYPES.index(prediction_type)
    if impl == "triton":
        from fastgen.kernels import diffusion_loss as kernel

        kernel.loss_backward(model_output, x0, noise, timesteps, alphas_cumprod, rng, scale, mode, grad_pred,
                             grad_x0 if want_x0 else None)
    elif impl == "cpu":
        batch = x0.shape[0]
        call(_native.cpu_lib(), "fastgen_diffusion_loss_bwd_cpu", mode, DTYPE_CODES[model_output.dtype],
             DTYPE_CODES[x0.dtype], ptr(model_output), ptr(x0), ptr(noise), ptr(timesteps), timesteps.stride(0),
             ptr(alphas_cumprod), alphas_cumprod.numel(), ptr(rng), ptr(scale), batch, x0.numel() // batch,
             ptr(grad_pred), ptr(grad_x0) if want_x0 else None)
    else:
        raise AssertionError(impl)
    return grad_pred, grad_x0


@_diffusion_loss_backward_op.register_fake
def _(scale, model_output, x0, timesteps, alphas_cumprod, noise, rng, prediction_type, want_x0, impl):
    return torch.empty_like(model_output), torch.empty_like(x0) if want_x0 else x0.new_empty(0)


def _setup_context(ctx, inputs, output):
    model_output, x0, timesteps, alphas_cumprod, noise, rng, prediction_type, save_residual, impl = inputs
    residual = output[1]
    ctx.mark_non_differentiable(residual)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the residual: nothing reads it
    ctx.save_for_backward(model_output, x0, timesteps, alphas_cumprod, noise, rng, residual)
    ctx.prediction_type, ctx.impl = prediction_type, impl


def _backward_ref(grad, model_output, x0, timesteps, alphas_cumprod, noise, rng, prediction_type, needs):
    # Plain torch, so it is itself differentiable (float64 gradcheck / gradgradcheck run this).
    target, dtarget_dx0, acc = _target(model_output, x0, timesteps, alphas_cumprod, noise, rng, prediction_type)
    gp = _layout.per_sample(2.0 * grad.to(acc), model_output) * (model_output.to(acc) - target)
    grad_x0 = grad_noise = None
    if needs[1] and dtarget_dx0 is not None:
        grad_x0 = (-_layout.per_sample(dtarget_dx0, x0) * gp).to(x0.dtype)
    if needs[4] and prediction_type != "sample":
        abar = alphas_cumprod[timesteps.clamp(0, alphas_cumprod.numel() - 1)].to(acc)
        dtarget_deps = abar.sqrt() if prediction_type == "v_prediction" else torch.ones_like(abar)
        grad_noise = (-_layout.per_sample(dtarget_deps, noise) * gp).to(noise.dtype)
    return gp.to(model_output.dtype), grad_x0, grad_noise


def _backward_from_residual(grad, residual, x0, timesteps, alphas_cumprod, prediction_type, needs):
    """The gradient as a scaling of the saved residual d: grad_pred = s_b d, grad_x0 = -(dtarget/dx0) s_b d."""
    s = _layout.per_sample(2.0 * grad.float(), residual)
    grad_pred = (s * residual.float()).to(residual.dtype) if needs[0] else None
    grad_x0 = None
    if needs[1] and prediction_type != "epsilon":
        abar = alphas_cumprod[timesteps.clamp(0, alphas_cumprod.numel() - 1)]
        dtarget_dx0 = torch.ones_like(abar) if prediction_type == "sample" else -(1.0 - abar).sqrt()
        grad_x0 = (-_layout.per_sample(dtarget_dx0, x0) * s * residual.float()).to(x0.dtype)
    return grad_pred, grad_x0


def _backward(ctx, grad, _grad_residual):
    model_output, x0, timesteps, alphas_cumprod, noise, rng, residual = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if grad is None:  # grads are not materialised (see _setup_context): the loss was not used
        return None, None, None, None, None, None, None, None, None
    if residual.numel() > 0:
        g_pred, g_x0 = _backward_from_residual(grad, residual, x0, timesteps, alphas_cumprod, ctx.prediction_type, needs)
        return g_pred, g_x0, None, None, None, None, None, None, None
    if ctx.impl == "reference" or needs[4]:
        g_pred, g_x0, g_noise = _backward_ref(grad, model_output, x0, timesteps, alphas_cumprod, noise, rng,
                                              ctx.prediction_type, needs)
    else:
        want_x0 = needs[1] and ctx.prediction_type != "epsilon"
        g_pred, g_x0 = _diffusion_loss_backward_op(2.0 * grad.float(), model_output, x0, timesteps, alphas_cumprod,
                                                   noise, rng, ctx.prediction_type, want_x0, ctx.impl)
        g_x0, g_noise = (g_x0 if want_x0 else None), None
    return (g_pred if needs[0] else None), g_x0, None, None, g_noise, None, None, None, None


_diffusion_loss_op.register_autograd(_backward, setup_context=_setup_context)


def diffusion_loss(model_output: torch.Tensor, x0: torch.Tensor, timesteps, alphas_cumprod: torch.Tensor,
                   noise: torch.Tensor | None = None, *, seed=None, prediction_type: str = "epsilon",
                   reduction: str = "mean", impl: str = "auto") -> torch.Tensor:
    """Mean squared error between ``model_output`` and the diffusion target, eps regenerated.

    Args:
        model_output: the network's prediction for x_t, (B, ...) float32 / float16 / bfloat16 /
            float64, x0's shape, on x0's device.
        x0: the clean samples that were noised, (B, ...); its memory order (NCHW, channels_last,
            any dense batch-major layout) defines the storage index of each eps, as in add_noise.
        timesteps: int, or integer tensor of shape () / (1,) / (B,), each in [0, T): the ones given
            to add_noise.
        alphas_cumprod: (T,) table of cumulative alpha products on x0's device (used as float32).
        noise: the eps that noised x0 (x0's shape); or None with ``seed`` given.
        seed: the Philox seed that add_noise generated eps from (int, or the int64 state tensor
            [seed, offset] on x0's device, as it was then). Exactly one of noise and seed.
        prediction_type: "epsilon", "sample" or "v_prediction" (what the model predicts).
        reduction: "mean" (a scalar, the mean over all elements) or "none" ((B,) per-sample means).
        impl: "auto", "triton", "cpu" or "reference" (see :mod:`fastgen._impl`).

    Returns float32 (float64 for float64 inputs), differentiable with respect to model_output,
    x0 and a given noise. The arithmetic and the sums are float32.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    model_output = _validate.check_floating("model_output", model_output)
    x0 = _validate.check_like("x0", x0, "model_output", model_output)
    if x0.dim() == 0:
        raise ValueError("x0 must have at least 1 dimension(s) (batch first), got shape ()")
    table = _validate.check_table("alphas_cumprod", alphas_cumprod, "x0", x0)
    t = _validate.check_timesteps("timesteps", timesteps, x0.shape[0], table.numel(), x0.device)
    if (noise is None) == (seed is None):
        raise ValueError("exactly one of noise and seed must be given: eps is the tensor that noised x0, or "
                         "regenerated from the seed given to add_noise")
    x0 = _layout.batch_major(x0)
    model_output = _layout.match_layout(model_output, x0)
    rng = None
    if noise is not None:
        noise = _layout.match_layout(_validate.check_like("noise", noise, "x0", x0), x0)
    else:
        rng = _validate.check_seed("seed", seed, x0.device)
    dtype = torch.promote_types(model_output.dtype, x0.dtype)
    chosen = _impl.resolve("diffusion_loss", impl, x0.device, IMPLS, dtype)
    if chosen != "reference" and noise is not None:
        noise = noise.to(x0.dtype)  # the kernels read eps in x0's dtype, as add_noise does
    save_residual = (chosen == "cpu" and torch.is_grad_enabled() and (model_output.requires_grad or x0.requires_grad)
                     and not (noise is not None and noise.requires_grad))
    sums, _ = _diffusion_loss_op(model_output, x0, t, table, noise, rng, prediction_type, save_residual, chosen)
    return _reduce(sums, x0, reduction)
