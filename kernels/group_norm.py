"""GroupNorm with a fused prologue / epilogue: forward and backward, one program per (sample, group).

Math (per sample b, group g of Cg = C / G channels, S spatial positions, N = Cg * S elements):

    h = x + emb[b, c]                             (prologue, optional)
    mean, var over the group's N values of h      (float32, chunked Welford / Chan merge, pivot-shifted)
    n = (h - mean) * rstd,  rstd = 1 / sqrt(var + eps)
    z = n * w[c] * (1 + scale[b, c]) + bias[c] * (1 + scale[b, c]) + shift[b, c]
    y = silu(z) or z

Layout: x is (B, C, S) in storage order with per-sample stride C * S; channel c and spatial
position s sit at ``c * stride_c + s * stride_s``: (stride_c, stride_s) = (S, 1) for NCHW /
contiguous and (1, C) for channels_last. A program walks its group in [BLOCK_C, BLOCK_S] tiles,
BLOCK_C covering the group's channels, so a group of any size (e.g. 32 * 64 * 64) streams through
a fixed-size tile. Triton specialises a stride equal to 1, so the contiguous axis of either layout
gets vectorised loads without a second kernel.

Memory passes. A group that fits in one tile (Cg * S <= TILE: every group of the DDPM CIFAR-10
U-Net, 4 x 32 x 32 down to 8 x 4 x 4) is read once and kept in registers (SINGLE_TILE): the
forward moves x in and y out, the backward x and dy in and dx out — the minimum. Larger groups
stream through tiles twice (statistics, then output), so the forward reads x twice and the
backward x and dy twice; the second read hits L2 only while B * G programs' groups fit there.
Expected on a GPU at the U-Net's batch 256 (x of 64-256 MiB, past the 50 MiB L2): the forward
from 3 to 2 tensor passes, the backward from 5 to 3 — up to 1.5x and 1.67x less DRAM traffic;
not yet measured (benchmarks/bench_group_norm.py on a GPU).

Parallelism is B * G programs (8192 for a 256-sample batch at 32 groups). A small batch with large
groups leaves most of a GPU idle; a split reduction over spatial chunks would fix that and is not
implemented.
"""
import torch
import triton
import triton.language as tl

# Elements of one [BLOCK_C, BLOCK_S] tile: 32 float32 values per thread at 4 warps in the forward,
# 16 at 8 warps in the backward, which keeps about three times as many tiles live. Chosen by
# reasoning about registers, not yet tuned on a GPU.
TILE = 4096


