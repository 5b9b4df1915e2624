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
groups would leave most of a GPU idle (sampling one 320-channel 64x64 image: 32 programs, each
streaming 10 x 4096 values, on 132 SMs), so in both layouts a launch of fewer than
SPLIT_MIN_PROGRAMS programs whose groups take more than one tile is split by one rule (_split):
each group's positions are cut into K chunks of whole tiles, one program each. PHASE 1 writes each
chunk's partial statistics to a float32 workspace (forward: mean and M2 of h - pivot, one pivot
for all of a group's chunks; backward: per-channel sums of dz, dz * n and n); PHASE 2, a second
launch, merges a group's K partials in a fixed order, the same in every program (deterministic,
no atomics; _merge_chunk_stats, _sum_chunk_partials), and writes its chunk's output, every fused
operand applied. PHASE 0 is the unsplit kernel. In NCHW a chunk is positions [s_lo, s_hi) of all
the group's channels: Cg contiguous row segments, so emb and the per-channel coefficients stay
[BLOCK_C] vectors. DRAM traffic is the unsplit stream's (x read per phase, the second read from
L2 at batch 1) plus K partials per group; the gain is parallelism, expected on a GPU and not
measured (benchmarks/bench_group_norm.py's 1x320x64x64 nchw rows).

channels_last (NHWC storage) has its own kernels (_group_norm_cl_*): one group's channels at one
position are only c_g adjacent values (8-16 bytes for c_g = 4), so a program takes GB adjacent
groups (CL_CHANNELS = 64 channels: 256 B of float32 per position) through [BLOCK_S, GB, CG] tiles
whose fastest axis is the channel, and reduces per channel, then per group. Launches of fewer than
SPLIT_MIN_PROGRAMS programs (batch 1: 1x320x64x64 is 8 group blocks) are split as above.
Expected on a GPU, not measured:
benchmarks/bench_group_norm.py's channels_last rows (1x320x64x64 for the split).
"""
import torch
import triton
import triton.language as tl

from . import tuning

# Elements of one [BLOCK_C, BLOCK_S] tile: 32 float32 values per thread at 4 warps in the forward,
# 16 at 8 warps in the backward, which keeps about three times as many tiles live. Chosen by
# reasoning about registers, not yet tuned on a GPU.
TILE = 4096
# Channels-last kernels: channels per program row segment, GB groups of CG channels (64 channels:
# 256 B of float32 / 128 B of 16-bit values per position, whole 32-byte sectors and 128-byte lines).
CL_CHANNELS = 64
# Elements of one channels_last [BLOCK_S, GB, CG] tile: 8 values per thread at 8 warps. Half of
# TILE: per-channel running statistics and the backward's three tile accumulators are live across
# the loop; at 4096 the triton 3.6 build needed 128-168 registers per thread (compile report).
CL_TILE = 2048
# Split (both layouts, _split): a launch of fewer than SPLIT_MIN_PROGRAMS (sample, group [block])
# programs is cut along the positions into chunks until it has about that many (two-phase
# reduction, see the module docstring); a batch that has that many already is never split.
# 264 = 2 x the 132 SMs of an H100 / H200 (108 on an A100): two resident programs per SM is the
# least that hides a program's start and tail; chosen by reasoning, not measured (no GPU run of it
# yet). Tests lower TILE / CL_TILE and raise this to force the split on small shapes.
SPLIT_MIN_PROGRAMS = 264


@triton.jit
def _group_program(emb_ptr, C, S, stride_c, channels_per_group, num_groups, num_chunks, chunk,
                   HAS_EMB: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's (sample, group): its row bg of the (B * G) statistics, its chunk index (0
    unless split) and positions [s_lo, s_hi), the local channel index cl, its mask, the group's
    first channel c0, the channels c, the sample's storage offset, the channels' storage offsets
    ptr_c [BLOCK_C, 1], the (b, c) indices bc, and emb[b, c] in float32 (zeros without HAS_EMB)."""
    pid = tl.program_id(0)
    chunk_id = pid % num_chunks
    bg = pid // num_chunks
    b = bg // num_groups
    cl = tl.arange(0, BLOCK_C)
    c_mask = cl < channels_per_group
    c0 = (bg % num_groups) * channels_per_group
    c = c0 + cl
    sample = b.to(tl.int64) * C * S
    ptr_c = sample + c.to(tl.int64)[:, None] * stride_c
    bc = b * C + c
    s_lo = chunk_id * chunk
    s_hi = tl.minimum(s_lo + chunk, S)
    emb = tl.zeros((BLOCK_C,), tl.float32)
    if HAS_EMB:
        emb = tl.load(emb_ptr + bc, mask=c_mask, other=0.0).to(tl.float32)
    return bg, chunk_id, s_lo, s_hi, cl, c_mask, c0, c, sample, ptr_c, bc, emb


@triton.jit
def _load_h(x_ptr, offs, mask, emb, HAS_EMB: tl.constexpr):
    """A tile of h = x + emb in float32 (0 where masked before the emb add); emb comes shaped to
    broadcast against the tile ([BLOCK_C, 1] in NCHW tiles, [1, GB, CG] in channels_last ones)."""
    h = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_EMB:
        h += emb
    return h


@triton.jit
def _channel_coefficients(weight_ptr, bias_ptr, scale_ptr, shift_ptr, c, bc, c_mask, rstd,
                          HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
                          HAS_SHIFT: tl.constexpr):
    """Per-channel (a, d) with z = (h - mean) * a + d: affine and scale/shift folded into one FMA,
    a = rstd * weight * (1 + scale), d = bias * (1 + scale) + shift. ``rstd`` comes in c's shape
    (channel indices c of any rank: [BLOCK_C] or [GB, CG])."""
    a = rstd
    d = tl.zeros_like(rstd)
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
def _chunk_partials(rows, row_mask, k0, num_chunks, chunk, S, per_position, K_BLOCK: tl.constexpr):
    """Workspace indices [R, K_BLOCK] of chunks k0 .. k0 + K_BLOCK of the statistics rows [R] (a
    (rows, K) workspace), their mask and element counts n_k = positions * per_position (0 where
    masked; the last chunk may be short)."""
    kk = k0 + tl.arange(0, K_BLOCK)
    k_mask = row_mask[:, None] & (kk < num_chunks)[None, :]
    n_k = tl.where(k_mask, (tl.minimum(S - kk * chunk, chunk) * per_position).to(tl.float32)[None, :], 0.0)
    return rows[:, None] * num_chunks + kk[None, :], k_mask, n_k


@triton.jit
def _merge_chunk_stats(part_mean_ptr, part_m2_ptr, rows, row_mask, num_chunks, chunk, S, per_position,
                       R: tl.constexpr, K_BLOCK: tl.constexpr):
    """(mean, M2) [R] of whole groups from the K chunks' partial (mean_k, M2_k) of rows [R]: mean =
    sum n_k mean_k / N, then M2 = sum M2_k + n_k (mean_k - mean)^2 (exact, no E[h^2] - E[h]^2),
    K_BLOCK chunks at a time into tile accumulators summed after each loop. Every program of a
    group takes the same fixed order, so all agree bit for bit (no atomics)."""
    acc = tl.zeros((R, K_BLOCK), tl.float32)
    for k0 in range(0, num_chunks, K_BLOCK):
        part, k_mask, n_k = _chunk_partials(rows, row_mask, k0, num_chunks, chunk, S, per_position, K_BLOCK)
        acc += n_k * tl.load(part_mean_ptr + part, mask=k_mask, other=0.0)
    mean = tl.sum(acc, axis=1) / (S * per_position * 1.0)
    acc = tl.zeros((R, K_BLOCK), tl.float32)
    for k0 in range(0, num_chunks, K_BLOCK):
        part, k_mask, n_k = _chunk_partials(rows, row_mask, k0, num_chunks, chunk, S, per_position, K_BLOCK)
        spread = tl.where(k_mask, tl.load(part_mean_ptr + part, mask=k_mask, other=0.0) - mean[:, None], 0.0)
        acc += tl.load(part_m2_ptr + part, mask=k_mask, other=0.0) + n_k * spread * spread
    return mean, tl.sum(acc, axis=1)


@triton.jit
def _sum_chunk_partials(part_a_ptr, part_b_ptr, part_c_ptr, rows, row_mask, num_chunks, R0: tl.constexpr,
                        R1: tl.constexpr, K_BLOCK: tl.constexpr):
    """Three per-channel sums [R0, R1] from the K chunks' partials of rows [R0, R1] in (rows, K)
    workspaces, K_BLOCK chunks at a time in the same fixed order in every program of a group."""
    acc_a = tl.zeros((R0, R1, K_BLOCK), tl.float32)
    acc_b = tl.zeros((R0, R1, K_BLOCK), tl.float32)
    acc_c = tl.zeros((R0, R1, K_BLOCK), tl.float32)
    for k0 in range(0, num_chunks, K_BLOCK):
        kk = k0 + tl.arange(0, K_BLOCK)
        part = rows[:, :, None] * num_chunks + kk[None, None, :]
        part_mask = row_mask[:, :, None] & (kk < num_chunks)[None, None, :]
        acc_a += tl.load(part_a_ptr + part, mask=part_mask, other=0.0)
        acc_b += tl.load(part_b_ptr + part, mask=part_mask, other=0.0)
        acc_c += tl.load(part_c_ptr + part, mask=part_mask, other=0.0)
    return tl.sum(acc_a, axis=2), tl.sum(acc_b, axis=2), tl.sum(acc_c, axis=2)


@triton.jit
def _shifted_stats(x_ptr, ptr_c, c_mask, emb, pivot, s_lo, s_hi, stride_s, channels_per_group,
                   HAS_EMB: tl.constexpr, BLOCK_S: tl.constexpr):
    """(mean, M2) of h - pivot over the group's channels at positions [s_lo, s_hi). The pivot is
    the group's first value: far from zero the running mean then stays small and keeps its low
    bits. Each tile's exact mean and sum of squared deviations are merged into the running ones
    (Chan et al.), so there is no E[h^2] - E[h]^2 cancellation at any group size."""
    shifted_mean = 0.0
    m2 = 0.0
    count = 0.0
    for s0 in range(s_lo, s_hi, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < s_hi)[None, :]
        h = _load_h(x_ptr, ptr_c + s[None, :] * stride_s, mask, emb[:, None], HAS_EMB) - pivot
        n_tile = (tl.minimum(s_hi - s0, BLOCK_S) * channels_per_group).to(tl.float32)
        tile_mean = tl.sum(tl.where(mask, h, 0.0)) / n_tile
        dev = tl.where(mask, h - tile_mean, 0.0)
        total = count + n_tile
        delta = tile_mean - shifted_mean
        shifted_mean += delta * (n_tile / total)
        m2 += tl.sum(dev * dev) + delta * delta * (count * n_tile / total)
        count = total
    return shifted_mean, m2


@triton.jit
def _group_norm_fwd_kernel(
    x_ptr,  # (B, C, S) input in storage order, any float dtype
    out_ptr,  # (B, C, S) output, x's dtype and strides
    weight_ptr,  # (C,) affine weight; unused unless HAS_WEIGHT
    bias_ptr,  # (C,) affine bias; unused unless HAS_BIAS
    emb_ptr,  # (B, C) contiguous prologue add; unused unless HAS_EMB
    scale_ptr,  # (B, C) contiguous epilogue scale; unused unless HAS_SCALE
    shift_ptr,  # (B, C) contiguous epilogue shift; unused unless HAS_SHIFT
    mean_ptr,  # float32 (B * G,) out: group mean of h, for the backward (PHASE 0 and 2)
    rstd_ptr,  # float32 (B * G,) out: 1 / sqrt(var + eps), for the backward (PHASE 0 and 2)
    part_mean_ptr,  # float32 (B * G, K) workspace: per-chunk mean of h - pivot (PHASE 1 writes, 2 reads)
    part_m2_ptr,  # float32 (B * G, K) workspace: per-chunk M2
    C,  # channels
    S,  # spatial positions per channel
    stride_c,  # storage distance between channels of one sample
    stride_s,  # storage distance between spatial positions of one channel
    channels_per_group,  # Cg = C / G
    num_groups,  # G
    num_chunks,  # K: chunks per (sample, group); 1 for PHASE 0
    chunk,  # positions per chunk (a multiple of BLOCK_S; S for PHASE 0)
    eps,  # added to the variance
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    PHASE: tl.constexpr,  # 0: statistics and output; 1: partial statistics; 2: merge and output
    SINGLE_TILE: tl.constexpr,  # PHASE 0 with S <= BLOCK_S (never with PHASE 1 / 2): the group is one tile
    K_BLOCK: tl.constexpr,  # chunks' partials read at a time (PHASE 2; 1 otherwise)
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    bg, chunk_id, s_lo, s_hi, cl, c_mask, c0, c, sample, ptr_c, bc, emb = _group_program(
        emb_ptr, C, S, stride_c, channels_per_group, num_groups, num_chunks, chunk, HAS_EMB, BLOCK_C)

    if SINGLE_TILE:
        # The whole group is one tile (the U-Net's groups at 32x32 and below): read x once, keep
        # it in registers, take the exact two-pass statistics there and write y. The streaming
        # path below reads x twice; past the L2 that is a third of the traffic saved.
        s = tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < S)[None, :]
        offs = ptr_c + s[None, :] * stride_s
        h = _load_h(x_ptr, offs, mask, emb[:, None], HAS_EMB)
        count = (channels_per_group * S * 1.0)  # * 1.0: both may be specialised to constexpr 1
        mean = tl.sum(tl.where(mask, h, 0.0)) / count
        dev = tl.where(mask, h - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(dev * dev) / count + eps)
        tl.store(mean_ptr + bg, mean)
        tl.store(rstd_ptr + bg, rstd)
        a, d = _channel_coefficients(weight_ptr, bias_ptr, scale_ptr, shift_ptr, c, bc, c_mask,
                                     tl.full((BLOCK_C,), 1.0, tl.float32) * rstd,
                                     HAS_WEIGHT, HAS_BIAS, HAS_SCALE, HAS_SHIFT)
        tl.store(out_ptr + offs, _activate(dev * a[:, None] + d[:, None], SILU), mask=mask)
    else:
        # Pass 1: statistics of h - pivot over this program's positions (all S unless split). Every
        # chunk of a split group shifts by the same pivot, so their partials merge as they are.
        pivot = tl.load(x_ptr + sample + c0.to(tl.int64) * stride_c).to(tl.float32)
        if HAS_EMB:
            pivot += tl.sum(tl.where(cl == 0, emb, 0.0))
        if PHASE == 2:
            rows = bg + tl.arange(0, 1)  # this group's row of the workspace, as a [1] tensor
            merged_mean, merged_m2 = _merge_chunk_stats(part_mean_ptr, part_m2_ptr, rows, rows >= 0, num_chunks,
                                                        chunk, S, channels_per_group, 1, K_BLOCK)
            shifted_mean, m2 = tl.sum(merged_mean, axis=0), tl.sum(merged_m2, axis=0)
        else:
            shifted_mean, m2 = _shifted_stats(x_ptr, ptr_c, c_mask, emb, pivot, s_lo, s_hi, stride_s,
                                              channels_per_group, HAS_EMB, BLOCK_S)
        if PHASE == 1:
            tl.store(part_mean_ptr + bg * num_chunks + chunk_id, shifted_mean)
            tl.store(part_m2_ptr + bg * num_chunks + chunk_id, m2)
        else:
            rstd = 1.0 / tl.sqrt(m2 / (channels_per_group * S * 1.0) + eps)
            if chunk_id == 0:  # one program of a split group writes the statistics
                tl.store(mean_ptr + bg, pivot + shifted_mean)
                tl.store(rstd_ptr + bg, rstd)

            # h - mean is taken as (h - pivot) - shifted_mean, which keeps the pivot's precision.
            a, d = _channel_coefficients(weight_ptr, bias_ptr, scale_ptr, shift_ptr, c, bc, c_mask,
                                         tl.full((BLOCK_C,), 1.0, tl.float32) * rstd,
                                         HAS_WEIGHT, HAS_BIAS, HAS_SCALE, HAS_SHIFT)

            # Pass 2: normalise and store (these positions were just read, by pass 1 or PHASE 1: mostly L2 hits).
            for s0 in range(s_lo, s_hi, BLOCK_S):
                s = s0 + tl.arange(0, BLOCK_S)
                mask = c_mask[:, None] & (s < s_hi)[None, :]
                offs = ptr_c + s[None, :] * stride_s
                h = _load_h(x_ptr, offs, mask, emb[:, None], HAS_EMB)
                z = ((h - pivot) - shifted_mean) * a[:, None] + d[:, None]
                tl.store(out_ptr + offs, _activate(z, SILU), mask=mask)


@triton.jit
def _normalised_and_dz(x_ptr, dy_ptr, offs, mask, emb, mean, rstd, k, d, HAS_EMB: tl.constexpr, SILU: tl.constexpr):
    """(n, dz) of a tile: n = (h - mean) * rstd (0 where masked), dz = dL/dz through the activation.
    emb, mean, rstd, k, d come shaped to broadcast against the tile."""
    h = _load_h(x_ptr, offs, mask, emb, HAS_EMB)
    n = tl.where(mask, (h - mean) * rstd, 0.0)
    dz = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if SILU:
        z = n * k + d
        sig = 1.0 / (1.0 + tl.exp(-z))
        dz *= sig * (1.0 + z * (1.0 - sig))
    return n, dz


@triton.jit
def _store_channel_sums(sum_dz_ptr, sum_dz_n_ptr, d_emb_ptr, bc, write_mask, sum_dz, sum_dz_n, sum_n, k, rstd,
                        inv_n, S):
    """Write the per-(b, c) sums and dL/demb where ``write_mask``; return the group terms (c1, c2) of dx.

    dn = k * dz; dh = rstd * (dn - mean_g(dn) - n * mean_g(dn * n)), the means over the N values:
    c1 = mean_g(dn), c2 = mean_g(dn * n).
    """
    tl.store(sum_dz_ptr + bc, sum_dz, mask=write_mask)
    tl.store(sum_dz_n_ptr + bc, sum_dz_n, mask=write_mask)
    c1 = tl.sum(k * sum_dz) * inv_n
    c2 = tl.sum(k * sum_dz_n) * inv_n
    tl.store(d_emb_ptr + bc, rstd * (k * sum_dz - S * c1 - sum_n * c2), mask=write_mask)
    return c1, c2


@triton.jit
def _group_norm_bwd_kernel(
    x_ptr,  # (B, C, S) forward input in storage order, any float dtype
    dy_ptr,  # (B, C, S) gradient of the output, x's dtype and strides
    dx_ptr,  # (B, C, S) out: gradient of x (= of h), x's dtype and strides (PHASE 0 and 2)
    weight_ptr,  # (C,) affine weight; unused unless HAS_WEIGHT
    bias_ptr,  # (C,) affine bias; unused unless HAS_BIAS and SILU (only z needs it)
    emb_ptr,  # (B, C) contiguous prologue add; unused unless HAS_EMB
    scale_ptr,  # (B, C) contiguous epilogue scale; unused unless HAS_SCALE
    shift_ptr,  # (B, C) contiguous epilogue shift; unused unless HAS_SHIFT and SILU
    mean_ptr,  # float32 (B * G,) group means saved by the forward
    rstd_ptr,  # float32 (B * G,) group rstd saved by the forward
    sum_dz_ptr,  # float32 (B, C) out: sum over s of dz, dz = dL/dz (PHASE 0 and 2)
    sum_dz_n_ptr,  # float32 (B, C) out: sum over s of dz * n
    d_emb_ptr,  # float32 (B, C) out: sum over s of dL/dh
    part_dz_ptr,  # float32 (B * C, K) workspace: per-chunk sums of dz (PHASE 1 writes, 2 reads)
    part_dz_n_ptr,  # float32 (B * C, K) workspace: per-chunk sums of dz * n
    part_n_ptr,  # float32 (B * C, K) workspace: per-chunk sums of n
    C,  # channels
    S,  # spatial positions per channel
    stride_c,  # storage distance between channels of one sample
    stride_s,  # storage distance between spatial positions of one channel
    channels_per_group,  # Cg = C / G
    num_groups,  # G
    num_chunks,  # K: chunks per (sample, group); 1 for PHASE 0
    chunk,  # positions per chunk (a multiple of BLOCK_S; S for PHASE 0)
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    PHASE: tl.constexpr,  # 0: sums and dx; 1: partial sums; 2: merge and dx
    SINGLE_TILE: tl.constexpr,  # PHASE 0 with S <= BLOCK_S (never with PHASE 1 / 2): the group is one tile
    K_BLOCK: tl.constexpr,  # chunks' partials read at a time (PHASE 2; 1 otherwise)
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    bg, chunk_id, s_lo, s_hi, cl, c_mask, c0, c, sample, ptr_c, bc, emb = _group_program(
        emb_ptr, C, S, stride_c, channels_per_group, num_groups, num_chunks, chunk, HAS_EMB, BLOCK_C)
    mean = tl.load(mean_ptr + bg)
    rstd = tl.load(rstd_ptr + bg)
    # k = dz/dn per channel (the forward's a at rstd = 1); z = n * k + d is needed only to
    # differentiate the activation.
    k, d = _channel_coefficients(weight_ptr, bias_ptr, scale_ptr, shift_ptr, c, bc, c_mask,
                                 tl.full((BLOCK_C,), 1.0, tl.float32),
                                 HAS_WEIGHT, HAS_BIAS and SILU, HAS_SCALE, HAS_SHIFT and SILU)
    inv_n = 1.0 / (channels_per_group * S * 1.0)  # * 1.0: both may be specialised to constexpr 1

    if SINGLE_TILE:
        # The whole group is one tile: x and dy are read once and stay in registers between the
        # sums and dx (the streaming path below reads both twice).
        s = tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (s < S)[None, :]
        offs = ptr_c + s[None, :] * stride_s
        n, dz = _normalised_and_dz(x_ptr, dy_ptr, offs, mask, emb[:, None], mean, rstd, k[:, None], d[:, None],
                                   HAS_EMB, SILU)
        sum_dz, sum_dz_n, sum_n = tl.sum(dz, axis=1), tl.sum(dz * n, axis=1), tl.sum(n, axis=1)
        c1, c2 = _store_channel_sums(sum_dz_ptr, sum_dz_n_ptr, d_emb_ptr, bc, c_mask, sum_dz, sum_dz_n, sum_n,
                                     k, rstd, inv_n, S)
        tl.store(dx_ptr + offs, rstd * (dz * k[:, None] - c1 - n * c2), mask=mask)
    else:
        if PHASE == 2:
            # The K chunks' per-channel partial sums, merged in a fixed order.
            all_dz, all_dz_n, all_n = _sum_chunk_partials(part_dz_ptr, part_dz_n_ptr, part_n_ptr, bc[None, :],
                                                          c_mask[None, :], num_chunks, 1, BLOCK_C, K_BLOCK)
            sum_dz, sum_dz_n, sum_n = tl.sum(all_dz, axis=0), tl.sum(all_dz_n, axis=0), tl.sum(all_n, axis=0)
        else:
            # Pass 1: per-channel sums over this program's positions (all S unless split: then the
            # sums are complete here, no atomics, no second kernel). dz is summed over s after the
            # loop, from a tile-shaped accumulator: without SILU a float32 dz is the raw load of dy,
            # and triton 3.6's OptimizeThreadLocality pass asserts (loopResult.hasOneUse()) on an
            # in-loop tl.sum of a load whose loop result has several uses.
            acc_dz = tl.zeros((BLOCK_C, BLOCK_S), tl.float32)
            sum_dz_n = tl.zeros((BLOCK_C,), tl.float32)
            sum_n = tl.zeros((BLOCK_C,), tl.float32)
            for s0 in range(s_lo, s_hi, BLOCK_S):
                s = s0 + tl.arange(0, BLOCK_S)
                mask = c_mask[:, None] & (s < s_hi)[None, :]
                offs = ptr_c + s[None, :] * stride_s
                n, dz = _normalised_and_dz(x_ptr, dy_ptr, offs, mask, emb[:, None], mean, rstd, k[:, None],
                                           d[:, None], HAS_EMB, SILU)
                acc_dz += dz
                # sum_n first: the other order left triton 3.9's sm_90 build of PHASE 1 (bfloat16,
                # BLOCK_C = BLOCK_S = 64) at 64 registers with a 4-byte spill (compile report).
                sum_n += tl.sum(n, axis=1)
                sum_dz_n += tl.sum(dz * n, axis=1)
            sum_dz = tl.sum(acc_dz, axis=1)
        if PHASE == 1:
            part = bc * num_chunks + chunk_id
            tl.store(part_dz_ptr + part, sum_dz, mask=c_mask)
            tl.store(part_dz_n_ptr + part, sum_dz_n, mask=c_mask)
            tl.store(part_n_ptr + part, sum_n, mask=c_mask)
        else:
            first = c_mask & (tl.zeros_like(c) + chunk_id == 0)  # one program of a split group writes the sums
            c1, c2 = _store_channel_sums(sum_dz_ptr, sum_dz_n_ptr, d_emb_ptr, bc, first, sum_dz, sum_dz_n, sum_n,
                                         k, rstd, inv_n, S)

            # Pass 2: dx over this program's positions, recomputing n and dz from x and dy.
            for s0 in range(s_lo, s_hi, BLOCK_S):
                s = s0 + tl.arange(0, BLOCK_S)
                mask = c_mask[:, None] & (s < s_hi)[None, :]
                offs = ptr_c + s[None, :] * stride_s
                n, dz = _normalised_and_dz(x_ptr, dy_ptr, offs, mask, emb[:, None], mean, rstd, k[:, None],
                                           d[:, None], HAS_EMB, SILU)
                tl.store(dx_ptr + offs, rstd * (dz * k[:, None] - c1 - n * c2), mask=mask)


# --- channels_last (NHWC storage) -------------------------------------------------------------------
# A group's c_g channels at one spatial position are c_g adjacent values, the next position C values
# further on: a [BLOCK_C, BLOCK_S] tile of one group touches BLOCK_S separate segments of c_g * elem
# bytes (8-16 B for c_g = 4 at 16 / 32 bits), a fraction of each 32-byte sector fetched. These kernels
# instead take a block of GB adjacent groups, whose GB * c_g channels are one contiguous row segment
# per position, and walk [BLOCK_S, GB, CG] tiles (CG = c_g rounded up to a power of two): the last,
# fastest axis is the channel within its group (stride 1), then the group (stride c_g), then the
# position (stride C), so a warp's lanes cover whole row segments of GB * c_g channels (64 channels:
# 256 B in float32, 128 B in 16 bits). Statistics are per channel inside the loop and merged per
# group after it, so no lane ever mixes two groups.
#
# Split reduction (a batch too small to fill the GPU, e.g. sampling one image): the positions of
# each (sample, group block) are cut into K chunks, one program each. PHASE 1 writes each chunk's
# partial statistics to a float32 workspace; PHASE 2 (a second launch) merges a block's K partials
# with a fixed reduction order (the same in every program: deterministic, no atomics) and
# normalises its chunk. PHASE 0 is the unsplit kernel: both in one program.


@triton.jit
def _cl_program(emb_ptr, C, S, num_groups, num_chunks, chunk, HAS_EMB: tl.constexpr, C_G: tl.constexpr,
                GB: tl.constexpr, CG: tl.constexpr):
    """This program's sample b, chunk index k and positions [s_lo, s_hi); its groups g [GB] with
    their mask; channels c [GB, CG] with their mask; the (b, c) indices; the sample's storage
    offset; emb[b, c] as [1, GB, CG] float32 (zeros without HAS_EMB)."""
    pid = tl.program_id(0)
    k = pid % num_chunks
    block = pid // num_chunks
    blocks_per_sample = tl.cdiv(num_groups, GB)
    b = block // blocks_per_sample
    g = (block % blocks_per_sample) * GB + tl.arange(0, GB)
    g_mask = g < num_groups
    j = tl.arange(0, CG)
    c = g[:, None] * C_G + j[None, :]
    c_mask = g_mask[:, None] & (j < C_G)[None, :]
    bc = b * C + c
    sample = b.to(tl.int64) * C * S
    s_lo = k * chunk
    s_hi = tl.minimum(s_lo + chunk, S)
    emb = tl.zeros((GB, CG), tl.float32)
    if HAS_EMB:
        emb = tl.load(emb_ptr + bc, mask=c_mask, other=0.0).to(tl.float32)
    return b, k, s_lo, s_hi, g, g_mask, c, c_mask, bc, sample, emb[None, :, :]


@triton.jit
def _cl_tile(sample, c, c_mask, s0, s_hi, C, BLOCK_S: tl.constexpr):
    """Storage offsets and mask of the [BLOCK_S, GB, CG] tile at positions s0 .. s0 + BLOCK_S."""
    s = s0 + tl.arange(0, BLOCK_S)
    offs = sample + s.to(tl.int64)[:, None, None] * C + c[None, :, :]
    mask = (s < s_hi)[:, None, None] & c_mask[None, :, :]
    return offs, mask


@triton.jit
def _cl_channel_stats(x_ptr, sample, c, c_mask, emb, s_lo, s_hi, C, HAS_EMB: tl.constexpr, GB: tl.constexpr,
                      CG: tl.constexpr, BLOCK_S: tl.constexpr):
    """Per-channel (mean, M2) [GB, CG] of h over positions [s_lo, s_hi): each tile's exact mean and
    sum of squared deviations merged into the running ones (Chan et al.), as the NCHW kernel does
    per group; no E[h^2] - E[h]^2 cancellation."""
    mean = tl.zeros((GB, CG), tl.float32)
    m2 = tl.zeros((GB, CG), tl.float32)
    count = 0.0
    for s0 in range(s_lo, s_hi, BLOCK_S):
        offs, mask = _cl_tile(sample, c, c_mask, s0, s_hi, C, BLOCK_S)
        h = tl.where(mask, _load_h(x_ptr, offs, mask, emb, HAS_EMB), 0.0)
        n_tile = tl.minimum(s_hi - s0, BLOCK_S).to(tl.float32)
        tile_mean = tl.sum(h, axis=0) / n_tile
        dev = tl.where(mask, h - tile_mean[None, :, :], 0.0)
        total = count + n_tile
        delta = tile_mean - mean
        mean += delta * (n_tile / total)
        m2 += tl.sum(dev * dev, axis=0) + delta * delta * (count * n_tile / total)
        count = total
    return mean, m2


@triton.jit
def _cl_group_stats(mean_c, m2_c, c_mask, positions, C_G: tl.constexpr):
    """Per-group (mean, M2) [GB] from per-channel ones over the same ``positions``: the exact merge of
    C_G equal-count parts, M2 = sum M2_c + positions * sum (mean_c - mean)^2."""
    mean = tl.sum(tl.where(c_mask, mean_c, 0.0), axis=1) / C_G
    spread = tl.where(c_mask, mean_c - mean[:, None], 0.0)
    return mean, tl.sum(tl.where(c_mask, m2_c, 0.0), axis=1) + positions * tl.sum(spread * spread, axis=1)


@triton.jit
def _cl_apply(x_ptr, out_ptr, sample, c, c_mask, emb, mean, a, d, s_lo, s_hi, C, HAS_EMB: tl.constexpr,
              SILU: tl.constexpr, BLOCK_S: tl.constexpr):
    """y = act((h - mean) * a + d) over positions [s_lo, s_hi); mean, a, d: [1, GB, CG]."""
    for s0 in range(s_lo, s_hi, BLOCK_S):
        offs, mask = _cl_tile(sample, c, c_mask, s0, s_hi, C, BLOCK_S)
        h = _load_h(x_ptr, offs, mask, emb, HAS_EMB)
        tl.store(out_ptr + offs, _activate((h - mean) * a + d, SILU), mask=mask)


@triton.jit
def _group_norm_cl_fwd_kernel(
    x_ptr,  # (B, H, W, C) storage (a channels_last (B, C, H, W) tensor), any float dtype
    out_ptr,  # like x
    weight_ptr,  # (C,) affine weight; unused unless HAS_WEIGHT
    bias_ptr,  # (C,) affine bias; unused unless HAS_BIAS
    emb_ptr,  # (B, C) contiguous prologue add; unused unless HAS_EMB
    scale_ptr,  # (B, C) contiguous epilogue scale; unused unless HAS_SCALE
    shift_ptr,  # (B, C) contiguous epilogue shift; unused unless HAS_SHIFT
    mean_ptr,  # float32 (B * G,) out: group mean of h (PHASE 0 and 2)
    rstd_ptr,  # float32 (B * G,) out: 1 / sqrt(var + eps) (PHASE 0 and 2)
    part_mean_ptr,  # float32 (B * G, K) workspace: per-chunk group mean (PHASE 1 writes, 2 reads)
    part_m2_ptr,  # float32 (B * G, K) workspace: per-chunk group M2
    C,  # channels
    S,  # spatial positions (H * W)
    num_groups,  # G
    num_chunks,  # K: chunks per (sample, group block); 1 for PHASE 0
    chunk,  # positions per chunk (a multiple of BLOCK_S; S for PHASE 0)
    eps,  # added to the variance
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    PHASE: tl.constexpr,  # 0: statistics and output; 1: partial statistics; 2: merge and output
    SINGLE_TILE: tl.constexpr,  # PHASE 0 with S <= BLOCK_S (never set with PHASE 1 / 2): x read once
    C_G: tl.constexpr,  # channels per group
    GB: tl.constexpr,  # groups per program (a power of two; groups past G masked)
    CG: tl.constexpr,  # C_G rounded up to a power of two
    K_BLOCK: tl.constexpr,  # chunks' partials read at a time (PHASE 2; 1 otherwise)
    BLOCK_S: tl.constexpr,
):
    b, k, s_lo, s_hi, g, g_mask, c, c_mask, bc, sample, emb = _cl_program(
        emb_ptr, C, S, num_groups, num_chunks, chunk, HAS_EMB, C_G, GB, CG)
    bg = b * num_groups + g  # [GB] rows of the (B * G) statistics
    if SINGLE_TILE:
        # Every position of the block's groups in one tile: exact two-pass statistics in registers.
        offs, mask = _cl_tile(sample, c, c_mask, 0, S, C, BLOCK_S)
        h = _load_h(x_ptr, offs, mask, emb, HAS_EMB)
        count = S * C_G * 1.0  # * 1.0: S may be specialised to the constexpr 1
        mean = tl.sum(tl.sum(tl.where(mask, h, 0.0), axis=2), axis=0) / count
        dev = tl.where(mask, h - mean[None, :, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(dev * dev, axis=2), axis=0) / count + eps)
        tl.store(mean_ptr + bg, mean, mask=g_mask)
        tl.store(rstd_ptr + bg, rstd, mask=g_mask)
        a, d = _channel_coefficients(weight_ptr, bias_ptr, scale_ptr, shift_ptr, c, bc, c_mask,
                                     tl.zeros((GB, CG), tl.float32) + rstd[:, None],
                                     HAS_WEIGHT, HAS_BIAS, HAS_SCALE, HAS_SHIFT)
        tl.store(out_ptr + offs, _activate(dev * a[None, :, :] + d[None, :, :], SILU), mask=mask)
    else:
        if PHASE == 2:
            mean, m2 = _merge_chunk_stats(part_mean_ptr, part_m2_ptr, bg, g_mask, num_chunks, chunk, S, C_G, GB,
                                          K_BLOCK)
        else:
            mean_c, m2_c = _cl_channel_stats(x_ptr, sample, c, c_mask, emb, s_lo, s_hi, C, HAS_EMB, GB, CG, BLOCK_S)
            mean, m2 = _cl_group_stats(mean_c, m2_c, c_mask, (s_hi - s_lo) * 1.0, C_G)
        if PHASE == 1:
            tl.store(part_mean_ptr + bg * num_chunks + k, mean, mask=g_mask)
            tl.store(part_m2_ptr + bg * num_chunks + k, m2, mask=g_mask)
        else:
            rstd = 1.0 / tl.sqrt(m2 / (S * C_G * 1.0) + eps)
            first = g_mask & (tl.zeros_like(g) + k == 0)  # one program of the block writes the statistics
            tl.store(mean_ptr + bg, mean, mask=first)
            tl.store(rstd_ptr + bg, rstd, mask=first)
            a, d = _channel_coefficients(weight_ptr, bias_ptr, scale_ptr, shift_ptr, c, bc, c_mask,
                                         tl.zeros((GB, CG), tl.float32) + rstd[:, None],
                                         HAS_WEIGHT, HAS_BIAS, HAS_SCALE, HAS_SHIFT)
            _cl_apply(x_ptr, out_ptr, sample, c, c_mask, emb, mean[None, :, None], a[None, :, :], d[None, :, :],
                      s_lo, s_hi, C, HAS_EMB, SILU, BLOCK_S)


@triton.jit
def _cl_group_terms(sum_dz, sum_dz_n, sum_n, k, rstd, c_mask, inv_n, S):
    """(c1, c2) [GB] of dx and dL/demb [GB, CG] from the complete per-channel sums (see
    _store_channel_sums; here rstd is per group, [GB])."""
    c1 = tl.sum(tl.where(c_mask, k * sum_dz, 0.0), axis=1) * inv_n
    c2 = tl.sum(tl.where(c_mask, k * sum_dz_n, 0.0), axis=1) * inv_n
    d_emb = rstd[:, None] * (k * sum_dz - S * c1[:, None] - sum_n * c2[:, None])
    return c1, c2, d_emb


@triton.jit
def _group_norm_cl_bwd_kernel(
    x_ptr,  # (B, H, W, C) storage: the forward input, any float dtype
    dy_ptr,  # like x: gradient of the output
    dx_ptr,  # like x: out, gradient of x (= of h); PHASE 0 and 2
    weight_ptr,  # (C,) affine weight; unused unless HAS_WEIGHT
    bias_ptr,  # (C,) affine bias; unused unless HAS_BIAS and SILU
    emb_ptr,  # (B, C) contiguous prologue add; unused unless HAS_EMB
    scale_ptr,  # (B, C) contiguous epilogue scale; unused unless HAS_SCALE
    shift_ptr,  # (B, C) contiguous epilogue shift; unused unless HAS_SHIFT and SILU
    mean_ptr,  # float32 (B * G,) group means saved by the forward
    rstd_ptr,  # float32 (B * G,) group rstd saved by the forward
    sum_dz_ptr,  # float32 (B, C) out: sum over s of dz (PHASE 0 and 2)
    sum_dz_n_ptr,  # float32 (B, C) out: sum over s of dz * n
    d_emb_ptr,  # float32 (B, C) out: sum over s of dL/dh
    part_dz_ptr,  # float32 (B * C, K) workspace: per-chunk sums of dz (PHASE 1 writes, 2 reads)
    part_dz_n_ptr,  # float32 (B * C, K) workspace: per-chunk sums of dz * n
    part_n_ptr,  # float32 (B * C, K) workspace: per-chunk sums of n
    C,  # channels
    S,  # spatial positions (H * W)
    num_groups,  # G
    num_chunks,  # K: chunks per (sample, group block); 1 for PHASE 0
    chunk,  # positions per chunk (a multiple of BLOCK_S; S for PHASE 0)
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    PHASE: tl.constexpr,  # 0: sums and dx; 1: partial sums; 2: merge and dx
    SINGLE_TILE: tl.constexpr,  # PHASE 0 with S <= BLOCK_S (never set with PHASE 1 / 2): x and dy read once
    C_G: tl.constexpr,  # channels per group
    GB: tl.constexpr,  # groups per program
    CG: tl.constexpr,  # C_G rounded up to a power of two
    K_BLOCK: tl.constexpr,  # chunks' partials read at a time (PHASE 2; 1 otherwise)
    BLOCK_S: tl.constexpr,
):
    b, k_chunk, s_lo, s_hi, g, g_mask, c, c_mask, bc, sample, emb = _cl_program(
        emb_ptr, C, S, num_groups, num_chunks, chunk, HAS_EMB, C_G, GB, CG)
    bg = b * num_groups + g
    mean = tl.load(mean_ptr + bg, mask=g_mask, other=0.0)[None, :, None]
    rstd = tl.load(rstd_ptr + bg, mask=g_mask, other=0.0)
    k, d = _channel_coefficients(weight_ptr, bias_ptr, scale_ptr, shift_ptr, c, bc, c_mask,
                                 tl.full((GB, CG), 1.0, tl.float32),
                                 HAS_WEIGHT, HAS_BIAS and SILU, HAS_SCALE, HAS_SHIFT and SILU)
    inv_n = 1.0 / (C_G * S * 1.0)
    rstd3 = rstd[None, :, None]
    if SINGLE_TILE:
        # Every position of the block's groups in one tile: x and dy read once.
        offs, mask = _cl_tile(sample, c, c_mask, 0, S, C, BLOCK_S)
        n, dz = _normalised_and_dz(x_ptr, dy_ptr, offs, mask, emb, mean, rstd3, k[None, :, :], d[None, :, :],
                                   HAS_EMB, SILU)
        sum_dz, sum_dz_n, sum_n = tl.sum(dz, axis=0), tl.sum(dz * n, axis=0), tl.sum(n, axis=0)
        c1, c2, d_emb = _cl_group_terms(sum_dz, sum_dz_n, sum_n, k, rstd, c_mask, inv_n, S)
        tl.store(sum_dz_ptr + bc, sum_dz, mask=c_mask)
        tl.store(sum_dz_n_ptr + bc, sum_dz_n, mask=c_mask)
        tl.store(d_emb_ptr + bc, d_emb, mask=c_mask)
        dx = rstd3 * (dz * k[None, :, :] - c1[None, :, None] - n * c2[None, :, None])
        tl.store(dx_ptr + offs, dx, mask=mask)
    else:
        if PHASE == 2:
            sum_dz, sum_dz_n, sum_n = _sum_chunk_partials(part_dz_ptr, part_dz_n_ptr, part_n_ptr, bc, c_mask,
                                                          num_chunks, GB, CG, K_BLOCK)
        else:
            # Tile-shaped accumulators summed after the loop: triton 3.6's OptimizeThreadLocality
            # pass asserts (loopResult.hasOneUse()) on an in-loop tl.sum of a raw load whose loop
            # result has several uses (see _group_norm_bwd_kernel).
            acc_dz = tl.zeros((BLOCK_S, GB, CG), tl.float32)
            acc_dz_n = tl.zeros((BLOCK_S, GB, CG), tl.float32)
            acc_n = tl.zeros((BLOCK_S, GB, CG), tl.float32)
            for s0 in range(s_lo, s_hi, BLOCK_S):
                offs, mask = _cl_tile(sample, c, c_mask, s0, s_hi, C, BLOCK_S)
                n, dz = _normalised_and_dz(x_ptr, dy_ptr, offs, mask, emb, mean, rstd3, k[None, :, :],
                                           d[None, :, :], HAS_EMB, SILU)
                acc_dz += dz
                acc_dz_n += dz * n
                acc_n += n
            sum_dz, sum_dz_n, sum_n = tl.sum(acc_dz, axis=0), tl.sum(acc_dz_n, axis=0), tl.sum(acc_n, axis=0)
        if PHASE == 1:
            part = bc * num_chunks + k_chunk
            tl.store(part_dz_ptr + part, sum_dz, mask=c_mask)
            tl.store(part_dz_n_ptr + part, sum_dz_n, mask=c_mask)
            tl.store(part_n_ptr + part, sum_n, mask=c_mask)
        else:
            c1, c2, d_emb = _cl_group_terms(sum_dz, sum_dz_n, sum_n, k, rstd, c_mask, inv_n, S)
            first = c_mask & (tl.zeros_like(c) + k_chunk == 0)  # one program of the block writes the per-channel sums
            tl.store(sum_dz_ptr + bc, sum_dz, mask=first)
            tl.store(sum_dz_n_ptr + bc, sum_dz_n, mask=first)
            tl.store(d_emb_ptr + bc, d_emb, mask=first)
            # dx over this program's positions, recomputing n and dz from x and dy.
            for s0 in range(s_lo, s_hi, BLOCK_S):
                offs, mask = _cl_tile(sample, c, c_mask, s0, s_hi, C, BLOCK_S)
                n, dz = _normalised_and_dz(x_ptr, dy_ptr, offs, mask, emb, mean, rstd3, k[None, :, :],
                                           d[None, :, :], HAS_EMB, SILU)
                dx = rstd3 * (dz * k[None, :, :] - c1[None, :, None] - n * c2[None, :, None])
                tl.store(dx_ptr + offs, dx, mask=mask)


def _geometry(x: torch.Tensor, num_groups: int, tile: int | None = None) -> tuple:
    """(C, S, stride_c, stride_s, Cg, BLOCK_C, BLOCK_S) of x, contiguous or 4-D channels_last, for
    tiles of ``tile`` elements (default TILE)."""
    tile = TILE if tile is None else tile
    C = x.shape[1]
    S = x.numel() // (x.shape[0] * C)
    channels_last = x.dim() == 4 and not x.is_contiguous()
    stride_c, stride_s = (1, C) if channels_last else (S, 1)
    cpg = C // num_groups
    block_c = triton.next_power_of_2(cpg)
    block_s = max(1, min(triton.next_power_of_2(S), tile // block_c))
    return C, S, stride_c, stride_s, cpg, block_c, block_s


def _or(t, fallback: torch.Tensor) -> torch.Tensor:
    # An absent operand's pointer argument gets a valid tensor the kernel never reads (its HAS_ flag is off).
    return fallback if t is None else t


def _flags(weight, bias, emb, scale, shift, silu: bool) -> dict:
    return dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_EMB=emb is not None,
                HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, SILU=silu)


def _split(programs: int, S: int, block_s: int, row_elems: int) -> tuple:
    """(num_chunks K, chunk, K_BLOCK) of a launch of ``programs`` (sample, group [block]) programs over S
    positions in tiles of block_s: K = 1 and chunk = S (one program per group) when there are at
    least SPLIT_MIN_PROGRAMS programs or the positions are one tile; else enough chunks, each a
    whole number of tiles, to bring the grid to about SPLIT_MIN_PROGRAMS. K_BLOCK: the chunks whose
    partials PHASE 2 reads at a time, a tile of at most 1024 with ``row_elems`` channels per chunk."""
    tiles = triton.cdiv(S, block_s)
    chunks, chunk = 1, S
    if programs < SPLIT_MIN_PROGRAMS and tiles > 1:
        chunk = triton.cdiv(tiles, min(tiles, triton.cdiv(SPLIT_MIN_PROGRAMS, programs))) * block_s
        chunks = triton.cdiv(S, chunk)
    return chunks, chunk, max(1, min(triton.next_power_of_2(chunks), 1024 // row_elems))


def _nchw_geometry(x: torch.Tensor, num_groups: int, tile: int | None = None) -> dict:
    """Launch geometry of the NCHW kernels for a contiguous x: _geometry's values by name, the split
    (num_chunks K, chunk positions, K_BLOCK) and the grid (one program per (sample, group, chunk))."""
    C, S, stride_c, stride_s, cpg, block_c, block_s = _geometry(x, num_groups, tile)
    programs = x.shape[0] * num_groups
    chunks, chunk, k_block = _split(programs, S, block_s, block_c)
    return dict(C=C, S=S, stride_c=stride_c, stride_s=stride_s, cpg=cpg, BLOCK_C=block_c, BLOCK_S=block_s,
                grid=(programs * chunks,), num_chunks=chunks, chunk=chunk, K_BLOCK=k_block,
                SINGLE_TILE=chunks == 1 and S <= block_s)


def _launch_phases(kernel, grid, head, placeholders, tail, part_shape, k_block: int, consts: dict) -> None:
    """kernel[grid](*head, *workspace, *tail): PHASE 0 (no workspace: ``placeholders``, float32
    tensors it never reads) when part_shape's K (last) is 1, else PHASE 1 (partials into a float32
    workspace of part_shape, one (rows, K) slab per partial) then PHASE 2 (merge and output)."""
    if part_shape[-1] == 1:
        kernel[grid](*head, *placeholders, *tail, PHASE=0, K_BLOCK=1, **consts)
        return
    part = torch.empty(part_shape, device=head[0].device, dtype=torch.float32)
    for phase in (1, 2):
        kernel[grid](*head, *part, *tail, PHASE=phase, K_BLOCK=k_block if phase == 2 else 1, **consts)


def _cl_geometry(x: torch.Tensor, num_groups: int, cl_tile: int | None = None) -> dict:
    """Launch geometry of the channels_last kernels for x (B, C, H, W) in NHWC storage: the
    constexprs C_G, GB, CG, BLOCK_S, and the split (num_chunks K, chunk positions) with the grid,
    for tiles of ``cl_tile`` elements (default CL_TILE)."""
    cl_tile = CL_TILE if cl_tile is None else cl_tile
    B, C = x.shape[:2]
    S = x.numel() // (B * C)
    c_g = C // num_groups
    cg = triton.next_power_of_2(c_g)
    gb = max(1, min(triton.next_power_of_2(num_groups), CL_CHANNELS // cg))
    block_s = max(1, min(triton.next_power_of_2(S), cl_tile // (gb * cg)))
    if triton.next_power_of_2(S) * gb * cg <= TILE:  # the whole block in one tile of up to TILE: x read once
        block_s = triton.next_power_of_2(S)
    blocks = B * triton.cdiv(num_groups, gb)
    chunks, chunk, k_block = _split(blocks, S, block_s, gb * cg)
    return dict(C=C, S=S, C_G=c_g, GB=gb, CG=cg, BLOCK_S=block_s, grid=(blocks * chunks,), num_chunks=chunks,
                chunk=chunk, K_BLOCK=k_block, SINGLE_TILE=chunks == 1 and S <= block_s)


def _channels_last(x: torch.Tensor) -> bool:
    # The op hands over a contiguous x or a 4-D channels_last one (see _geometry).
    return x.dim() == 4 and not x.is_contiguous()


def tile_kernel(pass_: str, x: torch.Tensor, num_groups: int) -> str:
    """The name kernels/tuning.py keys this launch's tile by: the layout, and whether the launch has
    fewer (sample, group) programs than SPLIT_MIN_PROGRAMS (so the split may spread it: batch-1
    sampling), as the best tile of such a launch need not be a training batch's at the same
    elements per group. ``pass_``: "forward" or "backward"."""
    layout = "_cl" if _channels_last(x) else ""
    few = "_few" if x.shape[0] * num_groups < SPLIT_MIN_PROGRAMS else ""
    return f"group_norm{layout}{few}_{pass_}"


def forward(x: torch.Tensor, weight, bias, emb, scale, shift, num_groups: int, eps: float, silu: bool,
            out: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor) -> None:
    """Launch the forward on a non-empty x, contiguous or 4-D channels_last; ``out`` shares x's strides.

    weight, bias: contiguous (C,) or None; emb, scale, shift: contiguous (B, C) or None (x's dtype);
    mean, rstd: float32 (B, G) outputs.
    """
    operands = (_or(weight, x), _or(bias, x), _or(emb, x), _or(scale, x), _or(shift, x))
    if _channels_last(x):
        _forward_channels_last(x, operands, num_groups, eps, _flags(weight, bias, emb, scale, shift, silu),
                               out, mean, rstd)
        return
    kernel = tile_kernel("forward", x, num_groups)
    config = tuning.choose(kernel, x, x.numel() // (x.shape[0] * num_groups), bench=tuning.rerun(
        kernel, forward, x, weight, bias, emb, scale, shift, num_groups, eps, silu, out, mean, rstd))
    geo = _nchw_geometry(x, num_groups, config["TILE"])
    K = geo["num_chunks"]
    consts = dict(_flags(weight, bias, emb, scale, shift, silu), SINGLE_TILE=geo["SINGLE_TILE"],
                  BLOCK_C=geo["BLOCK_C"], BLOCK_S=geo["BLOCK_S"],
                  num_warps=config["num_warps"])
    tail = (geo["C"], geo["S"], geo["stride_c"], geo["stride_s"], geo["cpg"], num_groups, K, geo["chunk"], eps)
    _launch_phases(_group_norm_fwd_kernel, geo["grid"], (x, out, *operands, mean, rstd), (mean, rstd), tail,
                   (2, x.shape[0] * num_groups, K), geo["K_BLOCK"], consts)


def _forward_channels_last(x, operands, num_groups, eps, flags, out, mean, rstd) -> None:
    kernel = tile_kernel("forward", x, num_groups)
    config = tuning.choose(kernel, x, x.numel() // (x.shape[0] * num_groups), bench=tuning.rerun(
        kernel, _forward_channels_last, x, operands, num_groups, eps, flags, out, mean, rstd))
    geo = _cl_geometry(x, num_groups, config["CL_TILE"])
    K = geo["num_chunks"]
    args = (geo["C"], geo["S"], num_groups, K, geo["chunk"], eps)
    consts = dict(flags, SINGLE_TILE=geo["SINGLE_TILE"], C_G=geo["C_G"], GB=geo["GB"], CG=geo["CG"],
                  BLOCK_S=geo["BLOCK_S"], num_warps=config["num_warps"])
    _launch_phases(_group_norm_cl_fwd_kernel, geo["grid"], (x, out, *operands, mean, rstd), (mean, rstd), args,
                   (2, x.shape[0] * num_groups, K), geo["K_BLOCK"], consts)


def backward(dy: torch.Tensor, x: torch.Tensor, weight, bias, emb, scale, shift, mean: torch.Tensor,
             rstd: torch.Tensor, num_groups: int, silu: bool, dx: torch.Tensor, sum_dz: torch.Tensor,
             sum_dz_n: torch.Tensor, d_emb: torch.Tensor) -> None:
    """Launch the backward; dy and dx share x's strides; sum_dz, sum_dz_n, d_emb: float32 (B, C) outputs."""
    operands = (_or(weight, x), _or(bias, x), _or(emb, x), _or(scale, x), _or(shift, x))
    if _channels_last(x):
        _backward_channels_last(dy, x, operands, mean, rstd, num_groups, _flags(weight, bias, emb, scale, shift, silu),
                                dx, sum_dz, sum_dz_n, d_emb)
        return
    kernel = tile_kernel("backward", x, num_groups)
    config = tuning.choose(kernel, x, x.numel() // (x.shape[0] * num_groups), bench=tuning.rerun(
        kernel, backward, dy, x, weight, bias, emb, scale, shift, mean, rstd, num_groups, silu, dx,
        sum_dz, sum_dz_n, d_emb))
    geo = _nchw_geometry(x, num_groups, config["TILE"])
    K = geo["num_chunks"]
    consts = dict(_flags(weight, bias, emb, scale, shift, silu), SINGLE_TILE=geo["SINGLE_TILE"],
                  BLOCK_C=geo["BLOCK_C"], BLOCK_S=geo["BLOCK_S"],
                  num_warps=config["num_warps"])
    tail = (geo["C"], geo["S"], geo["stride_c"], geo["stride_s"], geo["cpg"], num_groups, K, geo["chunk"])
    _launch_phases(_group_norm_bwd_kernel, geo["grid"], (x, dy, dx, *operands, mean, rstd, sum_dz, sum_dz_n, d_emb),
                   (sum_dz, sum_dz_n, d_emb), tail, (3, x.shape[0] * geo["C"], K), geo["K_BLOCK"], consts)


def _backward_channels_last(dy, x, operands, mean, rstd, num_groups, flags, dx, sum_dz, sum_dz_n, d_emb) -> None:
    kernel = tile_kernel("backward", x, num_groups)
    config = tuning.choose(kernel, x, x.numel() // (x.shape[0] * num_groups), bench=tuning.rerun(
        kernel, _backward_channels_last, dy, x, operands, mean, rstd, num_groups, flags, dx,
        sum_dz, sum_dz_n, d_emb))
    geo = _cl_geometry(x, num_groups, config["CL_TILE"])
    K = geo["num_chunks"]
    args = (geo["C"], geo["S"], num_groups, K, geo["chunk"])
    consts = dict(flags, SINGLE_TILE=geo["SINGLE_TILE"], C_G=geo["C_G"], GB=geo["GB"], CG=geo["CG"],
                  BLOCK_S=geo["BLOCK_S"], num_warps=config["num_warps"])
    _launch_phases(_group_norm_cl_bwd_kernel, geo["grid"], (x, dy, dx, *operands, mean, rstd, sum_dz, sum_dz_n, d_emb),
                   (sum_dz, sum_dz_n, d_emb), args, (3, x.shape[0] * geo["C"], K), geo["K_BLOCK"], consts)
