"""Nearest codebook entry per row (the quantisation step of a VQ-VAE), never materialising N x K.

    index_n = argmin_k ||x_n - c_k||^2 = argmin_k (||c_k||^2 - 2 x_n . c_k)

The contract, precisely. The score s_nk = ||c_k||^2 - 2 x_n . c_k is computed in float32 from the
inputs' values (float16 / bfloat16 convert exactly to float32, and their products are exact in
float32, so only the order of the float32 sums differs between implementations); float64 inputs
run the reference in float64. The result equals the argmin of the exact squared distances (and
``torch.cdist(x, codebook).argmin(1)``) wherever the two smallest distances of a row differ by
more than float32 rounding of the score (a few ulp of ||x_n||^2 + ||c_k||^2); within that margin
either index may come back. Exact ties (duplicate codes, or inputs whose scores are exact in
float32, such as small integers) go to the lowest index, as torch.argmin's do. cdist itself is no
finer: for more than 25 rows or codes it computes the same ||x||^2 + ||c||^2 - 2 x.c through a
GEMM (``compute_mode`` "use_mm_for_euclid_dist_if_necessary"), in the inputs' dtype, so in
bfloat16 its distances carry bfloat16 rounding and its argmin is coarser than this op's (and its
direct path, used for <= 25 rows and codes, has no bfloat16 CPU kernel in torch 2.13). The tests
compare with cdist of the float32 copies of the inputs: the same float32 problem this op solves.

Non-finite inputs follow torch.argmin's rule on the scores: a NaN score is smaller than any number
and the first NaN wins. A row of x containing NaN therefore maps to 0 (all its scores are NaN), and
a code containing NaN attracts every row when it is the first such code. Infinities give scores of
+-inf or NaN under the same rule; callers wanting an error should check ``torch.isfinite`` first
(the op does not, because on a GPU that check costs a device synchronisation).

Implementations: the chunked reference below (any device; peak extra memory one
``chunk_elements`` float32 tile, 128 MiB by default) and a fused Triton kernel
(``kernels/vq_nearest.py``: tl.dot tiles and a running min/argmin in registers). Indices are not
differentiable; the straight-through gradient lives in :class:`fastgen.nn.VectorQuantizer`.
"""
from __future__ import annotations

import torch

from .. import _impl, _validate

IMPLS = ("triton", "reference")
DEFAULT_CHUNK_ELEMENTS = 1 << 25  # 128 MiB of float32 scores: N=262144, K=8192 runs in 4096-row chunks


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def code_norms(codebook: torch.Tensor) -> torch.Tensor:
    """||c_k||^2 of each code, float32 (K,) (float64 for a float64 codebook)."""
    c = codebook.to(_acc_dtype(codebook.dtype))
    return (c * c).sum(dim=1)


def vq_nearest_ref(x: torch.Tensor, codebook: torch.Tensor, *,
                   chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """Pure-torch nearest code, int64 (N,), for x (N, D) and codebook (K, D) of one float dtype.

    Works through tiles of at most ``chunk_elements`` scores (rows x codes), so the largest
    intermediate is one float32 tile of that many elements (plus the float32 copies of one row
    chunk and one code chunk); the running (min, argmin) per row merges the tiles with the rule
    of the module docstring (strictly smaller wins, NaN before numbers, lowest index on ties).
    """
    chunk_elements = _validate.check_int("chunk_elements", chunk_elements, 1)
    n, k = x.shape[0], codebook.shape[0]
    acc = _acc_dtype(x.dtype)
    out = torch.zeros(n, dtype=torch.int64, device=x.device)
    if n == 0:
        return out
    cn2 = code_norms(codebook)
    codes_per_tile = min(k, chunk_elements)
    rows_per_tile = max(1, chunk_elements // codes_per_tile)
    for r0 in range(0, n, rows_per_tile):
        xr = x[r0:r0 + rows_per_tile].to(acc)
        best = torch.full((xr.shape[0],), float("inf"), dtype=acc, device=x.device)
        best_k = out[r0:r0 + rows_per_tile]
        for k0 in range(0, k, codes_per_tile):
            c = codebook[k0:k0 + codes_per_tile].to(acc)
            scores = torch.addmm(cn2[k0:k0 + codes_per_tile], xr, c.t(), alpha=-2.0)  # the only big tile
            tile_min, tile_arg = scores.min(dim=1)  # first minimum; NaN is the minimum, as in argmin
            del scores
            better = (tile_min < best) | (tile_min.isnan() & ~best.isnan())
            best_k.copy_(torch.where(better, tile_arg + k0, best_k))
            best = torch.where(better, tile_min, best)
    return out


def _check_inputs(x: object, codebook: object) -> tuple[torch.Tensor, torch.Tensor]:
    x = _validate.check_floating("x", x)
    codebook = _validate.check_floating("codebook", codebook)
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N, D) (reshape a BCHW map to (B*H*W, C) channels last), got shape "
                         f"{tuple(x.shape)}")
    if codebook.dim() != 2:
        raise ValueError(f"codebook must be 2-D (K, D), got shape {tuple(codebook.shape)}")
    if codebook.shape[0] == 0:
        raise ValueError("codebook must hold at least one code, got shape (0, D)")
    if x.shape[1] == 0:
        raise ValueError(f"x must have a feature dimension D >= 1, got shape {tuple(x.shape)}")
    if codebook.shape[1] != x.shape[1]:
        raise ValueError(f"codebook must have x's feature dimension D={x.shape[1]}, got shape {tuple(codebook.shape)}")
    if codebook.dtype != x.dtype:
        raise TypeError(f"codebook must have x's dtype {x.dtype}, got {codebook.dtype}")
    _validate.check_same_device("codebook", codebook, "x", x)
    return x, codebook


@torch.library.custom_op("fastgen::vq_nearest", mutates_args=())
def _vq_nearest_op(x: torch.Tensor, codebook: torch.Tensor, impl: str) -> torch.Tensor:
    if impl == "reference":
        return vq_nearest_ref(x, codebook)
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    if out.numel() == 0:
        return out
    if impl == "triton":
        from fastgen.kernels import vq_nearest as kernel

        kernel.vq_nearest(x, codebook, code_norms(codebook), out)
        return out
    raise AssertionError(impl)


@_vq_nearest_op.register_fake
def _(x, codebook, impl):
    return x.new_empty(x.shape[0], dtype=torch.int64)


def vq_nearest(x: torch.Tensor, codebook: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """Index of the nearest code (squared Euclidean distance) for each row of ``x``.

    Args:
        x: (N, D) float32 / float16 / bfloat16 / float64, any strides (a BCHW encoder output is
            ``z.permute(0, 2, 3, 1).reshape(-1, C)``).
        codebook: (K, D), K >= 1, x's dtype and device, any strides.
        impl: "auto", "triton" or "reference" (see :mod:`fastgen._impl`).

    Returns int64 (N,) in [0, K): ``torch.cdist(x, codebook).argmin(1)`` up to near-ties within
    float32 rounding, lowest index on exact ties (the module docstring has the precise rule and
    the NaN rule). Not differentiable (indices); inputs that require grad are read detached.
    """
    x, codebook = _check_inputs(x, codebook)
    chosen = _impl.resolve("vq_nearest", impl, x.device, IMPLS, x.dtype)
    return _vq_nearest_op(x.detach(), codebook.detach(), chosen)
