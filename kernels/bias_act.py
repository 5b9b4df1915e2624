"""Bias + activation + gain + clamp in one pass (StyleGAN2's bias_act), forward and first backward.

x is viewed as (outer, C, inner) in storage order: dim's extent C, the bias index of flat position
i is (i // inner) % C. Two launch shapes:

* rows   (a bias and inner >= ROWS_MIN_INNER, e.g. a conv activation (B, C, H, W) with dim=1):
  one program per (row of `inner` elements, chunk of it), so the bias is one scalar load per
  program; the grid is 1-D (row * chunks + chunk), as CUDA caps a grid's other axes at 65535;
* flat   (no bias, or a small inner such as a linear layer's (B, C) with dim=1): contiguous chunks
  of the flat tensor, the channel of each element by an integer division.

The activation codes (ACT) and their formulas are fastgen/ops/bias_act.py's ACTIVATIONS, in order.
"""
import torch
import triton
import triton.language as tl

from . import tuning

ROWS_MIN_INNER = 256
BLOCK = 1024  # elements per program: tuning.py's default (its table or autotuning may pick another)

# Constants of SELU (Klambauer et al. 2017), as torch.nn.functional.selu. constexpr: a jitted
# function may read only constexpr globals (the interpreter allows any; the compiler refuses).
_SELU_SCALE = tl.constexpr(1.0507009873554804934193349852946)
_SELU_ALPHA = tl.constexpr(1.6732632423543772848170429916717)


@triton.jit
def _sigmoid(h):
    e = tl.exp(-tl.abs(h))  # in (0, 1]: no overflow for any h
    return tl.where(h >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _tanh(h):
    t = tl.exp(-2.0 * tl.abs(h))  # in (0, 1]: no overflow for any h
    r = (1.0 - t) / (1.0 + t)
    return tl.where(h < 0, -r, r)


@triton.jit
def _activate(h, alpha, ACT: tl.constexpr):
    """f(h) for float32 h. ACT: 0 linear, 1 relu, 2 lrelu, 3 tanh, 4 sigmoid, 5 elu, 6 selu,
    7 softplus, 8 swish."""
    if ACT == 1:
        y = tl.where(h > 0, h, 0.0)
    elif ACT == 2:
        y = tl.where(h > 0, h, h * alpha)
    elif ACT == 3:
        y = _tanh(h)
    elif ACT == 4:
        y = _sigmoid(h)
    elif ACT == 5:
        y = tl.where(h > 0, h, tl.exp(tl.minimum(h, 0.0)) - 1.0)
    elif ACT == 6:
        y = _SELU_SCALE * tl.where(h > 0, h, _SELU_ALPHA * (tl.exp(tl.minimum(h, 0.0)) - 1.0))
    elif ACT == 7:
        # torch's softplus (beta 1, threshold 20): h itself above 20; else max(h, 0) + log(1 + e^-|h|).
        y = tl.where(h > 20.0, h, tl.maximum(h, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(h))))
    elif ACT == 8:
        y = h * _sigmoid(h)
    else:
        y = h
    return y


