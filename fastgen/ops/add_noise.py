"""Forward noising of DDPM (Ho et al. 2020, eq. 4), fused into one pass over memory.

    x_t = sqrt(abar[t_b]) * x0 + sqrt(1 - abar[t_b]) * eps,    b = sample index

``eps`` is the caller's tensor, noise drawn from a caller's ``torch.Generator`` (exactly as
diffusers draws it), or generated inside the kernel from a Philox ``seed`` (fastgen/_rng.py) so
that it never travels through memory. :func:`fastgen.ops.diffusion_loss` regenerates the same eps
from the same seed. This file is the pattern every fused op follows: reference, custom-op
registration with a fake, autograd, dispatcher.
"""
from __future__ import annotations

import torch

from .. import _impl, _layout, _native, _rng, _validate
from .._cpu_signatures import DTYPE_CODES, call, ptr
from .sampling_step import _plain_eager

IMPLS = ("triton", "cuda", "cpu", "reference")


def add_noise_ref(x0: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                  noise: torch.Tensor | None = None, rng: torch.Tensor | None = None) -> torch.Tensor:
    """Pure-torch forward noising, float32 arithmetic, the dtype of ``x0`` out.

    x0: (B, ...) float; timesteps: int (B,); alphas_cumprod: float32 (T,); exactly one of
    ``noise`` (x0's shape) and ``rng`` (int64 Philox state [seed, offset]) is given.
    """
    if noise is None:
        noise = _layout.flat_as(_rng.philox_normal_ref(rng, x0.numel()), x0)
    acc = torch.promote_types(x0.dtype, torch.float32)  # float32 arithmetic, float64 kept for gradcheck
    abar = alphas_cumprod[timesteps.clamp(0, alphas_cumprod.numel() - 1)].to(acc)
    xt = _layout.per_sample(abar.sqrt(), x0) * x0.to(acc) + _layout.per_sample((1.0 - abar).sqrt(), x0) * noise.to(acc)
    return xt.to(x0.dtype)


def _add_noise_impl(x0: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                    noise: torch.Tensor | None, rng: torch.Tensor | None, impl: str) -> torch.Tensor:
    if impl == "reference":
        return add_noise_ref(x0, timesteps, alphas_cumprod, noise, rng)
    out = _layout.new_output(x0)
    if out.numel() == 0:
        return out
    if impl == "triton":
        from fastgen.kernels import add_noise as kernel

        kernel.add_noise(x0, noise, timesteps, alphas_cumprod, rng, out)
    elif impl == "cuda":
        _native.cuda_ext().add_noise(x0, noise, out, timesteps, alphas_cumprod, rng)
    elif impl == "cpu":
        batch = x0.shape[0]
        call(_native.cpu_lib(), "fastgen_add_noise_cpu", DTYPE_CODES[x0.dtype], ptr(x0), ptr(noise), ptr(out),
             ptr(timesteps), timesteps.stride(0), ptr(alphas_cumprod), alphas_cumprod.numel(), ptr(rng),
             batch, x0.numel() // batch)
    else:
        raise AssertionError(impl)
    return out


_add_noise_op = torch.library.custom_op("fastgen::add_noise", mutates_args=())(_add_noise_impl)


@_add_noise_op.register_fake
def _(x0, timesteps, alphas_cumprod, noise, rng, impl):
    return torch.empty_like(x0)


def _setup_context(ctx, inputs, output):
    x0, timesteps, alphas_cumprod, noise, rng, impl = inputs
    ctx.save_for_backward(timesteps, alphas_cumprod)
    ctx.has_noise = noise is not None


def _backward(ctx, grad):
    # d x_t / d x0 = sqrt(abar), d x_t / d eps = sqrt(1 - abar): plain torch, so it is itself
    # differentiable and runs wherever the forward ran.
    timesteps, alphas_cumprod = ctx.saved_tensors
    acc = torch.promote_types(grad.dtype, torch.float32)
    abar = alphas_cumprod[timesteps.clamp(0, alphas_cumprod.numel() - 1)].to(acc)
    grad_acc = grad.to(acc)
    grad_x0 = (_layout.per_sample(abar.sqrt(), grad) * grad_acc).to(grad.dtype)
    grad_noise = (_layout.per_sample((1.0 - abar).sqrt(), grad) * grad_acc).to(grad.dtype) if ctx.has_noise else None
    return grad_x0, None, None, grad_noise, None, None


_add_noise_op.register_autograd(_backward, setup_context=_setup_context)


def add_noise(x0: torch.Tensor, timesteps, alphas_cumprod: torch.Tensor, noise: torch.Tensor | None = None, *,
              generator=None, seed=None, impl: str = "auto") -> torch.Tensor:
    """x_t = sqrt(abar[t]) * x0 + sqrt(1 - abar[t]) * eps, per sample, in one pass.

    Args:
        x0: clean samples (B, ...), float32 / float16 / bfloat16 / float64; NCHW, channels_last or
            any dense batch-major layout. The output keeps x0's dtype and memory format; the
            arithmetic is float32 (float64 inputs run the reference path in float64).
        timesteps: int, or integer tensor of shape () / (1,) / (B,), each in [0, T).
        alphas_cumprod: (T,) table of cumulative alpha products on x0's device (used as float32).
        noise: eps of x0's shape; if None, eps comes from ``generator`` or else from Philox.
        generator: a ``torch.Generator`` (or a list, one per sample) to draw eps from, exactly as
            diffusers' ``randn_tensor`` draws it.
        seed: Philox seed of the in-kernel eps (int, or an int64 state tensor [seed, offset] on
            x0's device); None draws a seed from torch's default generator. Pass the same seed to
            :func:`~fastgen.ops.diffusion_loss` to regenerate this eps there.
        impl: "auto", "triton", "cuda", "cpu" or "reference" (see :mod:`fastgen._impl`).

    Differentiable with respect to x0 and a given noise. Returns x_t, (B, ...) like x0.
    """
    x0 = _validate.check_floating("x0", x0)
    table = _validate.check_table("alphas_cumprod", alphas_cumprod, "x0", x0)
    t = _validate.check_timesteps("timesteps", timesteps, x0.shape[0], table.numel(), x0.device)
    x0 = _layout.batch_major(x0)
    rng = None
    if noise is None and generator is not None:
        noise = _rng.randn_like_diffusers(x0.shape, generator, x0.device, x0.dtype)
    if noise is not None:
        if seed is not None:
            raise ValueError("seed must be None when noise or generator is given: eps comes from exactly one source")
        noise = _layout.match_layout(_validate.check_like("noise", noise, "x0", x0), x0).to(x0.dtype)
    else:
        rng = _validate.check_seed("seed", _rng.new_seed() if seed is None else seed, x0.device)
    chosen = _impl.resolve("add_noise", impl, x0.device, IMPLS, x0.dtype)
    # eager, nothing to differentiate: run the implementation without the dispatcher (as sampling_step)
    op = _add_noise_impl if _plain_eager(x0, noise) else _add_noise_op
    return op(x0, t, table, noise, rng, chosen)
