"""Flash attention (Dao et al. 2022; FlashAttention-2 loop order): O = softmax(scale * Q K^T) V.

Non-causal, no mask, no dropout. Q: (B, H, Lq, D), K and V: (B, H, Lk, D), any strides; every
sum and the softmax statistics are float32, the matmul inputs stay in the tensors' dtype.

Forward, one program per (query block, batch * head): walk the key/value blocks keeping, per
query row, the running maximum m and the running sum l of exp(s - m), rescaling the output
accumulator whenever m grows; divide by l once at the end and save the row statistics m and
log(l) (float32, (B, H, 2, Lq)) so the backward can rebuild P = exp((S - m) - log(l)) block by
block instead of storing the Lq x Lk matrix.

Backward, deterministic and atomics-free (the interpreter runs no fp16 atomics):
  1. delta_i = sum_d dO_id * O_id                                    (one program per query block)
  2. dK, dV per key block, looping over query blocks (one program per key block):
       dV += P^T dO,  dS = P * (dO V^T - delta),  dK += scale * dS^T Q
  3. dQ per query block, looping over key blocks:  dQ += scale * dS K
Each program owns its output rows, so there is no cross-program accumulation.

The exponentials are base 2 (the GPU has an exp2 instruction): the kernels work with
S2 = S * log2(e), and the statistics they write and read are base 2 too: m2 = max S2, log2(l2),
l2 = sum 2^(S2 - m2).

Precision with large logits (peaked softmax, |S| ~ 1e3-1e4, where a float32 ulp of S2 is 1e-4 to
1e-3): the backward's P = 2^((S2 - m2) - log2(l2)) is as accurate as torch's softmax only if S2 is
rebuilt bit for bit and no statistic is rounded at the logits' magnitude. So (1) every kernel
computes S2 = dot(q, trans(k)) * qk_scale (dK/dV its transpose) with one float32 qk_scale made on
the host, and S2 is selected (masked) before m2 is subtracted, so the compiler cannot fuse the
scaling and the subtraction into one FMA; (2) m2 and log2(l2) are stored apart, not as one LSE2 = m2 + log2(l2), whose rounding at
|S2| ~ 1e3 is relative error ~1e-4 in every P; S2 - m2 is exact near the maximum; (3) nothing is
converted to natural log and back. Before, at logits ~1e4 (one-hot rows) dv was off by 2e-2 against
torch's 4e-7. What stays: delta = rowsum(dO * O) (FlashAttention's form of rowsum(P * dP)) is
summed in another order than dP = dO V^T, so in a saturated row dS = P * (dP - delta) is a few
float32 ulps of |dO| |V| rather than exactly 0, and dQ, dK carry an absolute error below
scale * eps * |dO| |V| |K| (max norms; 5e-3 at logits ~1e4 with unit-normal inputs, as much as
before; tests/test_attention.py bounds it); rowsum(P * dP) itself would cost another pass over K and V.
"""
import math
import os

import torch
import triton
import triton.language as tl

from . import tuning

# log2(e): the host folds it into the scale; inside the kernels it is a literal (a jit function sees
# no plain Python globals).
LOG2E = math.log2(math.e)
MAX_HEAD_DIM = 256


# Two bugs of the Triton interpreter (3.9) with bfloat16, worked around where INTERPRET_BF16 is set
# (bfloat16 tensors under TRITON_INTERPRET=1 only; compiled kernels never take these branches):
# tl.dot of bfloat16 operands returns garbage, and float32 -> bfloat16 conversion does not round to
# nearest. The workarounds compute exactly what the GPU computes, so the tests stay faithful.


@triton.jit
def _mma(a, b, DOT_PRECISION: tl.constexpr, INTERPRET_BF16: tl.constexpr):
    """a @ b with a float32 result. Under INTERPRET_BF16 the product of float32 copies: products of
    two bfloat16 numbers are exact in float32, as in a bfloat16 tensor-core MMA."""
    if INTERPRET_BF16:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=DOT_PRECISION)
    return c


