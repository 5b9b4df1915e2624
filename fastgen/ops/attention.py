"""Fused scaled dot-product attention: O = softmax(scale * Q K^T) V, non-causal, no mask, no dropout.

The self-attention of a U-Net over the H*W positions of a feature map (fastgen/nn/attention.py).
Implementations:

* ``"triton"`` — flash attention (kernels/attention.py): the Lq x Lk score matrix never reaches
  memory; the forward saves two float32 softmax statistics per query row (its maximum and log-sum)
  and the backward recomputes the probabilities from them. Head dims that are multiples of 8 up to 256.
* ``"reference"`` — the CPU path. Where no gradient is needed (sampling):
  ``torch.nn.functional.scaled_dot_product_attention``, torch's own fused kernel. Where one is:
  :func:`attention_ref`, the float32 matmul-softmax-matmul, through torch's autograd,
  differentiable to any order (the backward of SDPA's CPU flash kernel cannot be differentiated
  again). :func:`attention_ref` is also the ground truth the tests use.

The Triton path is the custom op ``fastgen::attention`` (with a fake implementation, so
``torch.compile(fullgraph=True)`` traces it) and its backward op ``fastgen::attention_backward``.

The Triton backward is not itself differentiable: a backward run with grad mode on
(``create_graph=True``, e.g. inside a gradient penalty) runs :func:`attention_backward_ref`
instead, the same math in plain torch (so differentiable again): slower and O(L^2) memory, never a
wrong gradient, and said once in the log.
"""
from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F

from .. import _impl, _layout, _validate

IMPLS = ("triton", "reference")
MAX_HEAD_DIM = 256  # the widest head the Triton kernels take (kernels.attention.MAX_HEAD_DIM)

logger = logging.getLogger("fastgen")


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(scale * q k^T) v in float32 (float64 kept), q's dtype out: the ground truth.

    q: (B, H, Lq, D), k and v: (B, H, Lk, D); scale defaults to 1 / sqrt(D).
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-2, -1)) * scale
    return torch.matmul(torch.softmax(scores, dim=-1), v.to(acc)).to(q.dtype)


def attention_backward_ref(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of :func:`attention_ref` for the upstream gradient dO = ``grad_out``, in float32
    (float64 kept), cast to the inputs' dtype: the math the flash-attention backward computes,

        P = softmax(scale * Q K^T),  dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),
        dQ = scale * dS K,  dK = scale * dS^T Q.

    Plain torch, so with grad mode on the result is differentiable again (in q, k, v and grad_out).
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    qa, ka, va, do = q.to(acc), k.to(acc), v.to(acc), grad_out.to(acc)
    p = torch.softmax(torch.matmul(qa, ka.transpose(-2, -1)) * scale, dim=-1)
    dv = torch.matmul(p.transpose(-2, -1), do)
    dp = torch.matmul(do, va.transpose(-2, -1))
    ds = p * (dp - (p * dp).sum(dim=-1, keepdim=True))
    dq = torch.matmul(ds, ka) * scale
    dk = torch.matmul(ds.transpose(-2, -1), qa) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# --- backward op (Triton) ---------------------------------------------------------------------------

@torch.library.custom_op("fastgen::attention_backward", mutates_args=())
def _attention_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           out: torch.Tensor, stats: torch.Tensor, scale: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of the flash-attention forward, contiguous, in q's dtype."""
    from fastgen.kernels import attention as kernel

    dq = _layout.new_output(q.new_empty(q.shape))
    dk = _layout.new_output(k.new_empty(k.shape))
    dv = _layout.new_output(v.new_empty(v.shape))
    kernel.backward(grad_out, q, k, v, out, stats, scale, dq, dk, dv)
    return dq, dk, dv


@_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, stats, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


# --- forward op (Triton) ----------------------------------------------------------------------------

