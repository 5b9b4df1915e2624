"""The fused pieces of a gradient penalty (Gulrajani et al. 2017; Mescheder et al. 2018).

* :func:`interpolate` — x_hat = alpha_b * real + (1 - alpha_b) * fake, one pass, per-sample alpha
  given, drawn with ``torch.rand``, or drawn inside the kernel from a Philox seed.
* :func:`grad_sum_of_squares` — n_b = sum_i g_{b,i}^2 over all non-batch dimensions, one pass,
  float32 accumulation; backward dn/dg = 2 g, one pass.
* :func:`penalty_from_grad` — the penalty from the gradient: weight * mean_b (sqrt(n_b) - 1)^2
  ("wgan-gp"), weight * mean_b relu(sqrt(n_b) - 1)^2 ("wgan-gp-one-sided") or
  weight / 2 * mean_b n_b ("r1" / "r2"), built on grad_sum_of_squares; the epilogue runs on B numbers.

The penalty's gradient must reach D's parameters through the gradient g itself (g comes from
``torch.autograd.grad(..., create_graph=True)``), so every backward here is an expression autograd
can differentiate again: the kernels' backward is a per-sample scale, itself a custom op with an
autograd formula. Implementations: the pure-torch references below (the CPU path: torch's own
reductions are already one pass there) and Triton kernels (``kernels/gradient_penalty.py``).
"""
from __future__ import annotations

import math

import torch

from .. import _impl, _layout, _rng, _validate

IMPLS = ("triton", "reference")
PENALTY_KINDS = ("wgan-gp", "wgan-gp-one-sided", "r1", "r2")


