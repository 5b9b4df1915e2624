"""Bias, activation, gain and clamp in one pass: StyleGAN2's ``bias_act`` (Karras et al. 2020;
the semantics of StyleGAN2-ADA's ``torch_utils.ops.bias_act``, reimplemented here)::

    h = x + b (broadcast along ``dim``)      optional bias
    y = f(h; alpha) * gain                   activation with its shape parameter, then the gain
    y = clamp(y, -clamp, +clamp)             optional (StyleGAN2-ADA's fp16 "conv_clamp")

Each activation has the default alpha and gain of StyleGAN2-ADA (:data:`ACTIVATIONS`): the gains
``sqrt(2)`` of relu / lrelu / swish keep the activations' second moment (He et al. 2015), which
StyleGAN2's equalised learning rate relies on.

Implementations: ``"triton"`` (kernels/bias_act.py: one read of x, one write of y; the backward
reads dy and x and recomputes the activation) and ``"reference"`` (:func:`bias_act_ref`, pure torch,
the CPU path). The backward is the fused kernel for a first derivative; under ``create_graph=True``
(R1 or path-length regularisation differentiate through the discriminator / generator twice) it is
recomputed through the reference with autograd, so it can be differentiated again, to any order.
The bias gradient is the sum of dL/dx over every dimension but ``dim``, taken in float32 by torch.
"""
from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F

from .. import _impl, _layout, _validate

IMPLS = ("triton", "reference")

# name -> (kernel code, default alpha, default gain). The order of the codes is kernels/bias_act.py's.
ACTIVATIONS = {
    "linear": (0, 0.0, 1.0),
    "relu": (1, 0.0, math.sqrt(2)),
    "lrelu": (2, 0.2, math.sqrt(2)),
    "tanh": (3, 0.0, 1.0),
    "sigmoid": (4, 0.0, 1.0),
    "elu": (5, 0.0, 1.0),
    "selu": (6, 0.0, 1.0),
    "softplus": (7, 0.0, 1.0),
    "swish": (8, 0.0, math.sqrt(2)),
}


def _activation(h: torch.Tensor, act: str, alpha: float) -> torch.Tensor:
    """torch's own functions: their gradients (and their conventions at kinks) are the ground truth."""
    if act == "linear":
        return h
    if act == "relu":
        return F.relu(h)
    if act == "lrelu":
        return F.leaky_relu(h, alpha)
    if act == "tanh":
        return torch.tanh(h)
    if act == "sigmoid":
        return torch.sigmoid(h)
    if act == "elu":
        return F.elu(h)
    if act == "selu":
        return F.selu(h)
    if act == "softplus":
        return F.softplus(h)
    if act == "swish":
        return h * torch.sigmoid(h)
    raise AssertionError(act)


