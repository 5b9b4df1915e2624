"""The diffusion training loss with eps regenerated in the kernel (never stored).

Per sample b with a = abar[t_b], target = eps (MODE 0, epsilon), x0 (MODE 1, sample) or
sqrt(a) * eps - sqrt(1 - a) * x0 (MODE 2, v_prediction); d = pred - target.
Forward: one float32 partial sum of d^2 per (sample, chunk) program, summed afterwards by the caller
(a deterministic two-stage reduction, no atomics). Backward: grad_pred = s_b * d and
grad_x0 = -(d target / d x0) * s_b * d, with s_b = 2 * dL/dsum_b.
"""
import torch
import triton
import triton.language as tl

from .philox import philox_normal_block
from .tiling import launch_tiled, sample_chunk


@triton.jit
def _residual(pred_ptr, x0_ptr, noise_ptr, rng_ptr, idx, start, mask, a_sig, a_noise,
              MODE: tl.constexpr, GENERATE_NOISE: tl.constexpr, BLOCK: tl.constexpr):
    """d = pred - target (float32) at flat indices ``idx`` = start + arange(BLOCK) (masked); epsilon
    never reads x0, sample never eps."""
    pred = tl.load(pred_ptr + idx, mask=mask).to(tl.float32)
    if MODE != 1:
        if GENERATE_NOISE:
            # one Philox call per 4 elements, in rows of 16 bytes of pred (the loads' layout)
            eps = philox_normal_block(tl.load(rng_ptr), tl.load(rng_ptr + 1) + start, BLOCK,
                                      128 // pred_ptr.dtype.element_ty.primitive_bitwidth)
        else:
            eps = tl.load(noise_ptr + idx, mask=mask).to(tl.float32)
    if MODE == 0:
        target = eps
    elif MODE == 1:
        target = tl.load(x0_ptr + idx, mask=mask).to(tl.float32)
    else:
        target = a_sig * eps - a_noise * tl.load(x0_ptr + idx, mask=mask).to(tl.float32)
    return pred - target


@triton.jit
def _loss_forward_kernel(
    pred_ptr,  # (B * S,) model output in storage order, any float dtype
    x0_ptr,  # (B * S,) clean samples, same layout; unused for epsilon
    noise_ptr,  # (B * S,) eps, same layout; unused when GENERATE_NOISE or for sample
    partial_ptr,  # float32 (B * chunks_per_sample,) one partial sum per program
    t_ptr,  # int64 timestep of sample b at t_ptr + b * t_stride
    t_stride,  # 0 when one timestep serves the whole batch
    abar_ptr,  # float32 (num_train,) cumulative product of alphas
    num_train,  # length of abar; timesteps are clamped into it
    rng_ptr,  # int64 [seed, offset] Philox state; unused unless GENERATE_NOISE
    per_sample,  # S, elements of one sample
    chunks_per_sample,  # cdiv(S, BLOCK)
    MODE: tl.constexpr,
    GENERATE_NOISE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b, mask, idx = sample_chunk(per_sample, chunks_per_sample, BLOCK)
    start = b.to(tl.int64) * per_sample + (tl.program_id(0) % chunks_per_sample) * BLOCK  # idx[0]
    t = tl.minimum(tl.maximum(tl.load(t_ptr + b * t_stride), 0), num_train - 1)
    abar = tl.load(abar_ptr + t)
    d = _residual(pred_ptr, x0_ptr, noise_ptr, rng_ptr, idx, start, mask, tl.sqrt(abar), tl.sqrt(1.0 - abar),
                  MODE, GENERATE_NOISE, BLOCK)
    d = tl.where(mask, d, 0.0)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(d * d, axis=0))


@triton.jit
def _loss_backward_kernel(
    pred_ptr,  # (B * S,) model output in storage order
    x0_ptr,  # (B * S,) clean samples, same layout
    noise_ptr,  # (B * S,) eps, same layout; unused when GENERATE_NOISE or for sample
    grad_pred_ptr,  # (B * S,) out: dL/dpred in pred's dtype
    grad_x0_ptr,  # (B * S,) out: dL/dx0 in x0's dtype; unused unless WRITE_X0
    scale_ptr,  # float32 (B,) s_b = 2 * dL/dsum_b
    t_ptr,  # int64 timestep of sample b at t_ptr + b * t_stride
    t_stride,  # 0 when one timestep serves the whole batch
    abar_ptr,  # float32 (num_train,)
    num_train,  # length of abar
    rng_ptr,  # int64 [seed, offset]; unused unless GENERATE_NOISE
    per_sample,  # S
    chunks_per_sample,  # cdiv(S, BLOCK)
    MODE: tl.constexpr,
    GENERATE_NOISE: tl.constexpr,
    WRITE_X0: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b, mask, idx = sample_chunk(per_sample, chunks_per_sample, BLOCK)
    start = b.to(tl.int64) * per_sample + (tl.program_id(0) % chunks_per_sample) * BLOCK  # idx[0]
    t = tl.minimum(tl.maximum(tl.load(t_ptr + b * t_stride), 0), num_train - 1)
    abar = tl.load(abar_ptr + t)
    a_sig, a_noise = tl.sqrt(abar), tl.sqrt(1.0 - abar)
    d = _residual(pred_ptr, x0_ptr, noise_ptr, rng_ptr, idx, start, mask, a_sig, a_noise, MODE, GENERATE_NOISE, BLOCK)
    gp = tl.load(scale_ptr + b) * d
    tl.store(grad_pred_ptr + idx, gp, mask=mask)
    if WRITE_X0:  # -(d target / d x0) * gp: -1 for sample, +sqrt(1 - a) for v_prediction
        if MODE == 1:
            grad_x0 = -gp
        else:
            grad_x0 = a_noise * gp
        tl.store(grad_x0_ptr + idx, grad_x0, mask=mask)


def loss_forward(pred, x0, noise, t, abar, rng, mode: int) -> torch.Tensor:
    """Per-sample sums of squared residuals, float32 (B,). Tensors batch-major dense, sharing strides."""
    generate = noise is None

    def launch(grid, per_sample, chunks, config):
        partial = torch.empty(grid[0], device=pred.device, dtype=torch.float32)
        _loss_forward_kernel[grid](
            pred, x0, pred if generate else noise, partial, t, t.stride(0), abar, abar.numel(),
            rng if generate else t, per_sample, chunks, MODE=mode, GENERATE_NOISE=generate, **config,
        )
        return partial.view(pred.shape[0], chunks).sum(dim=1)
    return launch_tiled("diffusion_loss_forward", pred, launch)


def loss_backward(pred, x0, noise, t, abar, rng, scale, mode: int, grad_pred, grad_x0) -> None:
    """Write grad_pred (and grad_x0 unless None) for per-sample scales ``scale`` (float32 (B,))."""
    generate = noise is None

    def launch(grid, per_sample, chunks, config):
        _loss_backward_kernel[grid](
            pred, x0, pred if generate else noise, grad_pred, grad_pred if grad_x0 is None else grad_x0, scale,
            t, t.stride(0), abar, abar.numel(), rng if generate else t, per_sample, chunks,
            MODE=mode, GENERATE_NOISE=generate, WRITE_X0=grad_x0 is not None, **config,
        )
    launch_tiled("diffusion_loss_backward", pred, launch)
