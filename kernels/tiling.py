"""How the elementwise kernels split a batch-major dense tensor (B samples of S elements each, in
storage order): one program per (sample, chunk of BLOCK elements), so a per-sample coefficient is
one scalar load per program and no index ever crosses into the next sample. BLOCK and num_warps
come from kernels/tuning.py (default: :func:`block_for`, 4 warps)."""
from typing import Callable

import torch
import triton
import triton.language as tl

from . import tuning


def block_for(per_sample: int) -> int:
    """The default elements per program: 1024-wide for image-sized samples, no wider than a tiny
    sample needs (tuning.py's default; its table or autotuning may pick another candidate)."""
    return max(16, min(1024, 1 << (per_sample - 1).bit_length()))  # next power of two, without a launch's cost


def launch_tiled(kernel: str, x: torch.Tensor, launch: Callable[..., object]):
    """Run ``launch(grid, per_sample, chunks_per_sample, config)`` for ``x`` (B, ...) with B > 0 with the
    config tuning.choose picks for ``kernel`` at x's elements per sample (config: BLOCK and num_warps,
    keyword arguments of the kernel launch; grid: batch * chunks programs); returns what launch returns."""
    batch = x.shape[0]
    per_sample = x.numel() // batch

    def run(config: dict):
        chunks = triton.cdiv(per_sample, config["BLOCK"])
        return launch((batch * chunks,), per_sample, chunks, config)

    return run(tuning.choose(kernel, x, per_sample, bench=run))


@triton.jit
def sample_chunk(per_sample, chunks_per_sample, BLOCK: tl.constexpr):
    """This program's sample b, the mask of its in-sample offsets and their flat (int64) indices."""
    pid = tl.program_id(0)
    b = pid // chunks_per_sample
    s = (pid % chunks_per_sample) * BLOCK + tl.arange(0, BLOCK)
    return b, s < per_sample, b.to(tl.int64) * per_sample + s
