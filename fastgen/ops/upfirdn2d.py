"""Upsample, pad, FIR-filter, downsample: StyleGAN2's ``upfirdn2d`` (Karras et al. 2020; the
semantics of StyleGAN2-ADA's ``torch_utils.ops.upfirdn2d``, reimplemented here), per channel:

1. upsample by inserting ``up - 1`` zeros after each pixel;
2. pad with zeros (``padding`` is with respect to the upsampled image; negative crops);
3. convolve with the FIR filter ``f`` (a correlation with ``flip_filter=True``), keeping only
   outputs whose footprint lies inside the padded image ("valid");
4. downsample by keeping every ``down``-th pixel.

The filter is scaled by ``gain ** (f.ndim / 2)`` (a separable 1-D filter runs along x then y, so
the image gains ``gain`` either way). Output size per axis: ``(in * up + pad0 + pad1 - taps) // down + 1``.

Implementations: ``"triton"`` (kernels/upfirdn2d.py: reads x directly, never materialising the
upsampled or padded image) and ``"reference"`` (:func:`upfirdn2d_ref`: reshape + pad + depthwise
``conv2d`` + slicing, the CPU path).

Gradients: with respect to x, to any order. The adjoint of the op is the op itself with up and
down swapped, the filter flipped and the padding moved (:func:`_adjoint_padding`), so the
backward of the kernel path is another call of the same differentiable op, and R1 / path-length
regularisation can differentiate through it twice. The filter is a constant (as in StyleGAN2): an
``f`` that requires grad is refused rather than silently left without a gradient.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from .. import _impl, _validate

IMPLS = ("triton", "reference")


# --- arguments ------------------------------------------------------------------------------------

def _int(name: str, value: object, minimum: int | None) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a list of ints, got {type(value).__name__}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _pair(name: str, value: object) -> tuple[int, int]:
    """An int or [x, y] -> (x, y), each >= 1."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair [x, y], got {value!r}")
        return _int(name, value[0], 1), _int(name, value[1], 1)
    v = _int(name, value, 1)
    return v, v


def _padding(value: object) -> tuple[int, int, int, int]:
    """An int, [x, y] or [x0, x1, y0, y1] -> (x0, x1, y0, y1); negative values crop."""
    if isinstance(value, (list, tuple)):
        if len(value) == 2:
            px, py = (_int("padding", v, None) for v in value)
            return px, px, py, py
        if len(value) == 4:
            return tuple(_int("padding", v, None) for v in value)  # type: ignore[return-value]
        raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1], got {value!r}")
    p = _int("padding", value, None)
    return p, p, p, p


def _filter(f: object, x: torch.Tensor) -> torch.Tensor:
    """The filter as given (1-D separable or 2-D), checked; None becomes the 1x1 identity."""
    if f is None:
        return torch.ones(1, 1, dtype=torch.float32, device=x.device)
    f = _validate.check_floating("f", f, min_dim=0)
    if f.dim() not in (1, 2):
        raise ValueError(f"f must be a 1-D (separable) or 2-D FIR filter, got shape {tuple(f.shape)}")
    if f.numel() == 0:
        raise ValueError(f"f must have at least one tap, got shape {tuple(f.shape)}")
    _validate.check_same_device("f", f, "x", x)
    if f.requires_grad:
        raise ValueError("f requires grad, but upfirdn2d treats the filter as a constant (no gradient is "
                         "computed for it): pass f.detach()")
    return f


def _taps(f: torch.Tensor) -> tuple[int, int]:
    """(taps along x, taps along y)."""
    return (f.shape[0], f.shape[0]) if f.dim() == 1 else (f.shape[1], f.shape[0])


def _output_size(x: torch.Tensor, f: torch.Tensor, up, down, pad) -> tuple[int, int]:
    kx, ky = _taps(f)
    H, W = x.shape[2:]
    oh = (H * up[1] + pad[2] + pad[3] - ky) // down[1] + 1
    ow = (W * up[0] + pad[0] + pad[1] - kx) // down[0] + 1
    return oh, ow


