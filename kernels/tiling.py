"""How the elementwise kernels split a batch-major dense tensor (B samples of S elements each, in
storage order): one program per (sample, chunk of BLOCK elements), so a per-sample coefficient is
one scalar load per program and no index ever crosses into the next sample."""
import torch
import triton
import triton.language as tl


def block_for(per_sample: int) -> int:
    """Elements per program: 1024-wide for image-sized samples, no wider than a tiny sample needs."""
    return max(16, min(1024, triton.next_power_of_2(per_sample)))


def launch_shape(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(batch, per_sample, BLOCK, chunks_per_sample) for ``x`` (B, ...) with B > 0; the grid is batch * chunks."""
    batch = x.shape[0]
    per_sample = x.numel() // batch
    block = block_for(per_sample)
    return batch, per_sample, block, triton.cdiv(per_sample, block)


@triton.jit
def sample_chunk(per_sample, chunks_per_sample, BLOCK: tl.constexpr):
    """This program's sample b, the mask of its in-sample offsets and their flat (int64) indices."""
    pid = tl.program_id(0)
    b = pid // chunks_per_sample
    s = (pid % chunks_per_sample) * BLOCK + tl.arange(0, BLOCK)
    return b, s < per_sample, b.to(tl.int64) * per_sample + s