def bias_act_ref(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
                 alpha: float | None = None, gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    """Pure torch: computed in float32 (float64 kept), returned in x's dtype. Differentiable to any order.

    x: any shape; b: (x.shape[dim],) or None. alpha / gain: None for the activation's default.
    """
    _, default_alpha, default_gain = ACTIVATIONS[act]
    alpha = default_alpha if alpha is None else float(alpha)
    gain = default_gain if gain is None else float(gain)
    acc = torch.promote_types(x.dtype, torch.float32)
    h = x.to(acc)
    if b is not None:
        dim %= x.dim()
        h = h + b.to(acc).reshape([-1 if i == dim else 1 for i in range(x.dim())])
    y = _activation(h, act, alpha)
    if gain != 1:
        y = y * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y.to(x.dtype)


# --- custom ops: the kernels behind torch.library, so torch.compile traces them ------------------

@torch.library.custom_op("fastgen::bias_act", mutates_args=())
def _bias_act_op(x: torch.Tensor, b: torch.Tensor | None, dim: int, act: int, alpha: float, gain: float,
                 clamp: float | None) -> torch.Tensor:
    """y like x (contiguous) from the Triton kernel."""
    from fastgen.kernels import bias_act as kernel

    y = _layout.new_output(x)
    kernel.forward(x, b, dim, act, alpha, gain, clamp, y)
    return y


@_bias_act_op.register_fake
def _(x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x)


@torch.library.custom_op("fastgen::bias_act_backward", mutates_args=())
def _bias_act_backward_op(dy: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None, dim: int, act: int,
                          alpha: float, gain: float, clamp: float | None, need_db: bool) -> torch.Tensor:
    """dL/dx, in float32 when the bias gradient is summed from it (need_db), else in x's dtype."""
    from fastgen.kernels import bias_act as kernel

    dx = _layout.new_output(x, torch.float32 if need_db else None)
    kernel.backward(dy, x, b, dim, act, alpha, gain, clamp, dx)
    return dx


@_bias_act_backward_op.register_fake
def _(dy, x, b, dim, act, alpha, gain, clamp, need_db):
    return torch.empty_like(x, dtype=torch.float32 if need_db else None)


_NAMES = {code: name for name, (code, _, _) in ACTIVATIONS.items()}


def _setup_context(ctx, inputs, output):
    x, b, dim, act, alpha, gain, clamp = inputs
    ctx.save_for_backward(x, b)
    ctx.dim, ctx.act, ctx.alpha, ctx.gain, ctx.clamp = dim, act, alpha, gain, clamp


def _backward(ctx, grad_y):
    x, b = ctx.saved_tensors
    need_dx, need_db = ctx.needs_input_grad[:2]
    if torch.is_grad_enabled():
        # create_graph=True: autograd through the reference on the saved inputs (which carry their
        # own history), so this gradient is itself differentiable.
        y = bias_act_ref(x, b, ctx.dim, _NAMES[ctx.act], ctx.alpha, ctx.gain, ctx.clamp)
        wanted = [t for t, need in ((x, need_dx), (b, need_db)) if need]
        found = iter(torch.autograd.grad(y, wanted, grad_y, create_graph=True))
        dx = next(found) if need_dx else None
        db = next(found) if need_db else None
        return dx, db, None, None, None, None, None
    dy = grad_y.to(x.dtype).contiguous()
    dx = _bias_act_backward_op(dy, x, b, ctx.dim, ctx.act, ctx.alpha, ctx.gain, ctx.clamp, bool(need_db))
    db = None
    if need_db:
        other = [d for d in range(x.dim()) if d != ctx.dim]
        db = (dx.sum(other) if other else dx).to(b.dtype)
    return (dx.to(x.dtype) if need_dx else None), db, None, None, None, None, None


_bias_act_op.register_autograd(_backward, setup_context=_setup_context)


# --- public function --------------------------------------------------------------------------------

def _check_number(name: str, value: object, *, positive_or_zero: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number or None, got {value!r}")
    if positive_or_zero and value < 0:
        raise ValueError(f"{name} must be >= 0 or None, got {value!r}")
    return float(value)


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             impl: str = "auto") -> torch.Tensor:
    """``clamp(f(x + b; alpha) * gain, -clamp, clamp)``, fused (StyleGAN2-ADA's ``bias_act``).

    Args:
        x: any shape, float32 / float16 / bfloat16 / float64, any layout (a non-contiguous x is
            made contiguous; the output is contiguous).
        b: (x.shape[dim],) bias in x's dtype and device, or None.
        dim: the dimension of x that b runs along (ignored when b is None); negative counts from the end.
        act: one of :data:`ACTIVATIONS`: "linear", "relu", "lrelu", "tanh", "sigmoid", "elu",
            "selu", "softplus", "swish".
        alpha: the activation's shape parameter (lrelu's negative slope; default 0.2), or None
            for its default. Only lrelu reads it.
        gain: the output scale, or None for the activation's default (sqrt(2) for relu, lrelu
            and swish, else 1).
        clamp: clamp the output to [-clamp, clamp] (after the gain), a number >= 0, or None.
        impl: "auto" (triton on CUDA tensors, the reference on CPU and for float64), "triton" or
            "reference".

    Returns y with x's shape and dtype; activations are computed in float32. Differentiable in x
    and b, to any order (see the module docstring).
    """
    x = _validate.check_floating("x", x, min_dim=0)
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {tuple(ACTIVATIONS)}, got {act!r}")
    alpha, gain = _check_number("alpha", alpha), _check_number("gain", gain)
    clamp = _check_number("clamp", clamp, positive_or_zero=True)
    if b is not None:
        if isinstance(dim, bool):
            raise TypeError("dim must be an int, got bool")
        try:
            dim = operator.index(dim)
        except TypeError:
            raise TypeError(f"dim must be an int, got {type(dim).__name__}") from None
        if not -x.dim() <= dim < x.dim():
            raise ValueError(f"dim must be in [{-x.dim()}, {x.dim() - 1}] for x of shape {tuple(x.shape)}, got {dim}")
        dim %= x.dim()
        b = _validate.check_floating("b", b, min_dim=1)
        if b.shape != (x.shape[dim],):
            raise ValueError(f"b must have shape (x.shape[dim],) = ({x.shape[dim]},), got {tuple(b.shape)}")
        _validate.check_same_device("b", b, "x", x)
        if b.dtype != x.dtype:
            raise TypeError(f"b must have x's dtype {x.dtype}, got {b.dtype}")
        b = b.contiguous()
    else:
        dim = 0
    chosen = _impl.resolve("bias_act", impl, x.device, IMPLS, x.dtype)
    if chosen == "reference" or x.numel() == 0:
        return bias_act_ref(x, b, dim, act, alpha, gain, clamp)
    code, default_alpha, default_gain = ACTIVATIONS[act]
    return _bias_act_op(x.contiguous(), b, dim if x.dim() else 0, code,
                        default_alpha if alpha is None else alpha, default_gain if gain is None else gain, clamp)