@triton.jit
def _group_program(emb_ptr, C, S, stride_c, channels_per_group, num_groups, HAS_EMB: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    """This program's (sample, group): (pid, local channel index cl, its mask, the group's first
    channel c0, the channels c, the sample's storage offset, the channels' storage offsets ptr_c
    [BLOCK_C, 1], the (b, c) indices bc, and emb[b, c] in float32 (zeros without HAS_EMB))."""
    pid = tl.program_id(0)
    b = pid // num_groups
    cl = tl.arange(0, BLOCK_C)
    c_mask = cl < channels_per_group
    c0 = (pid % num_groups) * channels_per_group
    c = c0 + cl
    sample = b.to(tl.int64) * C * S
    ptr_c = sample + c.to(tl.int64)[:, None] * stride_c
    bc = b * C + c
    emb = tl.zeros((BLOCK_C,), tl.float32)
    if HAS_EMB:
        emb = tl.load(emb_ptr + bc, mask=c_mask, other=0.0).to(tl.float32)
    return pid, cl, c_mask, c0, c, sample, ptr_c, bc, emb


@triton.jit
def _load_h(x_ptr, offs, mask, emb, HAS_EMB: tl.constexpr):
    """A [BLOCK_C, BLOCK_S] tile of h = x + emb in float32 (0 where masked before the emb add)."""
    h = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_EMB:
        h += emb[:, None]
    return h


@triton.jit
def _channel_coefficients(weight_ptr, bias_ptr, scale_ptr, shift_ptr, c, bc, c_mask, rstd,
                          HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
                          HAS_SHIFT: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per-channel (a, d) with z = (h - mean) * a + d: affine and scale/shift folded into one FMA,
    a = rstd * weight * (1 + scale), d = bias * (1 + scale) + shift."""
    a = tl.full((BLOCK_C,), 1.0, tl.float32) * rstd
    d = tl.zeros((BLOCK_C,), tl.float32)
    if HAS_WEIGHT:
        a *= tl.load(weight_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        d += tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        one_plus = 1.0 + tl.load(scale_ptr + bc, mask=c_mask, other=0.0).to(tl.float32)
        a *= one_plus
        d *= one_plus
    if HAS_SHIFT:
        d += tl.load(shift_ptr + bc, mask=c_mask, other=0.0).to(tl.float32)
    return a, d


@triton.jit
def _activate(z, SILU: tl.constexpr):
    if SILU:
        z = z / (1.0 + tl.exp(-z))
    return z


@triton.jit
def _group_norm_fwd_kernel(
    x_ptr,  # (B, C, S) input in storage order, any float dtype
    out_ptr,  # (B, C, S) output, x's dtype and strides
    weight_ptr,  # (C,) affine weight; unused unless HAS_WEIGHT
    bias_ptr,  # (C,) affine bias; unused unless HAS_BIAS
    emb_ptr,  # (B, C) contiguous prologue add; unused unless HAS_EMB
    scale_ptr,  # (B, C) contiguous epilogue scale; unused unless HAS_SCALE
    shift_ptr,  # (B, C) contiguous epilogue shift; unused unless HAS_SHIFT
    mean_ptr,  # float32 (B * G,) group mean of h, written for the backward
    rstd_ptr,  # float32 (B * G,) 1 / sqrt(var + eps), written for the backward
    C,  # channels
    S,  # spatial positions per channel
    stride_c,  # storage distance between channels of one sample
    stride_s,  # storage distance between spatial positions of one channel
    channels_per_group,  # Cg = C / G
    num_groups,  # G
    eps,  # added to the variance
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    SINGLE_TILE: tl.constexpr,  # S <= BLOCK_S: the group is one [BLOCK_C, BLOCK_S] tile
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid, cl, c_mask, c0, c, sample, ptr_c, bc, emb = _group_program(
        emb_ptr, C, S, stride_c, channels_per_group, num_groups, HAS_EMB, BLOCK_C)

    if SINGLE_TILE:
        # The whole group is one tile (the U-Net's groups at 32x32 and below): read x once, keep
        # it in registers, take the exact two-pass statistics there and write y. The streaming
        # path below reads x twice; past the L2 that is a third of the traffic saved.
        s = tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < S)[None, :]
        offs = ptr_c + s[None, :] * stride_s
        h = _load_h(x_ptr, offs, mask, emb, HAS_EMB)
        count = (channels_per_group * S * 1.0)  # * 1.0: both may be specialised to constexpr 1
        mean = tl.sum(tl.where(mask, h, 0.0)) / count
        dev = tl.where(mask, h - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(dev * dev) / count + eps)
        tl.store(mean_ptr + pid, mean)
        tl.store(rstd_ptr + pid, rstd)
        a, d = _channel_coefficients(weight_ptr, bias_ptr, scale_ptr, shift_ptr, c, bc, c_mask, rstd,
                                     HAS_WEIGHT, HAS_BIAS, HAS_SCALE, HAS_SHIFT, BLOCK_C)
        tl.store(out_ptr + offs, _activate(dev * a[:, None] + d[:, None], SILU), mask=mask)
    else:
        # Pass 1: statistics of h - pivot, the pivot being the group's first value: far from zero the
        # running mean then stays small and keeps its low bits. Each tile's exact mean and sum of
        # squared deviations are merged into the running ones (Chan et al.), so there is no
        # E[h^2] - E[h]^2 cancellation at any group size.
        pivot = tl.load(x_ptr + sample + c0.to(tl.int64) * stride_c).to(tl.float32)
        if HAS_EMB:
            pivot += tl.sum(tl.where(cl == 0, emb, 0.0))
        shifted_mean = 0.0  # mean of h - pivot
        m2 = 0.0
        count = 0.0
        for s0 in range(0, S, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            mask = c_mask[:, None] & (s < S)[None, :]
            h = _load_h(x_ptr, ptr_c + s[None, :] * stride_s, mask, emb, HAS_EMB) - pivot
            n_tile = (tl.minimum(S - s0, BLOCK_S) * channels_per_group).to(tl.float32)
            tile_mean = tl.sum(tl.where(mask, h, 0.0)) / n_tile
            dev = tl.where(mask, h - tile_mean, 0.0)
            total = count + n_tile
            delta = tile_mean - shifted_mean
            shifted_mean += delta * (n_tile / total)
            m2 += tl.sum(dev * dev) + delta * delta * (count * n_tile / total)
            count = total
        rstd = 1.0 / tl.sqrt(m2 / count + eps)
        tl.store(mean_ptr + pid, pivot + shifted_mean)
        tl.store(rstd_ptr + pid, rstd)

        # h - mean is taken as (h - pivot) - shifted_mean, which keeps the pivot's precision.
        a, d = _channel_coefficients(weight_ptr, bias_ptr, scale_ptr, shift_ptr, c, bc, c_mask, rstd,
                                     HAS_WEIGHT, HAS_BIAS, HAS_SCALE, HAS_SHIFT, BLOCK_C)

        # Pass 2: normalise and store (the group was just read, so on a GPU this pass mostly hits L2).
        for s0 in range(0, S, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            mask = c_mask[:, None] & (s < S)[None, :]
            offs = ptr_c + s[None, :] * stride_s
            h = _load_h(x_ptr, offs, mask, emb, HAS_EMB)
            z = ((h - pivot) - shifted_mean) * a[:, None] + d[:, None]
            tl.store(out_ptr + offs, _activate(z, SILU), mask=mask)


@triton.jit
def _normalised_and_dz(x_ptr, dy_ptr, offs, mask, emb, mean, rstd, k, d, HAS_EMB: tl.constexpr, SILU: tl.constexpr):
    """(n, dz) of a tile: n = (h - mean) * rstd (0 where masked), dz = dL/dz through the activation."""
    h = _load_h(x_ptr, offs, mask, emb, HAS_EMB)
    n = tl.where(mask, (h - mean) * rstd, 0.0)
    dz = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if SILU:
        z = n * k[:, None] + d[:, None]
        sig = 1.0 / (1.0 + tl.exp(-z))
        dz *= sig * (1.0 + z * (1.0 - sig))
    return n, dz


@triton.jit
def _store_channel_sums(sum_dz_ptr, sum_dz_n_ptr, d_emb_ptr, bc, c_mask, sum_dz, sum_dz_n, sum_n, k, rstd, inv_n, S):
    """Write the per-(b, c) sums and dL/demb; return the group terms (c1, c2) of dx.

    dn = k * dz; dh = rstd * (dn - mean_g(dn) - n * mean_g(dn * n)), the means over the N values:
    c1 = mean_g(dn), c2 = mean_g(dn * n).
    """
    tl.store(sum_dz_ptr + bc, sum_dz, mask=c_mask)
    tl.store(sum_dz_n_ptr + bc, sum_dz_n, mask=c_mask)
    c1 = tl.sum(k * sum_dz) * inv_n
    c2 = tl.sum(k * sum_dz_n) * inv_n
    tl.store(d_emb_ptr + bc, rstd * (k * sum_dz - S * c1 - sum_n * c2), mask=c_mask)
    return c1, c2


@triton.jit
def _group_norm_bwd_kernel(
    x_ptr,  # (B, C, S) forward input in storage order, any float dtype
    dy_ptr,  # (B, C, S) gradient of the output, x's dtype and strides
    dx_ptr,  # (B, C, S) gradient of x (= of h), x's dtype and strides
    weight_ptr,  # (C,) affine weight; unused unless HAS_WEIGHT
    bias_ptr,  # (C,) affine bias; unused unless HAS_BIAS and SILU (only z needs it)
    emb_ptr,  # (B, C) contiguous prologue add; unused unless HAS_EMB
    scale_ptr,  # (B, C) contiguous epilogue scale; unused unless HAS_SCALE
    shift_ptr,  # (B, C) contiguous epilogue shift; unused unless HAS_SHIFT and SILU
    mean_ptr,  # float32 (B * G,) group means saved by the forward
    rstd_ptr,  # float32 (B * G,) group rstd saved by the forward
    sum_dz_ptr,  # float32 (B, C) out: sum over s of dz, dz = dL/dz
    sum_dz_n_ptr,  # float32 (B, C) out: sum over s of dz * n
    d_emb_ptr,  # float32 (B, C) out: sum over s of dL/dh
    C,  # channels
    S,  # spatial positions per channel
    stride_c,  # storage distance between channels of one sample
    stride_s,  # storage distance between spatial positions of one channel
    channels_per_group,  # Cg = C / G
    num_groups,  # G
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    SINGLE_TILE: tl.constexpr,  # S <= BLOCK_S: the group is one [BLOCK_C, BLOCK_S] tile
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid, cl, c_mask, c0, c, sample, ptr_c, bc, emb = _group_program(
        emb_ptr, C, S, stride_c, channels_per_group, num_groups, HAS_EMB, BLOCK_C)
    mean = tl.load(mean_ptr + pid)
    rstd = tl.load(rstd_ptr + pid)
    # k = dz/dn per channel (the forward's a at rstd = 1); z = n * k + d is needed only to
    # differentiate the activation.
    k, d = _channel_coefficients(weight_ptr, bias_ptr, scale_ptr, shift_ptr, c, bc, c_mask, 1.0,
                                 HAS_WEIGHT, HAS_BIAS and SILU, HAS_SCALE, HAS_SHIFT and SILU, BLOCK_C)
    inv_n = 1.0 / (channels_per_group * S * 1.0)  # * 1.0: both may be specialised to constexpr 1

    if SINGLE_TILE:
        # The whole group is one tile: x and dy are read once and stay in registers between the
        # sums and dx (the streaming path below reads both twice).
        s = tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < S)[None, :]
        offs = ptr_c + s[None, :] * stride_s
        n, dz = _normalised_and_dz(x_ptr, dy_ptr, offs, mask, emb, mean, rstd, k, d, HAS_EMB, SILU)
        sum_dz, sum_dz_n, sum_n = tl.sum(dz, axis=1), tl.sum(dz * n, axis=1), tl.sum(n, axis=1)
        c1, c2 = _store_channel_sums(sum_dz_ptr, sum_dz_n_ptr, d_emb_ptr, bc, c_mask, sum_dz, sum_dz_n, sum_n,
                                     k, rstd, inv_n, S)
        tl.store(dx_ptr + offs, rstd * (dz * k[:, None] - c1 - n * c2), mask=mask)
    else:
        # Pass 1: per-channel sums over the group's spatial positions. The program owns every position
        # of its channels in sample b, so these sums are complete here: no atomics, no second kernel.
        # dz is summed over s after the loop, from a tile-shaped accumulator: without SILU a float32
        # dz is the raw load of dy, and triton 3.6's OptimizeThreadLocality pass asserts
        # (loopResult.hasOneUse()) on an in-loop tl.sum of a load whose loop result has several uses.
        acc_dz = tl.zeros((BLOCK_C, BLOCK_S), tl.float32)
        sum_dz_n = tl.zeros((BLOCK_C,), tl.float32)
        sum_n = tl.zeros((BLOCK_C,), tl.float32)
        for s0 in range(0, S, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            mask = c_mask[:, None] & (s < S)[None, :]
            offs = ptr_c + s[None, :] * stride_s
            n, dz = _normalised_and_dz(x_ptr, dy_ptr, offs, mask, emb, mean, rstd, k, d, HAS_EMB, SILU)
            acc_dz += dz
            sum_dz_n += tl.sum(dz * n, axis=1)
            sum_n += tl.sum(n, axis=1)
        sum_dz = tl.sum(acc_dz, axis=1)
        c1, c2 = _store_channel_sums(sum_dz_ptr, sum_dz_n_ptr, d_emb_ptr, bc, c_mask, sum_dz, sum_dz_n, sum_n,
                                     k, rstd, inv_n, S)

        # Pass 2: dx, recomputing n and dz from x and dy instead of storing them.
        for s0 in range(0, S, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            mask = c_mask[:, None] & (s < S)[None, :]
            offs = ptr_c + s[None, :] * stride_s
            n, dz = _normalised_and_dz(x_ptr, dy_ptr, offs, mask, emb, mean, rstd, k, d, HAS_EMB, SILU)
            tl.store(dx_ptr + offs, rstd * (dz * k[:, None] - c1 - n * c2), mask=mask)


def _geometry(x: torch.Tensor, num_groups: int) -> tuple:
    """(C, S, stride_c, stride_s, Cg, BLOCK_C, BLOCK_S) of x, contiguous or 4-D channels_last."""
    C = x.shape[1]
    S = x.numel() // (x.shape[0] * C)
    channels_last = x.dim() == 4 and not x.is_contiguous()
    stride_c, stride_s = (1, C) if channels_last else (S, 1)
    cpg = C // num_groups
    block_c = triton.next_power_of_2(cpg)
    block_s = max(1, min(triton.next_power_of_2(S), TILE // block_c))
    return C, S, stride_c, stride_s, cpg, block_c, block_s


def _or(t, fallback: torch.Tensor) -> torch.Tensor:
    # An absent operand's pointer argument gets a valid tensor the kernel never reads (its HAS_ flag is off).
    return fallback if t is None else t


def _flags(weight, bias, emb, scale, shift, silu: bool) -> dict:
    return dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_EMB=emb is not None,
                HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, SILU=silu)


def forward(x: torch.Tensor, weight, bias, emb, scale, shift, num_groups: int, eps: float, silu: bool,
            out: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor) -> None:
    """Launch the forward on a non-empty x, contiguous or 4-D channels_last; ``out`` shares x's strides.

    weight, bias: contiguous (C,) or None; emb, scale, shift: contiguous (B, C) or None (x's dtype);
    mean, rstd: float32 (B, G) outputs.
    """
    C, S, stride_c, stride_s, cpg, block_c, block_s = _geometry(x, num_groups)
    _group_norm_fwd_kernel[(x.shape[0] * num_groups,)](
        x, out, _or(weight, x), _or(bias, x), _or(emb, x), _or(scale, x), _or(shift, x), mean, rstd,
        C, S, stride_c, stride_s, cpg, num_groups, eps,
        **_flags(weight, bias, emb, scale, shift, silu), SINGLE_TILE=S <= block_s, BLOCK_C=block_c, BLOCK_S=block_s,
        num_warps=4,
    )


def backward(dy: torch.Tensor, x: torch.Tensor, weight, bias, emb, scale, shift, mean: torch.Tensor,
             rstd: torch.Tensor, num_groups: int, silu: bool, dx: torch.Tensor, sum_dz: torch.Tensor,
             sum_dz_n: torch.Tensor, d_emb: torch.Tensor) -> None:
    """Launch the backward; dy and dx share x's strides; sum_dz, sum_dz_n, d_emb: float32 (B, C) outputs."""
    C, S, stride_c, stride_s, cpg, block_c, block_s = _geometry(x, num_groups)
    _group_norm_bwd_kernel[(x.shape[0] * num_groups,)](
        x, dy, dx, _or(weight, x), _or(bias, x), _or(emb, x), _or(scale, x), _or(shift, x), mean, rstd,
        sum_dz, sum_dz_n, d_emb, C, S, stride_c, stride_s, cpg, num_groups,
        **_flags(weight, bias, emb, scale, shift, silu), SINGLE_TILE=S <= block_s, BLOCK_C=block_c, BLOCK_S=block_s,
        num_warps=8,
    )
