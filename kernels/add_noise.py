"""Forward noising of DDPM: x_t = sqrt(abar[t_b]) * x0 + sqrt(1 - abar[t_b]) * eps, one pass."""
import torch
import triton
import triton.language as tl

from .philox import philox_normal_block
from .tiling import launch_tiled, sample_chunk


@triton.jit
def _add_noise_kernel(
    x0_ptr,  # (B * S,) samples in storage order, any float dtype
    noise_ptr,  # (B * S,) eps in the same layout; unused when GENERATE_NOISE
    out_ptr,  # (B * S,) x_t, the dtype of x0
    t_ptr,  # int64 timestep of sample b at t_ptr + b * t_stride
    t_stride,  # 0 when one timestep serves the whole batch
    abar_ptr,  # float32 (num_train,) cumulative product of alphas
    num_train,  # length of abar; timesteps are clamped into it so nothing reads out of bounds
    rng_ptr,  # int64 [seed, offset] Philox state; unused unless GENERATE_NOISE
    per_sample,  # S, elements of one sample
    chunks_per_sample,  # cdiv(S, BLOCK)
    GENERATE_NOISE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b, mask, idx = sample_chunk(per_sample, chunks_per_sample, BLOCK)
    t = tl.load(t_ptr + b * t_stride)
    t = tl.minimum(tl.maximum(t, 0), num_train - 1)
    abar = tl.load(abar_ptr + t)
    signal, noise_scale = tl.sqrt(abar), tl.sqrt(1.0 - abar)

    x0 = tl.load(x0_ptr + idx, mask=mask).to(tl.float32)
    if GENERATE_NOISE:
        # idx[0]: the flat index this program starts at; one Philox call per 4 elements
        start = b.to(tl.int64) * per_sample + (tl.program_id(0) % chunks_per_sample) * BLOCK
        eps = philox_normal_block(tl.load(rng_ptr), tl.load(rng_ptr + 1) + start, BLOCK,
                                  128 // out_ptr.dtype.element_ty.primitive_bitwidth)  # 16-byte rows
    else:
        eps = tl.load(noise_ptr + idx, mask=mask).to(tl.float32)
    tl.store(out_ptr + idx, signal * x0 + noise_scale * eps, mask=mask)


def add_noise(x0: torch.Tensor, noise, t: torch.Tensor, abar: torch.Tensor, rng, out: torch.Tensor) -> None:
    """Launch on batch-major dense tensors sharing strides; ``noise`` or ``rng`` is None."""
    generate = noise is None

    def launch(grid, per_sample, chunks, config):
        _add_noise_kernel[grid](
            x0, x0 if generate else noise, out, t, t.stride(0), abar, abar.numel(),
            rng if generate else t, per_sample, chunks, GENERATE_NOISE=generate, **config,
        )
    launch_tiled("add_noise", x0, launch)
