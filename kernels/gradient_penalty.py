"""Gradient-penalty kernels: the interpolation x_hat = alpha_b * real + (1 - alpha_b) * fake (alpha
given, or drawn in the kernel from Philox) and the per-sample sum of squares of a gradient, each one
pass over memory.

Both walk batch-major dense tensors as flat storage (fastgen/_layout.py): program (b, chunk) covers
elements [chunk * BLOCK, (chunk + 1) * BLOCK) of sample b.
"""
import torch
import triton
import triton.language as tl

from .philox import philox_uniform
from .tiling import launch_tiled, sample_chunk


@triton.jit
def _interpolate_kernel(
    real_ptr,  # (B * S,) real samples in storage order, any float dtype
    fake_ptr,  # (B * S,) generated samples, same layout and dtype
    alpha_ptr,  # float32 (B,) interpolation weight of real: read, or written when DRAW_ALPHA
    rng_ptr,  # int64 [seed, offset] Philox state; unused unless DRAW_ALPHA
    out_ptr,  # (B * S,) x_hat, the dtype of real
    per_sample,  # S, elements of one sample
    chunks_per_sample,  # cdiv(S, BLOCK)
    DRAW_ALPHA: tl.constexpr,  # alpha_b = the Philox uniform at stream position offset + b
    BLOCK: tl.constexpr,
):
    b, mask, idx = sample_chunk(per_sample, chunks_per_sample, BLOCK)
    if DRAW_ALPHA:
        # Every program of sample b draws the same alpha (one Philox call, cheaper than a load
        # the other programs would wait for); the first chunk's program records it for backward.
        alpha = philox_uniform(tl.load(rng_ptr), tl.load(rng_ptr + 1) + b)
        if tl.program_id(0) % chunks_per_sample == 0:
            tl.store(alpha_ptr + b, alpha)
    else:
        alpha = tl.load(alpha_ptr + b)
    real = tl.load(real_ptr + idx, mask=mask).to(tl.float32)
    fake = tl.load(fake_ptr + idx, mask=mask).to(tl.float32)
    tl.store(out_ptr + idx, alpha * real + (1.0 - alpha) * fake, mask=mask)


@triton.jit
def _sum_of_squares_kernel(
    grad_ptr,  # (B * S,) gradient in storage order, any float dtype
    partial_ptr,  # float32 (B * chunks_per_sample,) one partial sum per program
    per_sample,  # S
    chunks_per_sample,  # cdiv(S, BLOCK)
    BLOCK: tl.constexpr,
):
    _, mask, idx = sample_chunk(per_sample, chunks_per_sample, BLOCK)
    g = tl.load(grad_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(g * g, axis=0))


@triton.jit
def _scale_kernel(
    grad_ptr,  # (B * S,) gradient in storage order, any float dtype
    coef_ptr,  # float32 (B,) per-sample factor
    out_ptr,  # (B * S,) coef_b * grad, grad's dtype
    per_sample,  # S
    chunks_per_sample,  # cdiv(S, BLOCK)
    BLOCK: tl.constexpr,
):
    b, mask, idx = sample_chunk(per_sample, chunks_per_sample, BLOCK)
    g = tl.load(grad_ptr + idx, mask=mask).to(tl.float32)
    tl.store(out_ptr + idx, tl.load(coef_ptr + b) * g, mask=mask)


def interpolate(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor, out: torch.Tensor,
                rng: torch.Tensor | None = None) -> None:
    """out = alpha_b * real + (1 - alpha_b) * fake. With ``rng`` (int64 [seed, offset]) alpha is
    drawn in the kernel and written into ``alpha`` (float32 (B,)); without it alpha is read."""
    def launch(grid, per_sample, chunks, config):
        _interpolate_kernel[grid](real, fake, alpha, alpha if rng is None else rng, out, per_sample, chunks,
                                  DRAW_ALPHA=rng is not None, **config)
    launch_tiled("gp_interpolate", real, launch)


def sum_of_squares(grad: torch.Tensor) -> torch.Tensor:
    """Per-sample sum of squares, float32 (B,): partial sums per program, then a fixed-order sum."""
    def launch(grid, per_sample, chunks, config):
        partial = torch.empty(grid[0], dtype=torch.float32, device=grad.device)
        _sum_of_squares_kernel[grid](grad, partial, per_sample, chunks, **config)
        return partial.view(grad.shape[0], chunks).sum(dim=1)
    return launch_tiled("gp_sum_of_squares", grad, launch)


def scale(grad: torch.Tensor, coef: torch.Tensor, out: torch.Tensor) -> None:
    def launch(grid, per_sample, chunks, config):
        _scale_kernel[grid](grad, coef, out, per_sample, chunks, **config)
    launch_tiled("gp_scale", grad, launch)