@triton.jit
def _cast(x, dtype: tl.constexpr, INTERPRET_BF16: tl.constexpr):
    """float32 x to dtype, rounding to nearest even. Under INTERPRET_BF16 the rounding is done on the
    bits (add half an ulp of bfloat16, ties to even, clear the low 16 bits); the conversion of the
    now representable value is then exact. Finite inputs only, which is all the kernels produce."""
    if INTERPRET_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _program_head(heads):
    """(bh, b, h): the (batch * head) index of grid axis 1 and its batch and head, int64."""
    bh = tl.program_id(1)
    return bh, (bh // heads).to(tl.int64), (bh % heads).to(tl.int64)


@triton.jit
def _tile(ptr, b, h, stride_b, stride_h, stride_row, stride_d, rows, offs_d):
    """Pointers of the [rows, D] tile of head (b, h) of a (B, H, L, D) tensor with those strides."""
    return ptr + b * stride_b + h * stride_h + rows[:, None] * stride_row + offs_d[None, :] * stride_d


@triton.jit
def _fwd_kernel(
    q_ptr,  # (B, H, Lq, D) queries, float16 / bfloat16 / float32, strides below
    k_ptr,  # (B, H, Lk, D) keys, q's dtype
    v_ptr,  # (B, H, Lk, D) values, q's dtype
    o_ptr,  # (B, H, Lq, D) output, q's dtype
    stats_ptr,  # float32 (B * H, 2, Lq) contiguous: per row of S2 = S * log2(e), m2 = max and log2(l2)
    stride_qb, stride_qh, stride_qm, stride_qd,  # element strides of q
    stride_kb, stride_kh, stride_kn, stride_kd,  # element strides of k
    stride_vb, stride_vh, stride_vn, stride_vd,  # element strides of v
    stride_ob, stride_oh, stride_om, stride_od,  # element strides of o
    heads,  # H
    seq_q,  # Lq
    seq_k,  # Lk
    head_dim,  # D (BLOCK_D is D rounded up to a power of two; the rest is masked)
    qk_scale,  # softmax scale * log2(e)
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for float32 inputs, ignored for 16-bit ones
    INTERPRET_BF16: tl.constexpr,  # bfloat16 under the interpreter: see _mma and _cast
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh, b, h = _program_head(heads)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    mask_m = offs_m < seq_q

    q = tl.load(_tile(q_ptr, b, h, stride_qb, stride_qh, stride_qm, stride_qd, offs_m, offs_d),
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, seq_k, BLOCK_N):
        n = start_n + offs_n
        mask_n = n < seq_k
        k = tl.load(_tile(k_ptr, b, h, stride_kb, stride_kh, stride_kn, stride_kd, n, offs_d),
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        # q . trans(k), as _bwd_dq_kernel computes it (and _bwd_dkdv_kernel its transpose): the
        # backward must rebuild these scores bit for bit (module docstring), and the interpreter's
        # matmul rounds a transposed view and a contiguous transposed copy differently.
        s = _mma(q, tl.trans(k), DOT_PRECISION, INTERPRET_BF16) * qk_scale
        # Keys past Lk of the ragged last block get weight exp2(-inf) = 0. Every block holds at
        # least one real key, so m_new is finite and the first alpha is exp2(-inf) = 0.
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(_tile(v_ptr, b, h, stride_vb, stride_vh, stride_vn, stride_vd, n, offs_d),
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        acc = acc * alpha[:, None] + _mma(_cast(p, v.dtype, INTERPRET_BF16), v, DOT_PRECISION, INTERPRET_BF16)
        m_i = m_new

    acc = acc / l_i[:, None]
    tl.store(_tile(o_ptr, b, h, stride_ob, stride_oh, stride_om, stride_od, offs_m, offs_d),
             _cast(acc, o_ptr.dtype.element_ty, INTERPRET_BF16), mask=mask_m[:, None] & mask_d[None, :])
    # Base 2, m2 and log2(l2) apart: the backward rebuilds P from them exactly (module docstring).
    stats = stats_ptr + bh.to(tl.int64) * 2 * seq_q + offs_m
    tl.store(stats, m_i, mask=mask_m)
    tl.store(stats + seq_q, tl.log2(l_i), mask=mask_m)


@triton.jit
def _bwd_delta_kernel(
    o_ptr,  # (B, H, Lq, D) forward output, strides below
    do_ptr,  # (B, H, Lq, D) gradient of the output, o's dtype
    delta_ptr,  # float32 (B * H, Lq) contiguous: rowsum(dO * O), written here
    stride_ob, stride_oh, stride_om, stride_od,  # element strides of o
    stride_dob, stride_doh, stride_dom, stride_dod,  # element strides of do
    heads,  # H
    seq_q,  # Lq
    head_dim,  # D
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh, b, h = _program_head(heads)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < seq_q)[:, None] & (offs_d < head_dim)[None, :]
    o = tl.load(_tile(o_ptr, b, h, stride_ob, stride_oh, stride_om, stride_od, offs_m, offs_d),
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(_tile(do_ptr, b, h, stride_dob, stride_doh, stride_dom, stride_dod, offs_m, offs_d),
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(delta_ptr + bh.to(tl.int64) * seq_q + offs_m, tl.sum(o * do, 1), mask=offs_m < seq_q)


@triton.jit
def _bwd_dkdv_kernel(
    q_ptr,  # (B, H, Lq, D) queries
    k_ptr,  # (B, H, Lk, D) keys
    v_ptr,  # (B, H, Lk, D) values
    do_ptr,  # (B, H, Lq, D) gradient of the output
    stats_ptr,  # float32 (B * H, 2, Lq) contiguous: m2 and log2(l2) of each row, from the forward
    delta_ptr,  # float32 (B * H, Lq) contiguous, from _bwd_delta_kernel
    dk_ptr,  # (B, H, Lk, D) gradient of k, written here, with dk's strides (shared with dv)
    dv_ptr,  # (B, H, Lk, D) gradient of v, written here
    stride_qb, stride_qh, stride_qm, stride_qd,  # element strides of q
    stride_kb, stride_kh, stride_kn, stride_kd,  # element strides of k
    stride_vb, stride_vh, stride_vn, stride_vd,  # element strides of v
    stride_dob, stride_doh, stride_dom, stride_dod,  # element strides of do
    stride_gb, stride_gh, stride_gn, stride_gd,  # element strides of dk and dv (both fresh, contiguous)
    heads,  # H
    seq_q,  # Lq
    seq_k,  # Lk
    head_dim,  # D
    scale,  # softmax scale
    qk_scale,  # softmax scale * log2(e): the forward's float32 value, so S2 is recomputed bit for bit
    DOT_PRECISION: tl.constexpr,  # as in _fwd_kernel
    INTERPRET_BF16: tl.constexpr,  # bfloat16 under the interpreter: see _mma and _cast
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh, b, h = _program_head(heads)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < seq_k
    mask_d = offs_d < head_dim
    mask_nd = mask_n[:, None] & mask_d[None, :]
    k = tl.load(_tile(k_ptr, b, h, stride_kb, stride_kh, stride_kn, stride_kd, offs_n, offs_d), mask=mask_nd, other=0.0)
    v = tl.load(_tile(v_ptr, b, h, stride_vb, stride_vh, stride_vn, stride_vd, offs_n, offs_d), mask=mask_nd, other=0.0)
    row_base = bh.to(tl.int64) * seq_q  # this head's first row of delta
    stats_base = 2 * row_base  # and of the statistics, two rows per query

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, seq_q, BLOCK_M):
        m = start_m + offs_m
        mask_m = m < seq_q
        mask_md = mask_m[:, None] & mask_d[None, :]
        q = tl.load(_tile(q_ptr, b, h, stride_qb, stride_qh, stride_qm, stride_qd, m, offs_d), mask=mask_md, other=0.0)
        do = tl.load(_tile(do_ptr, b, h, stride_dob, stride_doh, stride_dom, stride_dod, m, offs_d),
                     mask=mask_md, other=0.0)
        m2 = tl.load(stats_ptr + stats_base + m, mask=mask_m, other=0.0)
        log2_l = tl.load(stats_ptr + stats_base + seq_q + m, mask=mask_m, other=0.0)
        delta = tl.load(delta_ptr + row_base + m, mask=mask_m, other=0.0)
        # Transposed scores (keys x queries), so dV and dK come out as plain (non-transposed) dots.
        st = _mma(k, tl.trans(q), DOT_PRECISION, INTERPRET_BF16) * qk_scale
        # Padded query rows (zero q, statistics 0) would give exp2(0) = 1: -inf gives them 0. The select
        # also keeps the rounded S2 from being fused into an FMA with - m2, which would make the row
        # maximum's exponent m2's rounding error instead of 0.
        st = tl.where(mask_m[None, :], st, float("-inf"))
        pt = tl.exp2((st - m2[None, :]) - log2_l[None, :])
        dv += _mma(_cast(pt, do.dtype, INTERPRET_BF16), do, DOT_PRECISION, INTERPRET_BF16)
        dpt = _mma(v, tl.trans(do), DOT_PRECISION, INTERPRET_BF16)
        dst = pt * (dpt - delta[None, :])
        dk += _mma(_cast(dst, q.dtype, INTERPRET_BF16), q, DOT_PRECISION, INTERPRET_BF16)

    tl.store(_tile(dk_ptr, b, h, stride_gb, stride_gh, stride_gn, stride_gd, offs_n, offs_d),
             _cast(dk * scale, dk_ptr.dtype.element_ty, INTERPRET_BF16), mask=mask_nd)
    tl.store(_tile(dv_ptr, b, h, stride_gb, stride_gh, stride_gn, stride_gd, offs_n, offs_d),
             _cast(dv, dv_ptr.dtype.element_ty, INTERPRET_BF16), mask=mask_nd)


@triton.jit
def _bwd_dq_kernel(
    q_ptr,  # (B, H, Lq, D) queries
    k_ptr,  # (B, H, Lk, D) keys
    v_ptr,  # (B, H, Lk, D) values
    do_ptr,  # (B, H, Lq, D) gradient of the output
    stats_ptr,  # float32 (B * H, 2, Lq) contiguous: m2 and log2(l2) of each row, from the forward
    delta_ptr,  # float32 (B * H, Lq) contiguous, from _bwd_delta_kernel
    dq_ptr,  # (B, H, Lq, D) gradient of q, written here
    stride_qb, stride_qh, stride_qm, stride_qd,  # element strides of q
    stride_kb, stride_kh, stride_kn, stride_kd,  # element strides of k
    stride_vb, stride_vh, stride_vn, stride_vd,  # element strides of v
    stride_dob, stride_doh, stride_dom, stride_dod,  # element strides of do
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,  # element strides of dq
    heads,  # H
    seq_q,  # Lq
    seq_k,  # Lk
    head_dim,  # D
    scale,  # softmax scale
    qk_scale,  # softmax scale * log2(e): the forward's float32 value, so S2 is recomputed bit for bit
    DOT_PRECISION: tl.constexpr,  # as in _fwd_kernel
    INTERPRET_BF16: tl.constexpr,  # bfloat16 under the interpreter: see _mma and _cast
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh, b, h = _program_head(heads)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < seq_q
    mask_d = offs_d < head_dim
    mask_md = mask_m[:, None] & mask_d[None, :]
    q = tl.load(_tile(q_ptr, b, h, stride_qb, stride_qh, stride_qm, stride_qd, offs_m, offs_d), mask=mask_md, other=0.0)
    do = tl.load(_tile(do_ptr, b, h, stride_dob, stride_doh, stride_dom, stride_dod, offs_m, offs_d),
                 mask=mask_md, other=0.0)
    row_base = bh.to(tl.int64) * seq_q  # this head's first row of delta
    stats_base = 2 * row_base  # and of the statistics, two rows per query
    m2 = tl.load(stats_ptr + stats_base + offs_m, mask=mask_m, other=0.0)
    log2_l = tl.load(stats_ptr + stats_base + seq_q + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(delta_ptr + row_base + offs_m, mask=mask_m, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, seq_k, BLOCK_N):
        n = start_n + offs_n
        mask_n = n < seq_k
        mask_nd = mask_n[:, None] & mask_d[None, :]
        k = tl.load(_tile(k_ptr, b, h, stride_kb, stride_kh, stride_kn, stride_kd, n, offs_d), mask=mask_nd, other=0.0)
        v = tl.load(_tile(v_ptr, b, h, stride_vb, stride_vh, stride_vn, stride_vd, n, offs_d), mask=mask_nd, other=0.0)
        s = _mma(q, tl.trans(k), DOT_PRECISION, INTERPRET_BF16) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))  # keys past Lk: no weight (and no FMA: see dK/dV)
        p = tl.exp2((s - m2[:, None]) - log2_l[:, None])
        dp = _mma(do, tl.trans(v), DOT_PRECISION, INTERPRET_BF16)
        ds = p * (dp - delta[:, None])
        dq += _mma(_cast(ds, k.dtype, INTERPRET_BF16), k, DOT_PRECISION, INTERPRET_BF16)

    tl.store(_tile(dq_ptr, b, h, stride_dqb, stride_dqh, stride_dqm, stride_dqd, offs_m, offs_d),
             _cast(dq * scale, dq_ptr.dtype.element_ty, INTERPRET_BF16), mask=mask_md)


# (BLOCK_M, BLOCK_N, num_warps) per input element size, for head dims up to the bound, forward
# and backward. Chosen by compiling the candidates (16..128 x 16..64 tiles, 4 or 8 warps) for
# sm_90 and sm_80 without a GPU (benchmarks/triton_compile_report.py does it for every launch):
# each entry is the largest tile whose kernels all fit the SM's shared memory (sm_80: 163 KiB)
# and spill no registers on either architecture. The earlier dtype-blind (128, 64) / (128, 32) /
# (64, 32) tiles spilled kilobytes per thread in float32 (its exact "ieee" dot runs on CUDA cores
# and holds its operands in registers), overflowed shared memory at D = 256 in float32, and
# spilled in the 16-bit dK/dV kernel at D = 64 and 128. Free of spills is not tuned: these are the
# defaults of kernels/tuning.py, whose table (measured by benchmarks/tune_tiles.py on a GPU) or
# autotuning may pick another of its compile-checked candidates.
# The backward's dK/dV kernel keeps a K/V tile resident and streams Q / dO tiles past it, so it
# takes (BLOCK_N, BLOCK_M) of its entry: the roles swap, as in FlashAttention-2.
_TILES = {
    2: {  # float16 / bfloat16: tensor-core MMAs, float32 accumulators
        "forward": ((64, (128, 64, 4)), (128, (128, 32, 8)), (256, (64, 32, 8))),
        "backward": ((64, (128, 64, 8)), (128, (64, 32, 8)), (256, (32, 32, 8))),
    },
    4: {  # float32 ("ieee" FMA dots, or TF32 where torch allows it)
        "forward": ((128, (64, 32, 8)), (256, (16, 16, 8))),
        "backward": ((32, (64, 32, 8)), (64, (32, 32, 8)), (128, (32, 16, 8)), (256, (16, 16, 8))),
    },
}


def tile_config(head_dim: int, dtype: torch.dtype, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) of the forward (or the backward's dQ pass) for a head dim and dtype."""
    if head_dim % 8 != 0 or not 0 < head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be a multiple of 8 up to {MAX_HEAD_DIM}, got {head_dim}")
    table = _TILES[4 if dtype == torch.float32 else 2]["backward" if backward else "forward"]
    return next(config for bound, config in table if head_dim <= bound)


def _config(q: torch.Tensor, backward: bool, blocks: tuple[int, int] | None, launch) -> dict:
    """BLOCK_M, BLOCK_N, num_warps of a pass: tuning.choose's, or ``blocks`` with the default's warps."""
    head_dim = q.shape[-1]
    block_m, block_n, warps = tile_config(head_dim, q.dtype, backward)  # validates head_dim in any case
    if blocks is not None:
        return {"BLOCK_M": blocks[0], "BLOCK_N": blocks[1], "num_warps": warps}
    return tuning.choose("attention_backward" if backward else "attention_forward", q, head_dim, bench=launch)


def _padded_dim(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))  # tl.dot needs every dimension >= 16


def _qk_scale(scale: float) -> float:
    # One host-side value for every kernel: a kernel's own float32 scale * log2(e) can be an ulp off.
    return scale * LOG2E


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs follow torch's own rule for float32 matmuls on CUDA (TF32 only when allowed).
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _interpret_bf16(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, out: torch.Tensor, stats: torch.Tensor,
            blocks: tuple[int, int] | None = None) -> None:
    """Write attention into ``out`` (q's shape and dtype) and the row statistics into the float32
    (B, H, 2, Lq) contiguous ``stats``: of each row of S2 = scale * log2(e) * q k^T, [..., 0, :] its
    maximum m2 and [..., 1, :] log2(sum 2^(S2 - m2)); m2 + log2(l2) is the natural LSE * log2(e).

    q (B, H, Lq, D), k and v (B, H, Lk, D), one dtype, any strides; D a multiple of 8 up to 256.
    ``blocks`` overrides (BLOCK_M, BLOCK_N) of :func:`tile_config` (tests use small ones to cover
    several ragged blocks on short sequences).
    """
    batch, heads, seq_q, head_dim = q.shape

    def launch(config: dict) -> None:
        _fwd_kernel[(triton.cdiv(seq_q, config["BLOCK_M"]), batch * heads)](
            q, k, v, out, stats, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            heads, seq_q, k.shape[2], head_dim, _qk_scale(scale),
            DOT_PRECISION=_dot_precision(q.dtype), INTERPRET_BF16=_interpret_bf16(q.dtype),
            BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_D=_padded_dim(head_dim),
            num_warps=config["num_warps"],
        )
    launch(_config(q, False, blocks, launch))


def backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
             stats: torch.Tensor, scale: float, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
             blocks: tuple[int, int] | None = None) -> None:
    """Write dq, dk, dv (the shapes and dtype of q, k, v; dk and dv share strides) from dO = ``grad_out``.

    ``out`` and ``stats`` are the forward's; ``grad_out`` has q's shape and dtype, any strides.
    """
    block_d = _padded_dim(q.shape[-1])
    precision, interpret_bf16 = _dot_precision(q.dtype), _interpret_bf16(q.dtype)

    def launch(config: dict) -> None:
        _backward(grad_out, q, k, v, out, stats, scale, dq, dk, dv, config["BLOCK_M"], config["BLOCK_N"],
                  config["num_warps"], block_d, precision, interpret_bf16)
    launch(_config(q, True, blocks, launch))


def _backward(grad_out, q, k, v, out, stats, scale, dq, dk, dv, block_m: int, block_n: int, warps: int, block_d: int,
              precision: str, interpret_bf16: bool) -> None:
    """The three backward launches with one (BLOCK_M, BLOCK_N, num_warps) config."""
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    delta = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    _bwd_delta_kernel[(triton.cdiv(seq_q, block_m), batch * heads)](
        out, grad_out, delta, *out.stride(), *grad_out.stride(), heads, seq_q, head_dim,
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps,
    )
    # The dK/dV pass keeps a K/V tile and two float32 accumulators of its size resident and streams
    # Q / dO tiles past them, so its resident tile takes tile_config's BLOCK_M rows and the streamed
    # one BLOCK_N: the roles of M and N swap, as in FlashAttention-2.
    _bwd_dkdv_kernel[(triton.cdiv(seq_k, block_m), batch * heads)](
        q, k, v, grad_out, stats, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dk.stride(),
        heads, seq_q, seq_k, head_dim, scale, _qk_scale(scale),
        DOT_PRECISION=precision, INTERPRET_BF16=interpret_bf16, BLOCK_M=block_n, BLOCK_N=block_m, BLOCK_D=block_d,
        num_warps=warps,
    )
    _bwd_dq_kernel[(triton.cdiv(seq_q, block_m), batch * heads)](
        q, k, v, grad_out, stats, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dq.stride(),
        heads, seq_q, seq_k, head_dim, scale, _qk_scale(scale),
        DOT_PRECISION=precision, INTERPRET_BF16=interpret_bf16, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=warps,
    )
