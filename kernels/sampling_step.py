"""One fused reverse-diffusion step (DDPM / DDIM / DPM-Solver++ / multistep solvers), one pass over memory.

Per sample b with coefficient row c = coefs[index[b]] (columns as in fastgen/ops/sampling_step.py)::

    x0    = clamp(c.PX * x + c.PM * m)
    eps   = c.EX * x + c.EM * m + c.E0 * x0
    out   = c.OX * x + c.O0 * x0 + c.OE * eps + c.H1 * h1 + c.H2 * h2 + c.H3 * h3 + c.H4 * h4 + c.SZ * z
    state = c.SX * x + c.S0 * x0 + c.SE * eps
"""
import torch
import triton
import triton.language as tl

from .philox import philox_normal_block
from .tiling import launch_tiled, sample_chunk

NOISE_NONE, NOISE_TENSOR, NOISE_PHILOX = 0, 1, 2
# fastgen.ops.sampling_step.NUM_COEFS (kernels/ does not import fastgen); the kernel reads the
# columns by offset: PX 0, PM 1, EX 2, EM 3, E0 4, OX 5, O0 6, OE 7, H1..H4 8..11, SZ 12, SX 13, S0 14, SE 15
NUM_COEFS = 16


@triton.jit
def _term(c, v):
    """c * v, but exactly 0 where c == 0: an unused infinite operand must not give 0 * inf = NaN."""
    return tl.where(c != 0.0, c * v, 0.0)


@triton.jit
def _history_term(out, h_ptr, c, col: tl.constexpr, idx, mask, PRESENT: tl.constexpr):
    """out + c[col] * h; an absent slot is never read (its pointer is a stand-in)."""
    if PRESENT:
        out = out + _term(tl.load(c + col), tl.load(h_ptr + idx, mask=mask).to(tl.float32))
    return out


@triton.jit
def _sampling_step_kernel(
    sample_ptr,  # (B * S,) x_t in storage order, any float dtype
    model_ptr,  # (B * S,) model output, same layout
    h1_ptr,  # (B * S,) history slot 1, sample's dtype or float32; unused unless HAS_H1
    h2_ptr,  # (B * S,) history slot 2; unused unless HAS_H2
    h3_ptr,  # (B * S,) history slot 3; unused unless HAS_H3
    h4_ptr,  # (B * S,) history slot 4; unused unless HAS_H4
    noise_ptr,  # (B * S,) z; unused unless NOISE == NOISE_TENSOR
    out_ptr,  # (B * S,) x_{t-1}, the dtype of sample
    state_ptr,  # (B * S,) float32 state; unused unless WRITE_STATE
    index_ptr,  # int64 row of sample b at index_ptr + b * index_stride
    index_stride,  # 0 when one row serves the whole batch
    coefs_ptr,  # float32 (num_rows, 16) contiguous coefficient table
    num_rows,  # rows are clamped into [0, num_rows) so nothing reads out of bounds
    rng_ptr,  # int64 [seed, offset] Philox state; unused unless NOISE == NOISE_PHILOX
    clip,  # clamp x0 into [-clip, clip] when CLIP
    per_sample,  # S, elements of one sample
    chunks_per_sample,  # cdiv(S, BLOCK)
    HAS_H1: tl.constexpr,
    HAS_H2: tl.constexpr,
    HAS_H3: tl.constexpr,
    HAS_H4: tl.constexpr,
    CLIP: tl.constexpr,
    NOISE: tl.constexpr,
    WRITE_STATE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b, mask, idx = sample_chunk(per_sample, chunks_per_sample, BLOCK)
    row = tl.load(index_ptr + b * index_stride)
    row = tl.minimum(tl.maximum(row, 0), num_rows - 1)
    c = coefs_ptr + row * 16  # NUM_COEFS
    px, pm = tl.load(c + 0), tl.load(c + 1)
    ex, em, e0 = tl.load(c + 2), tl.load(c + 3), tl.load(c + 4)
    ox, o0, oe = tl.load(c + 5), tl.load(c + 6), tl.load(c + 7)

    x = tl.load(sample_ptr + idx, mask=mask).to(tl.float32)
    m = tl.load(model_ptr + idx, mask=mask).to(tl.float32)
    x0 = _term(px, x) + _term(pm, m)
    if CLIP:
        # where, not minimum/maximum: a NaN must stay NaN as in torch.clamp
        x0 = tl.where(x0 < -clip, -clip, tl.where(x0 > clip, clip, x0))
    eps = _term(ex, x) + _term(em, m) + _term(e0, x0)
    out = _term(ox, x) + _term(o0, x0) + _term(oe, eps)
    out = _history_term(out, h1_ptr, c, 8, idx, mask, HAS_H1)  # H1
    out = _history_term(out, h2_ptr, c, 9, idx, mask, HAS_H2)
    out = _history_term(out, h3_ptr, c, 10, idx, mask, HAS_H3)
    out = _history_term(out, h4_ptr, c, 11, idx, mask, HAS_H4)
    if NOISE != 0:
        sz = tl.load(c + 12)  # SZ
        if sz != 0.0:  # deterministic rows never read (or generate) noise: NaN there stays unseen
            if NOISE == 1:
                z = tl.load(noise_ptr + idx, mask=mask).to(tl.float32)
            else:
                # idx[0]: the flat index this program starts at; one Philox call per 4 elements
                start = b.to(tl.int64) * per_sample + (tl.program_id(0) % chunks_per_sample) * BLOCK
                z = philox_normal_block(tl.load(rng_ptr), tl.load(rng_ptr + 1) + start, BLOCK,
                                        128 // out_ptr.dtype.element_ty.primitive_bitwidth)  # 16-byte rows
            out = out + sz * z
    tl.store(out_ptr + idx, out, mask=mask)
    if WRITE_STATE:
        sx, s0, se = tl.load(c + 13), tl.load(c + 14), tl.load(c + 15)  # SX, S0, SE
        tl.store(state_ptr + idx, _term(sx, x) + _term(s0, x0) + _term(se, eps), mask=mask)


def sampling_step(sample: torch.Tensor, model_output: torch.Tensor, history, noise, index: torch.Tensor,
                  coefs: torch.Tensor, rng, clip_range, out: torch.Tensor, state) -> None:
    """Launch on batch-major dense tensors sharing strides. ``history`` is 4 slots, each a tensor
    or None; ``noise``, ``rng``, ``state`` and ``clip_range`` may be None (at most one of ``noise``
    and ``rng`` is given)."""
    assert len(history) == 4 and coefs.shape[1] == NUM_COEFS
    mode = NOISE_TENSOR if noise is not None else (NOISE_PHILOX if rng is not None else NOISE_NONE)
    h = [sample if t is None else t for t in history]  # stand-ins for absent slots are never read

    def launch(grid, per_sample, chunks, config):
        _sampling_step_kernel[grid](
            sample, model_output, h[0], h[1], h[2], h[3], sample if noise is None else noise,
            out, out if state is None else state, index, index.stride(0), coefs, coefs.shape[0],
            index if rng is None else rng, 0.0 if clip_range is None else float(clip_range), per_sample, chunks,
            HAS_H1=history[0] is not None, HAS_H2=history[1] is not None, HAS_H3=history[2] is not None,
            HAS_H4=history[3] is not None, CLIP=clip_range is not None, NOISE=mode, WRITE_STATE=state is not None,
            **config,
        )
    launch_tiled("sampling_step", sample, launch)