@torch.library.custom_op("fastgen::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, stats): out contiguous (B, H, Lq, D) in q's dtype, stats float32 (B, H, 2, Lq), the softmax
    row statistics the backward rebuilds P from (kernels.attention.forward), by the Triton kernel."""
    out = _layout.new_output(q.new_empty(q.shape))
    stats = _layout.new_output(q.new_empty(_stats_shape(q), dtype=torch.float32))
    if q.numel() > 0:  # B = 0 or heads = 0: nothing to compute, and no zero-size grid to launch
        from fastgen.kernels import attention as kernel

        kernel.forward(q, k, v, scale, out, stats)
    return out, stats


def _stats_shape(q: torch.Tensor) -> tuple[int, int, int, int]:
    return (q.shape[0], q.shape[1], 2, q.shape[2])


@_attention_op.register_fake
def _(q, k, v, scale):
    return q.new_empty(q.shape), q.new_empty(_stats_shape(q), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    out, stats = output
    ctx.save_for_backward(q, k, v, out, stats)
    ctx.scale = scale
    ctx.mark_non_differentiable(stats)


@functools.lru_cache(maxsize=None)
def _log_second_order_once() -> None:
    logger.warning("fastgen.attention: a backward with create_graph=True runs attention_backward_ref "
                   "(plain torch, O(L^2) memory) instead of the flash-attention backward kernels, which "
                   "are not themselves differentiable")


def _backward(ctx, grad_out, grad_stats):
    q, k, v, out, stats = ctx.saved_tensors
    if torch.is_grad_enabled():
        _log_second_order_once()
        dq, dk, dv = attention_backward_ref(grad_out, q, k, v, ctx.scale)
    elif q.numel() == 0:
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    else:
        dq, dk, dv = _attention_backward_op(grad_out.to(q.dtype), q, k, v, out, stats, ctx.scale)
    needs = ctx.needs_input_grad
    return dq if needs[0] else None, dk if needs[1] else None, dv if needs[2] else None, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


# --- public function --------------------------------------------------------------------------------

def _check_inputs(q: object, k: object, v: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = _validate.check_floating("q", q, min_dim=0)
    k = _validate.check_floating("k", k, min_dim=0)
    v = _validate.check_floating("v", v, min_dim=0)
    if q.dim() != 4:
        raise ValueError(f"q must have shape (B, heads, L, head_dim), got {tuple(q.shape)}")
    if k.dim() != 4 or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f"k must have shape (B, heads, Lk, head_dim) = ({q.shape[0]}, {q.shape[1]}, Lk, "
                         f"{q.shape[3]}) to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    for name, t in (("k", k), ("v", v)):
        _validate.check_same_device(name, t, "q", q)
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    if q.shape[2] == 0 or k.shape[2] == 0 or q.shape[3] == 0:
        raise ValueError(f"q and k need at least one position and head_dim >= 1 (softmax over no keys is "
                         f"undefined), got q {tuple(q.shape)} and k {tuple(k.shape)}")
    return q, k, v


def head_dim_unsupported(head_dim: int) -> str | None:
    """Why the Triton kernels cannot take heads of width ``head_dim`` (None when they can)."""
    if head_dim % 8 != 0 or head_dim > MAX_HEAD_DIM:
        return f"the Triton kernels take a head_dim that is a multiple of 8 up to {MAX_HEAD_DIM}, got {head_dim}"
    return None


@functools.lru_cache(maxsize=None)
def _log_head_dim_fallback_once(reason: str) -> None:
    logger.warning("fastgen.attention: impl='auto' skips 'triton' (%s) and runs 'reference'", reason)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
              impl: str = "auto") -> torch.Tensor:
    """O = softmax(scale * q k^T) v over the last two dimensions, non-causal, no mask, no dropout.

    Args:
        q: (B, heads, Lq, head_dim) float32 / float16 / bfloat16 / float64, any strides (the
            permuted view of a fused qkv projection works without a copy).
        k, v: (B, heads, Lk, head_dim), q's dtype and device (self-attention: Lk = Lq).
        scale: the softmax scale, default 1 / sqrt(head_dim).
        impl: "auto", "triton" or "reference" (see :mod:`fastgen._impl` and the module docstring).
            "auto" runs Triton on CUDA and the reference on CPU; a head_dim the kernels cannot take
            (not a multiple of 8, or > 256) falls back to the reference, logged once; asking for
            "triton" with such a head_dim raises ValueError.

    Softmax statistics and every sum are float32. Differentiable in q, k and v to any order (see
    the module docstring for second order on the Triton path). Returns (B, heads, Lq, head_dim) in
    q's dtype, contiguous except from SDPA, which picks its own layout. B = 0 or heads = 0 gives
    an empty output; Lq, Lk or head_dim = 0 raise ValueError.
    """
    q, k, v = _check_inputs(q, k, v)
    head_dim = q.shape[3]
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    chosen = _impl.resolve("attention", impl, q.device, IMPLS, q.dtype)
    if chosen == "triton":
        reason = head_dim_unsupported(head_dim)
        if reason is not None:
            if (_impl.get_impl() if impl == "auto" else impl) == "triton":  # asked for by name
                raise ValueError(f"fastgen.attention: impl='triton' cannot run: {reason}; use impl='auto' "
                                 f"or 'reference'")
            _log_head_dim_fallback_once(reason)
            chosen = "reference"
    if chosen == "triton":
        return _attention_op(q, k, v, float(scale))[0]
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        # The backward of SDPA's CPU flash kernel cannot be differentiated again, and a gradient
        # penalty needs that: plain torch autograd through the reference can.
        return attention_ref(q, k, v, scale)
    # Nothing to differentiate (sampling): torch's fused kernel, no Lq x Lk matrix in memory.
    return F.scaled_dot_product_attention(q, k, v, scale=float(scale))