# --- reference ------------------------------------------------------------------------------------

def upfirdn2d_ref(x: torch.Tensor, f: torch.Tensor | None, up=1, down=1, padding=0, flip_filter: bool = False,
                  gain: float = 1.0) -> torch.Tensor:
    """Pure torch: zero insertion by reshape + pad, padding / cropping, a depthwise conv2d, slicing.

    x (B, C, H, W) any float dtype (computed in float32, float64 kept, returned in x's dtype);
    f None, (taps,) or (KH, KW). Differentiable in x to any order.
    """
    f = _filter(f, x)
    upx, upy = _pair("up", up)
    downx, downy = _pair("down", down)
    px0, px1, py0, py1 = _padding(padding)
    acc = torch.promote_types(x.dtype, torch.float32)
    B, C, H, W = x.shape
    h = x.to(acc)
    if upx > 1 or upy > 1:  # each pixel followed by up - 1 zeros, along each axis
        h = F.pad(h.reshape(B, C, H, 1, W, 1), [0, upx - 1, 0, 0, 0, upy - 1]).reshape(B, C, H * upy, W * upx)
    h = F.pad(h, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    h = h[:, :, max(-py0, 0): h.shape[2] - max(-py1, 0), max(-px0, 0): h.shape[3] - max(-px1, 0)]
    g = f.to(acc) * (gain ** (f.dim() / 2))
    if not flip_filter:  # conv2d correlates: a convolution flips the filter
        g = g.flip(list(range(g.dim())))
    if g.dim() == 2:
        h = F.conv2d(h, g[None, None].expand(C, 1, *g.shape), groups=C)
    else:
        h = F.conv2d(h, g[None, None, None, :].expand(C, 1, 1, g.numel()), groups=C)
        h = F.conv2d(h, g[None, None, :, None].expand(C, 1, g.numel(), 1), groups=C)
    return h[:, :, ::downy, ::downx].to(x.dtype)


# --- the kernel path: a custom op whose backward is the op again ---------------------------------

def _effective_filter(f: torch.Tensor, flip_filter: bool, gain: float) -> torch.Tensor:
    """The 2-D float32 correlation filter the kernel applies."""
    g = f.to(torch.float32)
    g = torch.outer(g, g) if g.dim() == 1 else g  # separable: along x then y = their outer product
    g = g * gain
    return (g if flip_filter else g.flip([0, 1])).contiguous()


@torch.library.custom_op("fastgen::upfirdn2d", mutates_args=())
def _upfirdn2d_op(x: torch.Tensor, g: torch.Tensor, upx: int, upy: int, downx: int, downy: int, px0: int,
                  px1: int, py0: int, py1: int, out_h: int, out_w: int) -> torch.Tensor:
    """y (B, C, out_h, out_w) in x's dtype; g the effective float32 (KH, KW) correlation filter."""
    from fastgen.kernels import upfirdn2d as kernel

    y = x.new_empty(x.shape[:2] + (out_h, out_w))
    kernel.upfirdn2d(x, g, (upx, upy), (downx, downy), (px0, px1, py0, py1), y)
    return y


@_upfirdn2d_op.register_fake
def _(x, g, upx, upy, downx, downy, px0, px1, py0, py1, out_h, out_w):
    return x.new_empty(x.shape[:2] + (out_h, out_w))


def _adjoint_padding(n: int, m: int, up: int, down: int, taps: int, pad0: int) -> tuple[int, int]:
    """Padding of the adjoint along one axis (input length n, output length m).

    Forward: y[o] = sum_t g[t] z[o * down + t] with z[j] = x[(j - pad0) / up]. Its adjoint is
    xbar[i] = sum_o ybar[o] g[i * up + pad0 - o * down]: upsample ybar by ``down``, correlate with
    the flipped g after padding ``taps - 1 - pad0`` before, keep every ``up``-th sample; the padding
    after makes the result exactly n long.
    """
    before = taps - 1 - pad0
    after = (n - 1) * up + taps - m * down - before
    return before, after


def _setup_context(ctx, inputs, output):
    x, g, upx, upy, downx, downy, px0, px1, py0, py1, out_h, out_w = inputs
    ctx.save_for_backward(g)
    ctx.args = (x.shape[2], x.shape[3], upx, upy, downx, downy, px0, py0, out_h, out_w)


def _backward(ctx, dy):
    (g,) = ctx.saved_tensors
    H, W, upx, upy, downx, downy, px0, py0, out_h, out_w = ctx.args
    KH, KW = g.shape
    bx0, bx1 = _adjoint_padding(W, out_w, upx, downx, KW, px0)
    by0, by1 = _adjoint_padding(H, out_h, upy, downy, KH, py0)
    # up and down swap; the correlation filter is flipped. The call is the differentiable op itself,
    # so this gradient has a gradient too.
    dx = _upfirdn2d_op(dy.contiguous(), g.flip([0, 1]).contiguous(), downx, downy, upx, upy, bx0, bx1, by0, by1, H, W)
    return dx, None, None, None, None, None, None, None, None, None, None, None


_upfirdn2d_op.register_autograd(_backward, setup_context=_setup_context)


# --- public function --------------------------------------------------------------------------------

def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up=1, down=1, padding=0, flip_filter: bool = False,
              gain: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """Upsample, pad, FIR-filter and downsample each channel of a batch of images (StyleGAN2's upfirdn2d).

    Args:
        x: (B, C, H, W) float32 / float16 / bfloat16 / float64, any layout (the output is contiguous).
        f: the FIR filter: (taps,) separable (applied along x, then y), (KH, KW), or None (identity);
            any float dtype (used in float32), on x's device, not requiring grad.
        up: upsampling factor, an int >= 1 or [x, y].
        down: downsampling factor, an int >= 1 or [x, y].
        padding: zeros added around the *upsampled* image (negative crops): an int, [x, y] or
            [x_before, x_after, y_before, y_after].
        flip_filter: False: convolution; True: correlation.
        gain: overall scale of the signal; the filter is multiplied by ``gain ** (f.ndim / 2)``.
        impl: "auto" (triton on CUDA tensors; the reference on CPU and for float64), "triton" or
            "reference".

    Returns (B, C, (H * up_y + pad_y0 + pad_y1 - KH) // down_y + 1, (W * up_x + ...) // down_x + 1)
    in x's dtype, accumulated in float32. Raises ValueError when that size is not positive.
    Differentiable in x to any order.
    """
    x = _validate.check_floating("x", x, min_dim=0)
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    f = _filter(f, x)
    up, down, pad = _pair("up", up), _pair("down", down), _padding(padding)
    if not isinstance(flip_filter, bool):
        raise TypeError(f"flip_filter must be a bool, got {type(flip_filter).__name__}")
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not gain == gain:
        raise TypeError(f"gain must be a number, got {gain!r}")
    out_h, out_w = _output_size(x, f, up, down, pad)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"upfirdn2d of a {x.shape[2]}x{x.shape[3]} image with up={up}, down={down}, padding={pad} "
                         f"and a filter of shape {tuple(f.shape)} has output size {out_h}x{out_w}: nothing is left")
    chosen = _impl.resolve("upfirdn2d", impl, x.device, IMPLS, x.dtype)
    if chosen == "reference" or x.numel() == 0:
        return upfirdn2d_ref(x, f, up, down, pad, flip_filter, gain)
    g = _effective_filter(f, flip_filter, float(gain))
    return _upfirdn2d_op(x.contiguous(), g, *up, *down, *pad, out_h, out_w)