@triton.jit
def _derivative(h, alpha, ACT: tl.constexpr):
    """f'(h) for float32 h, with torch's convention at the kinks (relu: 0 at 0; lrelu: alpha at 0)."""
    if ACT == 1:
        d = tl.where(h > 0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where(h > 0, 1.0, alpha)
    elif ACT == 3:
        t = _tanh(h)
        d = 1.0 - t * t
    elif ACT == 4:
        s = _sigmoid(h)
        d = s * (1.0 - s)
    elif ACT == 5:
        d = tl.where(h > 0, 1.0, tl.exp(tl.minimum(h, 0.0)))
    elif ACT == 6:
        d = _SELU_SCALE * tl.where(h > 0, 1.0, _SELU_ALPHA * tl.exp(tl.minimum(h, 0.0)))
    elif ACT == 7:
        d = tl.where(h > 20.0, 1.0, _sigmoid(h))
    elif ACT == 8:
        s = _sigmoid(h)
        d = s + h * s * (1.0 - s)
    else:
        d = h * 0.0 + 1.0
    return d


@triton.jit
def _offsets(numel, inner, C, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """(flat int64 offsets, mask, bias index of each offset — a scalar in rows mode; always in [0, C))."""
    if ROWS:
        chunks = tl.cdiv(inner, BLOCK)
        row = tl.program_id(0) // chunks
        s = (tl.program_id(0) % chunks) * BLOCK + tl.arange(0, BLOCK)
        mask = s < inner
        offs = row.to(tl.int64) * inner + s
        c = row % C
    else:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        c = ((offs // inner) % C).to(tl.int32)
    return offs, mask, c


@triton.jit
def _bias_act_fwd_kernel(x_ptr, b_ptr, y_ptr, numel, inner, C, alpha, gain, clamp,
                         HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr,
                         ROWS: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask, c = _offsets(numel, inner, C, ROWS, BLOCK)
    h = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        h += tl.load(b_ptr + c).to(tl.float32)  # c < C even where masked: no mask needed
    y = _activate(h, alpha, ACT) * gain
    if HAS_CLAMP:
        y = tl.minimum(tl.maximum(y, -clamp), clamp)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_act_bwd_kernel(dy_ptr, x_ptr, b_ptr, dx_ptr, numel, inner, C, alpha, gain, clamp,
                         HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr,
                         ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """dL/dx = dL/dy * gain * f'(x + b) * [ -clamp <= gain * f(x + b) <= clamp ]: the pre-clamp
    output is recomputed from x (torch.clamp passes the gradient where the input lies in [min, max])."""
    offs, mask, c = _offsets(numel, inner, C, ROWS, BLOCK)
    h = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        h += tl.load(b_ptr + c).to(tl.float32)  # c < C even where masked: no mask needed
    dx = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32) * (_derivative(h, alpha, ACT) * gain)
    if HAS_CLAMP:
        y = _activate(h, alpha, ACT) * gain
        dx = tl.where((y >= -clamp) & (y <= clamp), dx, 0.0)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _launch(name: str, kernel, tensors, x: torch.Tensor, b, dim: int, act: int, alpha: float, gain: float,
            clamp) -> None:
    C = x.shape[dim] if x.dim() else 1
    inner = 1
    for n in x.shape[dim + 1:]:
        inner *= n
    numel = x.numel()
    rows = b is not None and inner >= ROWS_MIN_INNER  # rows mode exists for the bias's scalar load

    def launch(config: dict) -> None:
        block = config["BLOCK"]
        grid = (numel // inner * triton.cdiv(inner, block),) if rows else (triton.cdiv(numel, block),)
        kernel[grid](*tensors, numel, inner, C, float(alpha), float(gain), float(-1.0 if clamp is None else clamp),
                     HAS_BIAS=b is not None, ACT=act, HAS_CLAMP=clamp is not None, ROWS=rows, **config)
    # the tile spans a row's inner elements in rows mode, the flat tensor otherwise
    launch(tuning.choose(name, x, inner if rows else numel, bench=launch))


def forward(x: torch.Tensor, b, dim: int, act: int, alpha: float, gain: float, clamp, y: torch.Tensor) -> None:
    """y = clamp(gain * f(x + b)): contiguous x and y (same shape), b contiguous (C,) or None."""
    _launch("bias_act_forward", _bias_act_fwd_kernel, (x, x if b is None else b, y), x, b, dim, act, alpha, gain,
            clamp)


def backward(dy: torch.Tensor, x: torch.Tensor, b, dim: int, act: int, alpha: float, gain: float, clamp,
             dx: torch.Tensor) -> None:
    """dx (float32 or x's dtype, contiguous like x) from dy and the forward's x and b."""
    _launch("bias_act_backward", _bias_act_bwd_kernel, (dy, x, x if b is None else b, dx), x, b, dim, act, alpha,
            gain, clamp)