def _flat_per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def interpolate_ref(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """alpha_b * real + (1 - alpha_b) * fake in float32 (float64 kept), real's dtype out. alpha: (B,).

    torch.lerp(fake, real, alpha) is the same number in one pass without temporaries (exact at
    alpha 0 and 1), which is what makes this reference as fast as eager on a CPU.
    """
    acc = torch.promote_types(real.dtype, torch.float32)
    return torch.lerp(fake.to(acc), real.to(acc), _layout.per_sample(alpha.to(acc), real)).to(real.dtype)


def grad_sum_of_squares_ref(grad: torch.Tensor) -> torch.Tensor:
    """Per-sample sum of squares over all non-batch dimensions: (B,) float32 (float64 for float64)."""
    acc = torch.promote_types(grad.dtype, torch.float32)
    g = _flat_per_sample(grad).to(acc)
    return (g * g).sum(dim=1)


def scale_per_sample_ref(grad: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """coef_b * grad in float32, grad's dtype out. coef: (B,)."""
    acc = torch.promote_types(grad.dtype, torch.float32)
    return (_layout.per_sample(coef.to(acc), grad) * grad.to(acc)).to(grad.dtype)


# --- per-sample scale: the backward of both ops below, differentiable again -----------------------

@torch.library.custom_op("fastgen::gp_scale", mutates_args=())
def _scale_op(grad: torch.Tensor, coef: torch.Tensor, impl: str) -> torch.Tensor:
    if impl == "reference" or grad.numel() == 0:
        return scale_per_sample_ref(grad, coef)
    from fastgen.kernels import gradient_penalty as kernel

    out = _layout.new_output(grad)
    kernel.scale(grad, coef.to(torch.float32).contiguous(), out)
    return out


@_scale_op.register_fake
def _(grad, coef, impl):
    return torch.empty_like(grad)


def _scale_setup(ctx, inputs, output):
    grad, coef, impl = inputs
    ctx.save_for_backward(grad, coef)
    ctx.impl = impl


def _scale_backward(ctx, upstream):
    grad, coef = ctx.saved_tensors
    d_grad = _scale_op(upstream, coef, ctx.impl) if ctx.needs_input_grad[0] else None
    d_coef = None
    if ctx.needs_input_grad[1]:
        acc = torch.promote_types(grad.dtype, torch.float32)
        d_coef = (_flat_per_sample(upstream).to(acc) * _flat_per_sample(grad).to(acc)).sum(dim=1).to(coef.dtype)
    return d_grad, d_coef, None


_scale_op.register_autograd(_scale_backward, setup_context=_scale_setup)


# --- interpolation ---------------------------------------------------------------------------------

@torch.library.custom_op("fastgen::gp_interpolate", mutates_args=())
def _interpolate_op(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor, impl: str) -> torch.Tensor:
    if impl == "reference" or real.numel() == 0:
        return interpolate_ref(real, fake, alpha)
    from fastgen.kernels import gradient_penalty as kernel

    out = _layout.new_output(real)
    kernel.interpolate(real, fake, alpha, out)
    return out


@_interpolate_op.register_fake
def _(real, fake, alpha, impl):
    return torch.empty_like(real)


def _interpolate_setup(ctx, inputs, output):
    real, fake, alpha, impl = inputs
    ctx.save_for_backward(alpha)
    ctx.impl = impl


def _interpolate_backward(ctx, upstream):
    (alpha,) = ctx.saved_tensors
    d_real = _scale_op(upstream, alpha, ctx.impl) if ctx.needs_input_grad[0] else None
    d_fake = _scale_op(upstream, 1.0 - alpha, ctx.impl) if ctx.needs_input_grad[1] else None
    return d_real, d_fake, None, None


_interpolate_op.register_autograd(_interpolate_backward, setup_context=_interpolate_setup)


# Alpha drawn inside the kernel from a Philox state: the op returns the alphas it drew (float32
# (B,)) beside x_hat, so the backward scales by exactly those and a caller can inspect them.

@torch.library.custom_op("fastgen::gp_interpolate_seeded", mutates_args=())
def _interpolate_seeded_op(real: torch.Tensor, fake: torch.Tensor, rng: torch.Tensor,
                           impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    if impl == "reference" or real.numel() == 0:
        alpha = _rng.philox_uniform_ref(rng, real.shape[0])
        return interpolate_ref(real, fake, alpha), alpha
    from fastgen.kernels import gradient_penalty as kernel

    out = _layout.new_output(real)
    alpha = _layout.new_output(real.new_empty(real.shape[0], dtype=torch.float32))
    kernel.interpolate(real, fake, alpha, out, rng=rng)
    return out, alpha


@_interpolate_seeded_op.register_fake
def _(real, fake, rng, impl):
    return torch.empty_like(real), real.new_empty(real.shape[0], dtype=torch.float32)


def _interpolate_seeded_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.impl = inputs[3]
    ctx.mark_non_differentiable(output[1])


def _interpolate_seeded_backward(ctx, upstream, _grad_alpha):
    d_real, d_fake, _, _ = _interpolate_backward(ctx, upstream)
    return d_real, d_fake, None, None


_interpolate_seeded_op.register_autograd(_interpolate_seeded_backward, setup_context=_interpolate_seeded_setup)


def _check_alpha(alpha: object, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """alpha as a contiguous (B,) tensor: float32 for the kernels, float64 kept for float64 samples."""
    if not isinstance(alpha, torch.Tensor):
        raise TypeError(f"alpha must be a tensor of per-sample weights in [0, 1], got {type(alpha).__name__}")
    if not alpha.dtype.is_floating_point:
        raise TypeError(f"alpha must be a floating tensor, got {alpha.dtype}")
    if alpha.numel() != batch or (alpha.dim() > 1 and any(s != 1 for s in alpha.shape[1:])):
        raise ValueError(f"alpha must hold one weight per sample, shape ({batch},) or ({batch}, 1, ...), "
                         f"got {tuple(alpha.shape)}")
    if alpha.device != device:
        raise ValueError(f"alpha is on {alpha.device} but real is on {device}; they must share a device")
    if alpha.device.type == "cpu" and batch > 0 and not torch.compiler.is_compiling():
        lo, hi = float(alpha.min()), float(alpha.max())
        if not (0.0 <= lo and hi <= 1.0):
            raise ValueError(f"alpha must lie in [0, 1], got values in [{lo}, {hi}]")
    return alpha.reshape(batch).to(torch.promote_types(dtype, torch.float32)).contiguous()


def draw_alpha(batch: int, device: torch.device, generator: torch.Generator | None = None, *,
               seed: int | torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample alpha ~ U[0, 1): float32 (B,).

    Without ``seed``: ``torch.rand`` (from ``generator`` if given), exactly as the textbook WGAN-GP
    draws it, so both see the same interpolates. With ``seed`` (an int, or an int64 Philox state
    [seed, offset] on ``device``): the uniforms :func:`interpolate` draws inside its kernel for that
    seed, alpha_b at stream position offset + b (:func:`fastgen._rng.philox_uniform_ref`).
    """
    if seed is None:
        return torch.rand(batch, device=device, generator=generator)
    if generator is not None:
        raise ValueError("generator must be None when seed is given: alpha comes from exactly one source")
    return _rng.philox_uniform_ref(_validate.check_seed("seed", seed, device), batch)


def interpolate(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None, seed: int | torch.Tensor | None = None,
                impl: str = "auto") -> torch.Tensor:
    """x_hat = alpha_b * real + (1 - alpha_b) * fake, per sample, in one pass.

    Args:
        real, fake: (B, ...) float32 / float16 / bfloat16 / float64 of one shape, dtype and device;
            NCHW, channels_last or any dense batch-major layout (the output keeps real's).
        alpha: per-sample weights of real in [0, 1], shape (B,) or (B, 1, ..., 1); None draws
            them: from ``seed`` inside the kernel when a seed is given, else with ``torch.rand``
            from ``generator`` (see :func:`draw_alpha`).
        generator: the ``torch.Generator`` of the ``torch.rand`` draw.
        seed: Philox seed of an in-kernel draw: an int, or an int64 state tensor [seed, offset] on
            real's device (advance its offset by B between calls, on the device, for fresh alphas).
            alpha_b is the uniform at stream position offset + b, the same numbers
            ``draw_alpha(B, device, seed=seed)`` returns. A seed saves the separate ``torch.rand``
            launch on a GPU; on a CPU the reference draws it with slow integer tensor ops.
        impl: "auto", "triton" or "reference".

    At most one of alpha, generator and seed is given. Differentiable in real and fake (alpha is a
    constant). Returns (B, ...) in real's dtype.
    """
    real = _validate.check_floating("real", real)
    fake = _validate.check_like("fake", fake, "real", real)
    if fake.dtype != real.dtype:
        raise TypeError(f"fake must have real's dtype {real.dtype}, got {fake.dtype}")
    if sum(a is not None for a in (alpha, generator, seed)) > 1:
        raise ValueError("give at most one of alpha, generator and seed: alpha comes from exactly one source")
    rng = _validate.check_seed("seed", seed, real.device)
    if rng is None:
        alpha = _check_alpha(draw_alpha(real.shape[0], real.device, generator) if alpha is None else alpha,
                             real.shape[0], real.device, real.dtype)
    real = _layout.batch_major(real)
    fake = _layout.match_layout(fake, real)
    chosen = _impl.resolve("gp_interpolate", impl, real.device, IMPLS, real.dtype)
    if rng is not None:
        return _interpolate_seeded_op(real, fake, rng, chosen)[0]
    if chosen == "reference":  # plain torch: autograd differentiates it to any order, no custom-op overhead
        return interpolate_ref(real, fake, alpha)
    return _interpolate_op(real, fake, alpha, chosen)


# --- per-sample squared gradient norm --------------------------------------------------------------

@torch.library.custom_op("fastgen::gp_sum_of_squares", mutates_args=())
def _sum_of_squares_op(grad: torch.Tensor, impl: str) -> torch.Tensor:
    if impl == "reference" or grad.numel() == 0:
        return grad_sum_of_squares_ref(grad)
    from fastgen.kernels import gradient_penalty as kernel

    return kernel.sum_of_squares(grad)


@_sum_of_squares_op.register_fake
def _(grad, impl):
    return grad.new_empty((grad.shape[0],), dtype=torch.promote_types(grad.dtype, torch.float32))


def _sum_of_squares_setup(ctx, inputs, output):
    grad, impl = inputs
    ctx.save_for_backward(grad)
    ctx.impl = impl


def _sum_of_squares_backward(ctx, upstream):
    (grad,) = ctx.saved_tensors
    return _scale_op(grad, 2.0 * upstream, ctx.impl), None


_sum_of_squares_op.register_autograd(_sum_of_squares_backward, setup_context=_sum_of_squares_setup)


def grad_sum_of_squares(grad: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """n_b = sum over all non-batch dimensions of grad_b^2, in one pass.

    grad: (B, ...) float32 / float16 / bfloat16 / float64, any dense batch-major layout. Returns
    (B,) float32 (float64 for float64 input). Differentiable to any order: dn/dgrad = 2 grad.
    """
    grad = _layout.batch_major(_validate.check_floating("grad", grad))
    chosen = _impl.resolve("gp_sum_of_squares", impl, grad.device, IMPLS, grad.dtype)
    return _sum_of_squares_op(grad, chosen)


def check_kind(kind: object) -> str:
    if kind not in PENALTY_KINDS:
        raise ValueError(f"kind must be one of {PENALTY_KINDS}, got {kind!r}")
    return kind  # type: ignore[return-value]


def check_weight(weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
    return float(weight)


def penalty_from_grad(grad: torch.Tensor, kind: str = "wgan-gp", weight: float = 10.0, *,
                      impl: str = "auto") -> torch.Tensor:
    """The weighted penalty from the gradient of D at the penalised points, a float32 scalar.

    grad: (B, ...) the gradient of sum(D(x)) with respect to x (create_graph=True so the penalty
    reaches D's parameters). kind "wgan-gp": weight * mean_b (||g_b|| - 1)^2; "wgan-gp-one-sided":
    weight * mean_b max(||g_b|| - 1, 0)^2; "r1" / "r2": weight / 2 * mean_b ||g_b||^2.
    """
    kind, weight = check_kind(kind), check_weight(weight)
    n = grad_sum_of_squares(grad, impl=impl)
    if kind in ("r1", "r2"):
        return 0.5 * weight * n.mean()
    # sqrt's gradient at 0 is inf; a zero gradient norm is a real case (a constant D), so clamp n
    # before the root: the derivative there is then 0 instead of NaN.
    excess = torch.sqrt(n.clamp_min(1e-24)) - 1.0
    if kind == "wgan-gp-one-sided":
        excess = excess.clamp_min(0.0)
    return weight * (excess * excess).mean()
