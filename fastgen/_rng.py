"""Random numbers: the in-kernel Philox normal, its pure-torch reference, and explicit noise.

In-kernel noise (DESIGN.md rule 7). Element ``i`` of a tensor (its index in storage order) is
position k = offset + i of the stream, and positions 4p .. 4p + 3 share one Philox call:

    r0, r1, r2, r3 = Philox4x32-10(key=(seed_lo, seed_hi), counter=(lo(p), hi(p), 0, 0)),  p = k >> 2
    (a, b) = (r0, r1) if k % 4 < 2 else (r2, r3)
    u1 = ((a >> 8) + 0.5) / 2**24,  u2 = ((b >> 8) + 0.5) / 2**24        # exact in float32, in (0, 1]
    z  = sqrt(-2 log u1) * (cos(2 pi u2) if k is even else sin(2 pi u2))  # Box-Muller's pair, float32

A uniform at position k (:func:`philox_uniform_ref`, the per-sample alpha of the gradient
penalty) is word r_(k mod 4) of call p, the word z_k takes as its u1 (k even) or u2 (k odd).

Every kernel draws a group of four consecutive positions from one Philox call, using all four
words and both of Box-Muller's outputs: 1/4 of a Philox call, 1/2 log and one sin or cos per
element, where drawing each element on its own costs a call, a log and a sin and a cos (two calls
per group where a group straddles counters, i.e. the offset or a sample's start is not a multiple
of 4). On the CPU, with a vectorised log / sin / cos (csrc/cpu/philox_block.h), that made
in-kernel noise faster than torch.randn: DDPMScheduler.step x50 765 us against 4.03 ms
(benchmarks/results/cpu_targets_cpu-2core.csv). On the GPU (kernels/philox.py, csrc/philox.h) the
saving is counted, not timed: fewer Philox rounds and registers per thread in the compile report;
the time needs a GPU run of benchmarks/bench_add_noise.py and its siblings.
(Philox: Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011.) The Triton
kernels (``kernels/philox.py``), the CUDA kernels (``csrc/philox.h``), the C++ CPU kernels
(``csrc/cpu/philox_block.h``) and :func:`philox_normal_ref` below compute the same z up to float32
rounding of log, sin and cos.

The state is an int64 tensor ``[seed, offset]`` on the samples' device, so a caller can advance it
on the device (``state[1] += n``) with no host synchronisation and inside a CUDA graph.
"""
from __future__ import annotations

import torch

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_MASK32 = 0xFFFFFFFF
_ROUNDS = 10


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * b for a uint32 constant and uint32 values held in int64.

    Splitting a into 16-bit halves keeps every partial product below 2**49, so int64 never overflows.
    """
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_hi, p_lo = a_hi * b, a_lo * b
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    return hi, lo


def philox4x32_ref(seed: torch.Tensor, counter: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of counters (lo, hi, 0, 0) under key (seed_lo, seed_hi), as int64 tensors."""
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c0, c1 = counter & _MASK32, (counter >> 32) & _MASK32
    c2 = c3 = torch.zeros_like(counter)
    for _ in range(_ROUNDS):
        hi0, lo0 = _mulhilo32(_M0, c0)
        hi1, lo1 = _mulhilo32(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def _philox_call(state: torch.Tensor, numel: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(position, (r0, r1, r2, r3) of each position's Philox call) for stream positions offset .. offset + numel - 1."""
    position = torch.arange(numel, dtype=torch.int64, device=state.device) + state[1]
    return position, philox4x32_ref(state[0], position >> 2)


def _unit_interval(word: torch.Tensor) -> torch.Tensor:
    """The top 24 bits of a 32-bit word as a float32 in (0, 1): ((w >> 8) + 0.5) / 2**24, exact."""
    return ((word >> 8).to(torch.float32) + 0.5) * 2.0**-24


def philox_normal_ref(state: torch.Tensor, numel: int) -> torch.Tensor:
    """Standard normals z_i for i in [0, numel) from the Philox ``state`` [seed, offset]: float32 (numel,).

    Runs on the state's device with tensor ops only (no host synchronisation).
    """
    position, (r0, r1, r2, r3) = _philox_call(state, numel)
    second = (position & 2).bool()
    u1, u2 = _unit_interval(torch.where(second, r2, r0)), _unit_interval(torch.where(second, r3, r1))
    angle = 6.283185307179586 * u2
    odd = (position & 1).bool()
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.where(odd, torch.sin(angle), torch.cos(angle))


def philox_uniform_ref(state: torch.Tensor, numel: int) -> torch.Tensor:
    """Uniforms u_i in (0, 1) for i in [0, numel) from the Philox ``state`` [seed, offset]: float32 (numel,).

    Position k's uniform is word r_(k mod 4) of Philox call k >> 2, top 24 bits: a 24-bit grid in
    (0, 1), exact in float32, never 0 or 1 — the same word Box-Muller takes as u1 (even k) or u2
    (odd k) for the normal at k. The gradient penalty draws its per-sample alpha this way inside the
    interpolation kernel.
    """
    position, (r0, r1, r2, r3) = _philox_call(state, numel)
    lane = position & 3
    word = torch.where(lane == 0, r0, torch.where(lane == 1, r1, torch.where(lane == 2, r2, r3)))
    return _unit_interval(word)


def new_seed() -> int:
    """A seed drawn from torch's default CPU generator: reproducible under ``torch.manual_seed``, no device sync."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def philox_state(seed: int | None, device: torch.device | str) -> torch.Tensor:
    """A fresh Philox state ``[seed, 0]`` (int64, shape (2,)) on ``device``; a new seed when ``seed`` is None."""
    seed = new_seed() if seed is None else seed
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must lie in [0, 2**63), got {seed}")
    return torch.tensor([seed, 0], dtype=torch.int64).to(device, non_blocking=True)


def randn_like_diffusers(shape, generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Gaussian noise drawn exactly as diffusers' ``randn_tensor`` draws it, so results match it.

    A CPU generator for an accelerator tensor draws on the CPU and copies; a list of generators
    draws one sample from each.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"generator is a list of {len(generator)} generators, expected one per sample ({shape[0]})")
        if len(generator) > 1:
            parts = [randn_like_diffusers((1,) + tuple(shape[1:]), g, device, dtype) for g in generator]
            return torch.cat(parts, dim=0)
        generator = generator[0]
    rand_device = device
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
        if generator.device.type != device.type:
            if generator.device.type != "cpu":
                raise ValueError(f"generator is on {generator.device} and cannot draw noise for a tensor on {device}")
            rand_device = torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=rand_device, dtype=dtype).to(device)
