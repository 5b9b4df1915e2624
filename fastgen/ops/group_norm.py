"""GroupNorm with a fused prologue and epilogue, as a U-Net's ResBlock uses it.

    h = x + emb[b, c]                               optional prologue: the time-embedding add of
                                                    diffusers' ResnetBlock2D ("default" mode)
    n = (h - mean_g(h)) / sqrt(var_g(h) + eps)      statistics per (sample, group) in float32
    y = n * weight[c] + bias[c]                     optional affine
    y = y * (1 + scale[b, c]) + shift[b, c]         optional epilogue (improved-diffusion's
                                                    use_scale_shift_norm)
    y = silu(y)                                     optional activation, last

Implementations: ``"triton"`` (kernels/group_norm.py), ``"cuda"`` (csrc/group_norm.cu, for 4-D
channels_last x only) and ``"reference"`` (:func:`group_norm_ref`, pure torch: the CPU path and the
ground truth; it runs as plain torch, so autograd and torch.compile see through it and its CPU
backward is torch's fused one). The kernels sit behind the custom op ``fastgen::group_norm`` and its
backward ``fastgen::group_norm_backward``, whose ``impl`` argument names the kernel; the backward
runs the forward's.

The CUDA kernel reads NHWC storage only (coalesced along C, after NVIDIA's NHWC GroupNorm): with
``impl="cuda"`` an x that is not 4-D channels_last raises ImplUnavailableError naming the layout
it needs, rather than being copied to channels_last (a hidden transpose of x, y and both gradients)
or routed to another kernel than the one asked for. ``"auto"`` picks per layout from the table
``fastgen._impl.AUTO_ORDER_BY_OP`` (("group_norm", "cuda", "channels_last") and (..., "nchw")):
triton for both today, as no GPU has timed the CUDA kernel against it yet; the table names the
benchmark rows that would flip the channels_last row.

Backward of the kernel path: with n, z the values before and after the epilogue and dz = dL/dz,

    k[b, c] = weight[c] * (1 + scale[b, c])             dn = k * dz
    dh = rstd * (dn - mean_g(dn) - n * mean_g(dn * n))  = dL/dx;  dL/demb[b, c] = sum_s dh
    dL/dshift = sum_s dz;  dL/dscale = weight * sum_s dz n + bias * sum_s dz
    dL/dweight = sum_{b,s} (1 + scale) dz n;  dL/dbias = sum_{b,s} (1 + scale) dz

The per-(b, c) sums come whole from the backward kernel (Triton: one program owns a group of one
sample, or for a small batch (either layout) per-chunk partial sums added in a fixed order by a
second launch; CUDA: per-chunk partial sums merged in chunk order; no atomics either way); the sums over the batch
are then taken in torch, in a fixed order. Under ``create_graph=True`` (a
gradient penalty) the backward is instead recomputed through the reference with autograd, so it
is itself differentiable to any order.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import _impl, _layout, _native, _validate

IMPLS = ("triton", "cuda", "reference")
_IMPLS_ANY_LAYOUT = ("triton", "reference")  # those that take an x that is not 4-D channels_last
ACTIVATIONS = (None, "silu")


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D channels_last tensor that is not also contiguous, else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def group_norm_ref(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5, *, emb: torch.Tensor | None = None,
                   scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                   activation: str | None = None) -> torch.Tensor:
    """Pure torch, float32 statistics (float64 kept), x's dtype and memory format out.

    x: (B, C, *spatial); weight, bias: (C,); emb, scale, shift: (B, C). Differentiable to any order.
    """
    acc = torch.promote_types(x.dtype, torch.float32)
    h = x.to(acc)
    if emb is not None:
        h = h + emb.to(acc).view(emb.shape + (1,) * (x.dim() - 2))
    y = F.group_norm(h, num_groups, None if weight is None else weight.to(acc),
                     None if bias is None else bias.to(acc), eps)
    if scale is not None or shift is not None:
        per_channel = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        if scale is not None:
            y = y * (1.0 + scale.to(acc).view(per_channel))
        if shift is not None:
            y = y + shift.to(acc).view(per_channel)
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype).contiguous(memory_format=_memory_format(x))


def _new_float32(x: torch.Tensor, shape) -> torch.Tensor:
    """A float32 kernel output on x's device (NaN-filled under FASTGEN_POISON_OUTPUTS=1)."""
    return _layout.new_output(x.new_empty(shape, dtype=torch.float32))


# --- backward op: grad of x and the per-(b, c) sums the parameter gradients are made of ------------

