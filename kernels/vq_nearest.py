"""Nearest codebook entry per row, fused: argmin_k ||x_n - c_k||^2 without the N x K distance matrix.

||x_n - c_k||^2 = ||x_n||^2 + ||c_k||^2 - 2 x_n . c_k, and ||x_n||^2 is the same for every k, so the
argmin is that of s_nk = ||c_k||^2 - 2 x_n . c_k. One program per block of BLOCK_N rows walks the
codebook in tiles of BLOCK_K codes: the tile of dot products comes from tl.dot over D (in BLOCK_D
slices, masked past D, so D need not be a power of two), float32 accumulation; s = cn2 - 2 * dot;
the tile's minimum and its first index are merged into a running (min, argmin) per row kept in
registers. Only the (N,) int64 indices are written. ||c_k||^2 (float32 (K,)) is computed once by the
caller, not per program.

Ties go to the lowest index: tl.argmin breaks ties to the left inside a tile, and a later tile
replaces the running minimum only when strictly smaller. NaN follows torch.argmin: a NaN score is
treated as -inf, so it beats every number and the first NaN wins (an all-NaN row maps to 0).
"""
import os

import torch
import triton
import triton.language as tl

from . import tuning
from .attention import _mma


@triton.jit
def _vq_nearest_kernel(
    x_ptr,  # (N, D) rows to quantise, float32 / float16 / bfloat16, strides below
    c_ptr,  # (K, D) codebook, x's dtype, strides below
    cn2_ptr,  # float32 (K,) contiguous: ||c_k||^2, precomputed once
    out_ptr,  # int64 (N,) contiguous: index of the nearest code, written here
    n_rows,  # N
    n_codes,  # K >= 1
    dim,  # D >= 1
    stride_xn, stride_xd,  # element strides of x
    stride_ck, stride_cd,  # element strides of the codebook
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for float32 inputs (torch's rule), ignored for 16-bit ones
    INTERPRET_BF16: tl.constexpr,  # bfloat16 under the interpreter: see kernels/attention.py _mma
    ONE_D_BLOCK: tl.constexpr,  # D <= BLOCK_D: the x tile is loaded once and stays in registers
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = rows < n_rows
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xn
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    if ONE_D_BLOCK:
        x = tl.load(x_rows + offs_d[None, :] * stride_xd, mask=mask_n[:, None] & (offs_d < dim)[None, :], other=0.0)
    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_k = tl.zeros([BLOCK_N], tl.int32)
    for k0 in range(0, n_codes, BLOCK_K):
        codes = k0 + offs_k
        mask_k = codes < n_codes
        c_cols = c_ptr + codes.to(tl.int64)[None, :] * stride_ck
        if ONE_D_BLOCK:
            ct = tl.load(c_cols + offs_d[:, None] * stride_cd, mask=mask_k[None, :] & (offs_d < dim)[:, None], other=0.0)
            dot = _mma(x, ct, DOT_PRECISION, INTERPRET_BF16)
        else:
            dot = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
            for d0 in range(0, dim, BLOCK_D):
                d = d0 + offs_d
                xd = tl.load(x_rows + d[None, :] * stride_xd, mask=mask_n[:, None] & (d < dim)[None, :], other=0.0)
                ct = tl.load(c_cols + d[:, None] * stride_cd, mask=mask_k[None, :] & (d < dim)[:, None], other=0.0)
                dot += _mma(xd, ct, DOT_PRECISION, INTERPRET_BF16)
        cn2 = tl.load(cn2_ptr + codes, mask=mask_k, other=0.0)
        s = cn2[None, :] - 2.0 * dot
        s = tl.where(s != s, float("-inf"), s)  # NaN beats everything, as in torch.argmin
        s = tl.where(mask_k[None, :], s, float("inf"))  # codes past K never win (a real code is in every tile)
        tile_min = tl.min(s, axis=1)
        tile_arg = tl.argmin(s, axis=1, tie_break_left=True) + k0
        better = tile_min < best  # strict: an equal score in a later tile keeps the lower index
        best_k = tl.where(better, tile_arg, best_k)
        best = tl.where(better, tile_min, best)
    tl.store(out_ptr + rows, best_k.to(tl.int64), mask=mask_n)


# (BLOCK_N, BLOCK_K, BLOCK_D cap, num_warps) per element size and whether D fits one slice. 16-bit:
# tensor-core MMAs with a 128 x 128 float32 score tile; when D needs the slice loop, x is no longer
# resident and the loop's operand tiles join the accumulator, so fewer rows keep it out of local
# memory. float32 "ieee" dots are FMA loops: a 64 x 64 tile. Sized with
# benchmarks/triton_compile_report.py (registers and spills on sm_90 and sm_80), not yet timed on a GPU:
# kernels/tuning.py's defaults (its table or autotuning may pick another compile-checked candidate).
_TILES = {(2, True): (128, 128, 64, 8), (2, False): (64, 128, 64, 8),
          (4, True): (64, 64, 64, 4), (4, False): (64, 64, 32, 8)}


def tile_config(dim: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, BLOCK_D, num_warps) for feature dimension ``dim`` and ``dtype``."""
    size = 4 if dtype == torch.float32 else 2
    one_slice = dim <= 64
    block_n, block_k, d_cap, warps = _TILES[(size, one_slice)]
    block_d = min(d_cap, max(16, triton.next_power_of_2(dim)))  # tl.dot needs every dimension >= 16
    return block_n, block_k, block_d, warps


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 follows torch's rule for float32 matmuls on CUDA (cdist's GEMM path): TF32 only when allowed.
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def vq_nearest(x: torch.Tensor, codebook: torch.Tensor, cn2: torch.Tensor, out: torch.Tensor,
               tiles: tuple[int, int, int] | None = None) -> None:
    """Write into ``out`` (int64 (N,) contiguous) the index of the nearest row of ``codebook``.

    x (N, D) and codebook (K, D) share a float dtype, any strides, N >= 1, K >= 1; ``cn2`` is the
    float32 (K,) contiguous ||c_k||^2. ``tiles`` overrides (BLOCK_N, BLOCK_K, BLOCK_D) (tests use
    small ones to cover ragged tiles and the D loop on small shapes).
    """
    n, dim = x.shape
    interpret_bf16 = x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"

    def launch(config: dict) -> None:
        _vq_nearest_kernel[(triton.cdiv(n, config["BLOCK_N"]),)](
            x, codebook, cn2, out, n, codebook.shape[0], dim, *x.stride(), *codebook.stride(),
            DOT_PRECISION=_dot_precision(x.dtype), INTERPRET_BF16=interpret_bf16,
            ONE_D_BLOCK=dim <= config["BLOCK_D"], **config,
        )
    if tiles is not None:
        launch(dict(zip(("BLOCK_N", "BLOCK_K", "BLOCK_D"), tiles), num_warps=tile_config(dim, x.dtype)[3]))
    else:
        launch(tuning.choose("vq_nearest", x, dim, bench=launch))
