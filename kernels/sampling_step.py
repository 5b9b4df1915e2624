"""One fused reverse-diffusion step (DDPM / DDIM / DPM-Solver++), one pass over memory.

Per sample b with coefficient row c = coefs[index[b]] (see fastgen/ops/sampling_step.py)::

    x0  = clamp(c.PX * x + c.PM * m)
    eps = c.EX * x + c.EM * m + c.E0 * x0
    out = c.OX * x + c.O0 * x0 + c.OE * eps + c.O1 * prev_x0 + c.SZ * z
"""
import torch
import triton
import triton.language as tl

from .philox import philox_normal
from .tiling import launch_shape, sample_chunk

NOISE_NONE, NOISE_TENSOR, NOISE_PHILOX = 0, 1, 2


@triton.jit
def _sampling_step_kernel(
    sample_ptr,  # (B * S,) x_t in storage order, any float dtype
    model_ptr,  # (B * S,) model output, same layout
    prev_ptr,  # (B * S,) previous x0 (multistep); unused unless HAS_PREV
    noise_ptr,  # (B * S,) z; unused unless NOISE == NOISE_TENSOR
    out_ptr,  # (B * S,) x_{t-1}, the dtype of sample
    x0_ptr,  # (B * S,) float32 predicted x0; unused unless WRITE_X0
    index_ptr,  # int64 row of sample b at index_ptr + b * index_stride
    index_stride,  # 0 when one row serves the whole batch
    coefs_ptr,  # float32 (num_rows, 10) contiguous coefficient table
    num_rows,  # rows are clamped into [0, num_rows) so nothing reads out of bounds
    rng_ptr,  # int64 [seed, offset] Philox state; unused unless NOISE == NOISE_PHILOX
    clip,  # clamp x0 into [-clip, clip] when CLIP
    per_sample,  # S, elements of one sample
    chunks_per_sample,  # cdiv(S, BLOCK)
    HAS_PREV: tl.constexpr,
    CLIP: tl.constexpr,
    NOISE: tl.constexpr,
    WRITE_X0: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b, mask, idx = sample_chunk(per_sample, chunks_per_sample, BLOCK)
    row = tl.load(index_ptr + b * index_stride)
    row = tl.minimum(tl.maximum(row, 0), num_rows - 1)
    c = coefs_ptr + row * 10
    px, pm = tl.load(c + 0), tl.load(c + 1)
    ex, em, e0 = tl.load(c + 2), tl.load(c + 3), tl.load(c + 4)
    ox, o0, oe = tl.load(c + 5), tl.load(c + 6), tl.load(c + 7)

    x = tl.load(sample_ptr + idx, mask=mask).to(tl.float32)
    m = tl.load(model_ptr + idx, mask=mask).to(tl.float32)
    x0 = px * x + pm * m
    if CLIP:
        # where, not minimum/maximum: a NaN must stay NaN as in torch.clamp
        x0 = tl.where(x0 < -clip, -clip, tl.where(x0 > clip, clip, x0))
    eps = ex * x + em * m + e0 * x0
    out = ox * x + o0 * x0 + oe * eps
    if HAS_PREV:
        o1 = tl.load(c + 8)
        out = out + o1 * tl.load(prev_ptr + idx, mask=mask).to(tl.float32)
    if NOISE != 0:
        sz = tl.load(c + 9)
        if sz != 0.0:  # deterministic rows never read (or generate) noise: NaN there stays unseen
            if NOISE == 1:
                z = tl.load(noise_ptr + idx, mask=mask).to(tl.float32)
            else:
                z = philox_normal(tl.load(rng_ptr), tl.load(rng_ptr + 1) + idx)
            out = out + sz * z
    tl.store(out_ptr + idx, out, mask=mask)
    if WRITE_X0:
        tl.store(x0_ptr + idx, x0, mask=mask)


def sampling_step(sample: torch.Tensor, model_output: torch.Tensor, prev_x0, noise, index: torch.Tensor,
                  coefs: torch.Tensor, rng, clip_range, out: torch.Tensor, x0) -> None:
    """Launch on batch-major dense tensors sharing strides; ``prev_x0``, ``noise``, ``rng``, ``x0``
    and ``clip_range`` may be None (at most one of ``noise`` and ``rng`` is given)."""
    batch, per_sample, block, chunks = launch_shape(sample)
    mode = NOISE_TENSOR if noise is not None else (NOISE_PHILOX if rng is not None else NOISE_NONE)
    _sampling_step_kernel[(batch * chunks,)](
        sample, model_output, sample if prev_x0 is None else prev_x0, sample if noise is None else noise,
        out, out if x0 is None else x0, index, index.stride(0), coefs, coefs.shape[0],
        index if rng is None else rng, 0.0 if clip_range is None else float(clip_range), per_sample, chunks,
        HAS_PREV=prev_x0 is not None, CLIP=clip_range is not None, NOISE=mode, WRITE_X0=x0 is not None,
        BLOCK=block, num_warps=4,
    )
