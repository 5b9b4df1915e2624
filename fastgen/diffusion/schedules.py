"""Noise schedules (betas, cumulative alphas) and inference timestep spacings.

The tables are float32 and built with float32 arithmetic in the order diffusers uses, so that a
fastgen scheduler and a diffusers scheduler of the same config share ``alphas_cumprod`` bit for
bit (a cumulative product over 1000 steps in another precision differs in the 5th digit).
"""
from __future__ import annotations

import math

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021) eq. 17: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta),
    abar(u) = cos((u + 0.008) / 1.008 * pi / 2)^2, evaluated in float64, returned float32 (T,)."""
    def abar(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_train_timesteps
    return torch.tensor([min(1.0 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)], dtype=torch.float32)


def make_betas(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
               beta_schedule: str = "linear", trained_betas=None) -> torch.Tensor:
    """Betas, float32 (T,). ``trained_betas`` (array-like) wins over ``beta_schedule`` when given.

    linear: evenly spaced from beta_start to beta_end; scaled_linear: evenly spaced square roots,
    squared (latent diffusion); squaredcos_cap_v2: :func:`cosine_betas`; sigmoid: beta_start +
    (beta_end - beta_start) * sigmoid(linspace(-6, 6)) (GeoDiff).
    """
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be a positive int, got {num_train_timesteps!r}")
    if trained_betas is not None:
        betas = torch.as_tensor(np.asarray(trained_betas), dtype=torch.float32).reshape(-1)
        if betas.numel() != num_train_timesteps:
            raise ValueError(f"trained_betas must hold num_train_timesteps={num_train_timesteps} values, "
                             f"got {betas.numel()}")
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = cosine_betas(num_train_timesteps)
    elif beta_schedule == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
    else:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES} (or pass trained_betas), got {beta_schedule!r}")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError("betas must lie in (0, 1); check beta_start, beta_end or trained_betas")
    return betas


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 (arXiv:2305.08891) Algorithm 1: shift and scale sqrt(abar) so that it is
    unchanged at t = 0 and exactly 0 at t = T-1 (zero terminal SNR); returns the implied betas."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    abar = root**2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


def alphas_cumprod_of(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s), float32 (T,)."""
    return torch.cumprod(1.0 - betas, dim=0)


def check_num_inference_steps(num_inference_steps, num_train_timesteps: int) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must lie in [1, num_train_timesteps={num_train_timesteps}], "
                         f"got {num_inference_steps}")
    return int(num_inference_steps)


def check_spacing(timestep_spacing: str) -> None:
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}")


def spaced_timesteps(num_train_timesteps: int, num_inference_steps: int, timestep_spacing: str,
                     steps_offset: int = 0) -> np.ndarray:
    """Descending int64 timesteps for DDPM/DDIM (Lin et al. 2023, Table 2), as diffusers spaces them.

    linspace: round(linspace(0, T-1, n)); leading: k * (T // n) + steps_offset for k < n;
    trailing: round(T - k * T/n) - 1 for k < n (includes T-1).
    """
    check_spacing(timestep_spacing)
    T, n = num_train_timesteps, num_inference_steps
    if timestep_spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1]
    elif timestep_spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1] + steps_offset
    else:
        ts = np.round(np.arange(T, 0, -T / n)) - 1
    return np.ascontiguousarray(ts).astype(np.int64)


def dpm_timesteps(num_train_timesteps: int, num_inference_steps: int, timestep_spacing: str, steps_offset: int,
                  last_timestep: int) -> np.ndarray:
    """Descending int64 timesteps of DPM-Solver: n points of an (n+1)-point grid over [0, last_timestep),
    dropping the grid's end at 0 (the solver's final target is sigma_last, not a timestep)."""
    check_spacing(timestep_spacing)
    n = num_inference_steps
    if timestep_spacing == "linspace":
        ts = np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1]
    elif timestep_spacing == "leading":
        ts = (np.arange(0, n + 1) * (last_timestep // (n + 1))).round()[::-1][:-1] + steps_offset
    else:
        ts = np.arange(last_timestep, 0, -num_train_timesteps / n).round() - 1
    return np.ascontiguousarray(ts).astype(np.int64)
