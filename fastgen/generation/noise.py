"""Per-seed noise: the rule that makes an image depend on its seed alone.

Seed s owns ``torch.Generator(device_type).manual_seed(s)``. Its first draw is the sample's initial
noise, (1, C, H, W) in the sampling dtype, exactly as diffusers' ``randn_tensor`` draws it for a
pipeline call with ``batch_size=1, generator=torch.Generator().manual_seed(s)``; an ancestral
scheduler's step noise continues the same generator, one row per seed (diffusers' list-of-generators
convention). A batch is the concatenation of its seeds' rows, so neither the batch size, nor the
process, nor a resume changes what a seed draws.

On CPU this equals the diffusers pipeline number for number. On a CUDA device the generators are
CUDA generators (Philox keyed by the seed, counter-based): the same rule, a different stream, so
CPU and GPU images of one seed differ (as torch.randn on the two devices does). A scheduler that
draws no noise in its steps (DDIM eta 0, DPM-Solver++, Euler, Heun, UniPC, ...) needs only the
initial noise: on a GPU its loop is then captured as one CUDA graph; one that does draw runs the
per-seed generators eagerly (see :func:`draws_step_noise`).
"""
from __future__ import annotations

import torch

__all__ = ["NOISE_RULE", "seed_generators", "initial_noise", "draws_step_noise"]

NOISE_RULE = ("initial noise and step noise of seed s from torch.Generator(device_type).manual_seed(s), one "
              "(1, C, H, W) row per seed, as diffusers' randn_tensor draws for batch_size=1")


def seed_generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per seed on ``device``'s type (CPU generators for CPU samples, CUDA for CUDA)."""
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def initial_noise(generators: list[torch.Generator], sample_shape, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    """(len(generators), *sample_shape) standard normals, row i the first draw of generator i."""
    return torch.cat([torch.randn((1, *sample_shape), generator=g, device=device, dtype=dtype) for g in generators])


def draws_step_noise(scheduler, steps: int) -> bool:
    """Whether ``scheduler``'s loop of ``steps`` steps draws noise from a step generator: run a private
    copy (same class and config) on a 1x1x2x2 CPU sample with a zero model and see whether the
    generator moved past the initial draw. Exact for any scheduler, whatever decides it (class, config)."""
    import fastgen.diffusion as fd

    probe = type(scheduler).from_config(scheduler.config)
    g, reference = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    fd.sample(lambda x, t: torch.zeros_like(x), probe, (1, 1, 2, 2), num_inference_steps=steps, generator=g,
              device="cpu", progress=False, cuda_graph=False)
    torch.randn((1, 1, 2, 2), generator=reference)  # the initial noise: all that a noise-free loop draws
    return not torch.equal(g.get_state(), reference.get_state())