@torch.library.custom_op("fastgen::group_norm_backward", mutates_args=())
def _group_norm_backward_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
                            bias: torch.Tensor | None, emb: torch.Tensor | None, scale: torch.Tensor | None,
                            shift: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor, num_groups: int,
                            silu: bool, impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, sum_s dz, sum_s dz * n, dL/demb): dx like x, the others float32 (B, C). dL/demb =
    sum_s dL/dh is computed whether or not emb was given. impl: "triton" or "cuda" (dy, x
    channels_last)."""
    dx = _layout.new_output(x)
    sums = [_new_float32(x, x.shape[:2]) for _ in range(3)]
    if impl == "cuda":
        _native.cuda_ext().group_norm_backward(dy, x, weight, bias, emb, scale, shift, mean, rstd, num_groups, silu,
                                               dx, *sums)
    elif impl == "triton":
        from fastgen.kernels import group_norm as kernel

        kernel.backward(dy, x, weight, bias, emb, scale, shift, mean, rstd, num_groups, silu, dx, *sums)
    else:
        raise AssertionError(impl)
    return (dx, *sums)


@_group_norm_backward_op.register_fake
def _(dy, x, weight, bias, emb, scale, shift, mean, rstd, num_groups, silu, impl):
    return (torch.empty_like(x),) + tuple(mean.new_empty(x.shape[:2]) for _ in range(3))


# --- forward op -------------------------------------------------------------------------------------

@torch.library.custom_op("fastgen::group_norm", mutates_args=())
def _group_norm_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   emb: torch.Tensor | None, scale: torch.Tensor | None, shift: torch.Tensor | None,
                   num_groups: int, eps: float, silu: bool, impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd): y like x, the group statistics float32 (B, G) for the backward.
    impl: "triton" or "cuda" (x 4-D channels_last)."""
    out = _layout.new_output(x)
    mean, rstd = _new_float32(x, (x.shape[0], num_groups)), _new_float32(x, (x.shape[0], num_groups))
    if impl == "cuda":
        _native.cuda_ext().group_norm_forward(x, weight, bias, emb, scale, shift, num_groups, eps, silu, out, mean, rstd)
    elif impl == "triton":
        from fastgen.kernels import group_norm as kernel

        kernel.forward(x, weight, bias, emb, scale, shift, num_groups, eps, silu, out, mean, rstd)
    else:
        raise AssertionError(impl)
    return out, mean, rstd


@_group_norm_op.register_fake
def _(x, weight, bias, emb, scale, shift, num_groups, eps, silu, impl):
    stats = x.new_empty((x.shape[0], num_groups), dtype=torch.float32)
    return torch.empty_like(x), stats, torch.empty_like(stats)


def _setup_context(ctx, inputs, output):
    x, weight, bias, emb, scale, shift, num_groups, eps, silu, impl = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, emb, scale, shift, mean, rstd)
    ctx.num_groups, ctx.eps, ctx.silu, ctx.impl = num_groups, eps, silu, impl
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, grad_out, grad_mean, grad_rstd):
    x, weight, bias, emb, scale, shift, mean, rstd = ctx.saved_tensors
    needs = ctx.needs_input_grad[:6]
    if torch.is_grad_enabled():
        grads = _differentiable_backward(ctx, grad_out, (x, weight, bias, emb, scale, shift), needs)
    else:
        grads = _fused_backward(ctx, grad_out, x, weight, bias, emb, scale, shift, mean, rstd, needs)
    return (*grads, None, None, None, None)


def _differentiable_backward(ctx, grad_out, inputs, needs):
    """create_graph=True: autograd through the reference, recomputed on the saved inputs, which carry
    their own history, so the gradient can be differentiated again (e.g. by a gradient penalty)."""
    x, weight, bias, emb, scale, shift = inputs
    y = group_norm_ref(x, ctx.num_groups, weight, bias, ctx.eps, emb=emb, scale=scale, shift=shift,
                       activation="silu" if ctx.silu else None)
    wanted = [t for t, need in zip(inputs, needs) if need]
    found = iter(torch.autograd.grad(y, wanted, grad_out, create_graph=True))
    return tuple(next(found) if need else None for need in needs)


def _fused_backward(ctx, grad_out, x, weight, bias, emb, scale, shift, mean, rstd, needs):
    dy = _layout.match_layout(grad_out.to(x.dtype), x)
    dx, sum_dz, sum_dz_n, d_emb = _group_norm_backward_op(dy, x, weight, bias, emb, scale, shift, mean, rstd,
                                                          ctx.num_groups, ctx.silu, ctx.impl)
    acc = torch.float32  # the kernel's per-(b, c) sums; the results are cast to each input's dtype
    one_plus = None if scale is None else 1.0 + scale.to(acc)
    d_weight = d_bias = d_scale = None
    if needs[1]:
        d_weight = (sum_dz_n if one_plus is None else one_plus * sum_dz_n).sum(0).to(weight.dtype)
    if needs[2]:
        d_bias = (sum_dz if one_plus is None else one_plus * sum_dz).sum(0).to(bias.dtype)
    if needs[4]:
        d_scale = sum_dz_n if weight is None else sum_dz_n * weight.to(acc)
        d_scale = (d_scale if bias is None else d_scale + sum_dz * bias.to(acc)).to(scale.dtype)
    return (dx if needs[0] else None, d_weight, d_bias,
            d_emb.to(emb.dtype) if needs[3] else None, d_scale,
            sum_dz.to(shift.dtype) if needs[5] else None)


