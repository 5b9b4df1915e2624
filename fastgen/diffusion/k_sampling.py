"""k-diffusion-style samplers for people who do not use diffusers: ``sample_euler(model, x, sigmas)``.

The convention of Karras et al. 2022 (EDM) and of the k-diffusion library: ``x`` is noise times
``sigmas[0]``, ``model(x, sigma, **extra_args)`` is a *denoiser* that returns its estimate of the
clean sample for x = x0 + sigma * eps (``sigma`` a (B,) tensor), and ``sigmas`` is a descending
1-D schedule ending in 0 (e.g. :func:`get_sigmas_karras`). Every update below is affine in x, the
denoised estimate and at most one earlier tensor, so each step is one fused
:func:`fastgen.ops.sampling_step` pass (x0 = the denoiser's output, "sample" prediction); the
coefficient rows of all steps are built once, in float64, before the loop.

Updates, with d = (x - denoised) / sigma and dt = sigma_next - sigma:
  Euler (Karras et al. 2022, Alg. 2 without churn):  x <- x + d dt
  Euler ancestral (eta):   x <- x + d (sigma_down - sigma) + s_noise sigma_up z
  Heun (Alg. 1):           x2 = x + d dt; x <- x + dt (d + d2) / 2, d2 at (x2, sigma_next);
                           Euler on the last step (sigma_next = 0)
  DPM-Solver++(2M) (Lu et al. 2022): in t = -log(sigma), h = t_next - t,
                           x <- (sigma_next / sigma) x - expm1(-h) D, D = denoised on the first and
                           last step, else (1 + 1/(2r)) denoised - 1/(2r) denoised_prev, r = h_prev / h
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..ops import sampling_step
from ..ops.step_coefficients import _rows

__all__ = ["get_sigmas_karras", "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpmpp_2m"]


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device="cpu") -> torch.Tensor:
    """Karras et al. 2022 eq. 5: n sigmas from sigma_max down to sigma_min, then 0; float32 (n + 1,)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=torch.float32)


def _check(x: torch.Tensor, sigmas) -> list[float]:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError(f"x must be a floating tensor (B, ...), got {type(x).__name__}")
    s = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).tolist()  # host copy: sigmas are a schedule
    if len(s) < 2 or not all(a > b for a, b in zip(s, s[1:])) or s[-1] < 0:
        raise ValueError(f"sigmas must be a descending 1-D schedule of >= 2 values ending >= 0, got {s}")
    return s


def _table(rows: list[dict], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 (len(rows), NUM_COEFS) table, int64 row indices) on ``device`` from per-step column
    dicts (float64 math). Step i passes ``index[i]``, a view: no host-to-device copy per step."""
    table = torch.stack([_rows((), "cpu", **{k: torch.tensor(v, dtype=torch.float64) for k, v in r.items()})
                         for r in rows])
    return table.to(device), torch.arange(len(rows), device=device)


def _denoise(model: Callable, x: torch.Tensor, sigma: float, extra_args: dict | None) -> torch.Tensor:
    return model(x, x.new_full((x.shape[0],), sigma), **(extra_args or {}))


def _euler_row(sigma: float, sigma_next: float, noise_scale: float = 0.0, target: float | None = None) -> dict:
    """x + (x - x0) / sigma * (target - sigma) + noise_scale * z, target defaulting to sigma_next."""
    c = ((sigma_next if target is None else target) - sigma) / sigma
    return {"PM": 1.0, "OX": 1.0 + c, "O0": -c, "SZ": noise_scale}


@torch.no_grad()
def sample_euler(model: Callable, x: torch.Tensor, sigmas, *, extra_args: dict | None = None,
                 callback: Callable | None = None) -> torch.Tensor:
    """Euler steps over ``sigmas``; ``callback({"i", "x", "sigma", "denoised"})`` after each step's model call."""
    s = _check(x, sigmas)
    table, index = _table([_euler_row(a, b) for a, b in zip(s, s[1:])], x.device)
    for i in range(len(s) - 1):
        denoised = _denoise(model, x, s[i], extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "denoised": denoised})
        x, _ = sampling_step(x, denoised, table, index[i])
    return x


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): the deterministic target and the noise added to reach sigma_next."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


@torch.no_grad()
def sample_euler_ancestral(model: Callable, x: torch.Tensor, sigmas, *, eta: float = 1.0, s_noise: float = 1.0,
                           noise_sampler: Callable | None = None, extra_args: dict | None = None,
                           callback: Callable | None = None) -> torch.Tensor:
    """Euler ancestral: an Euler step to sigma_down, then fresh noise of scale sigma_up. ``noise_sampler(x)``
    draws z (default ``torch.randn_like``); none is drawn on the last step."""
    s = _check(x, sigmas)
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    steps = [ancestral_step(a, b, eta) for a, b in zip(s, s[1:])]
    table, index = _table([_euler_row(a, b, s_noise * up, down) for a, b, (down, up) in zip(s, s[1:], steps)],
                          x.device)
    draw = noise_sampler or torch.randn_like
    for i in range(len(s) - 1):
        denoised = _denoise(model, x, s[i], extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "denoised": denoised})
        x, _ = sampling_step(x, denoised, table, index[i], noise=draw(x) if steps[i][1] > 0 else None)
    return x


@torch.no_grad()
def sample_heun(model: Callable, x: torch.Tensor, sigmas, *, extra_args: dict | None = None,
                callback: Callable | None = None) -> torch.Tensor:
    """Heun's second-order method (two model calls a step, one on the last)."""
    s = _check(x, sigmas)
    rows = []
    for a, b in zip(s, s[1:]):
        rows.append(_euler_row(a, b))
        if b > 0:
            # x <- 0.5 x + 0.5 x2 + dt/2 (x2 - d2) / b: sample = x2, model output = its denoised, h1 = x
            c = (b - a) / (2 * b)
            rows.append({"PM": 1.0, "OX": 0.5 + c, "O0": -c, "H1": 0.5})
    table, index = _table(rows, x.device)
    row = 0
    for i in range(len(s) - 1):
        denoised = _denoise(model, x, s[i], extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "denoised": denoised})
        x2, _ = sampling_step(x, denoised, table, index[row])
        row += 1
        if s[i + 1] > 0:
            x2, _ = sampling_step(x2, _denoise(model, x2, s[i + 1], extra_args), table, index[row], history=(x,))
            row += 1
        x = x2
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Callable, x: torch.Tensor, sigmas, *, extra_args: dict | None = None,
                    callback: Callable | None = None) -> torch.Tensor:
    """DPM-Solver++(2M), multistep second order in log-sigma (first order on the first and last step)."""
    s = _check(x, sigmas)
    rows = []
    for i, (a, b) in enumerate(zip(s, s[1:])):
        if b == 0:  # the last step lands on the denoised estimate
            rows.append({"PM": 1.0, "O0": 1.0})
            continue
        h = math.log(a) - math.log(b)
        e = -math.expm1(-h)
        if i == 0:
            rows.append({"PM": 1.0, "OX": b / a, "O0": e})
        else:
            r = (math.log(s[i - 1]) - math.log(a)) / h
            rows.append({"PM": 1.0, "OX": b / a, "O0": e * (1 + 1 / (2 * r)), "H1": -e / (2 * r)})
    table, index = _table(rows, x.device)
    previous = None
    for i in range(len(s) - 1):
        denoised = _denoise(model, x, s[i], extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "denoised": denoised})
        second = i > 0 and s[i + 1] > 0
        x, _ = sampling_step(x, denoised, table, index[i], history=(previous,) if second else ())
        previous = denoised
    return x