_group_norm_op.register_autograd(_backward, setup_context=_setup_context)


# --- public function --------------------------------------------------------------------------------

def _check_param(name: str, t: object, shape: tuple, x: torch.Tensor) -> torch.Tensor | None:
    """None, or a tensor of ``shape`` with x's dtype and device, returned contiguous."""
    if t is None:
        return None
    t = _validate.check_floating(name, t, min_dim=0)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    _validate.check_same_device(name, t, "x", x)
    if t.dtype != x.dtype:
        raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    return t.contiguous()


def _is_nhwc(x: torch.Tensor) -> bool:
    """x's storage is NHWC, the only layout impl="cuda" reads (also true of an x that is contiguous
    as well, such as (B, C, 1, 1), whose two layouts share one storage order)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5, *, emb: torch.Tensor | None = None,
               scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
               activation: str | None = None, impl: str = "auto") -> torch.Tensor:
    """silu?((GroupNorm(x + emb) * weight + bias) * (1 + scale) + shift), fused.

    Args:
        x: (B, C, *spatial) float32 / float16 / bfloat16 / float64, NCHW (any dense layout) or
            channels_last (the output keeps channels_last; every other layout comes out
            contiguous). Statistics are float32 (float64 inputs run the reference in float64).
            A batch of 0 gives an empty output; C = 0 or an empty spatial size raise ValueError.
        num_groups: a positive divisor of C.
        weight, bias: (C,) affine parameters, or None.
        eps: added to the group variance, a finite number >= 0.
        emb: (B, C) added to x before the statistics, or None.
        scale, shift: (B, C) applied after the affine, or None.
        activation: None or "silu".
        impl: "auto", "triton", "cuda" or "reference" (see :mod:`fastgen._impl`): "auto" runs
            triton on CUDA tensors and the reference on CPU tensors and for float64. "cuda" takes
            a 4-D channels_last x only (NHWC storage) and raises ImplUnavailableError for any
            other layout.

    weight, bias, emb, scale and shift must have x's dtype and device (a mix, such as float32
    weights with a bfloat16 x under autocast, is a TypeError: cast them first).

    Returns (B, C, *spatial) in x's dtype. Differentiable in x, weight, bias, emb, scale and shift,
    to any order (double backward runs through the reference).
    """
    x = _validate.check_floating("x", x, min_dim=2)
    B, C = x.shape[:2]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups <= 0:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if C % num_groups != 0:
        raise ValueError(f"num_groups must divide the channel count {C}, got {num_groups}")
    if C == 0 or math.prod(x.shape[2:]) == 0:
        raise ValueError(f"x must have at least one channel and one spatial position, got shape {tuple(x.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    weight, bias = _check_param("weight", weight, (C,), x), _check_param("bias", bias, (C,), x)
    emb, scale, shift = (_check_param(n, t, (B, C), x) for n, t in (("emb", emb), ("scale", scale), ("shift", shift)))
    # The kernels walk contiguous and 4-D channels_last tensors; anything else is made contiguous.
    if _memory_format(x) != torch.channels_last:
        x = x.contiguous()
    nhwc = _is_nhwc(x)
    if not nhwc and (_impl.get_impl() if impl == "auto" else impl) == "cuda":
        raise _impl.ImplUnavailableError(
            f"fastgen.group_norm: impl='cuda' takes a 4-D channels_last x (NHWC storage), got shape "
            f"{tuple(x.shape)} with strides {x.stride()}: pass x.to(memory_format=torch.channels_last), or use "
            f"impl='triton' / 'auto', which take any layout")
    # "auto" never lands on the CUDA kernel with an x it cannot read (say triton failed to import).
    chosen = _impl.resolve("group_norm", impl, x.device, IMPLS if nhwc else _IMPLS_ANY_LAYOUT, x.dtype,
                           "channels_last" if nhwc else "nchw")
    if chosen == "reference" or B == 0:  # an empty batch launches nothing: the reference returns it
        return group_norm_ref(x, num_groups, weight, bias, eps, emb=emb, scale=scale, shift=shift,
                              activation=activation)
    out, _, _ = _group_norm_op(x, weight, bias, emb, scale, shift, num_groups, float(eps), activation == "silu", chosen)
    return out
