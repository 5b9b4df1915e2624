"""Sigma schedules shared by the k-diffusion family (Euler, Heun, LMS, KDPM2, ...), as diffusers 0.42.

Here sigma is the variance-exploding noise level of a timestep, sigma_t = sqrt((1 - abar_t) / abar_t):
x_t / sqrt(abar_t) = x0 + sigma_t * noise. All functions are host-side numpy, float64 in and out
unless stated; where diffusers' float32 intermediates change the last digits (the training sigmas,
their logarithms, the final float32 cast of the schedule) the function keeps diffusers' dtypes, so a
scheduler built on them reproduces diffusers' ``timesteps`` and ``sigmas`` bit for bit.

The usual pipeline of a sigma scheduler's ``set_timesteps``::

    train = train_sigmas(alphas_cumprod)                   # float32 (T,), ascending in t
    log_sigmas = np.log(train)                             # float32, as diffusers
    ts = spaced_sigma_timesteps(T, n, spacing, steps_offset)    # float32 (n,), descending
    sig = interpolate_sigmas(ts, train, "linear")           # float64 (n,)
    sig, ts = convert_sigmas(sig, log_sigmas, n, karras, exponential, beta)   # optional
    sigmas = np.concatenate([sig, [final_sigma(...)]]).astype(np.float32)
"""
from __future__ import annotations

import math

import numpy as np
import torch

SIGMA_SPACINGS = ("linspace", "leading", "trailing")
INTERPOLATION_TYPES = ("linear", "log_linear")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


def _ends(in_sigmas, sigma_min, sigma_max) -> tuple[float, float]:
    in_sigmas = np.asarray(in_sigmas)
    lo = float(in_sigmas[-1]) if sigma_min is None else float(sigma_min)
    hi = float(in_sigmas[0]) if sigma_max is None else float(sigma_max)
    return lo, hi


def karras_sigmas(in_sigmas, num_inference_steps: int, sigma_min: float | None = None,
                  sigma_max: float | None = None, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022 eq. 5: sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho,
    i = 0..n-1, float64 (n,) descending. ``sigma_min`` / ``sigma_max`` default to ``in_sigmas[-1]`` /
    ``in_sigmas[0]`` (diffusers' ``_convert_to_karras``)."""
    lo, hi = _ends(in_sigmas, sigma_min, sigma_max)
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho = lo ** (1 / rho)
    max_inv_rho = hi ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(in_sigmas, num_inference_steps: int, sigma_min: float | None = None,
                       sigma_max: float | None = None) -> np.ndarray:
    """n sigmas evenly spaced in log sigma from sigma_max down to sigma_min, float64 (n,)."""
    lo, hi = _ends(in_sigmas, sigma_min, sigma_max)
    return np.exp(np.linspace(math.log(hi), math.log(lo), num_inference_steps))


def beta_sigmas(in_sigmas, num_inference_steps: int, sigma_min: float | None = None,
                sigma_max: float | None = None, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Lee et al. 2024 ("Beta Sampling is All You Need"): sigma_min + ppf_i (sigma_max - sigma_min),
    ppf_i the Beta(alpha, beta) quantile of 1 - i/(n-1), float64 (n,). Needs scipy (imported here,
    lazily: it is not a fastgen dependency)."""
    try:
        import scipy.stats
    except ImportError as e:  # pragma: no cover - scipy is present where the tests run
        raise ImportError("use_beta_sigmas=True needs scipy (scipy.stats.beta.ppf); install it with "
                          "`pip install scipy`") from e
    lo, hi = _ends(in_sigmas, sigma_min, sigma_max)
    quantiles = 1 - np.linspace(0, 1, num_inference_steps)
    ppf = np.array([scipy.stats.beta.ppf(q, alpha, beta) for q in quantiles], dtype=np.float64)
    return np.array([lo + p * (hi - lo) for p in ppf], dtype=np.float64)


def sigma_to_t(sigma, log_sigmas: np.ndarray, t_dtype=None) -> np.ndarray:
    """Fractional timestep(s) of ``sigma`` by linear interpolation in log sigma over ``log_sigmas``
    (the log of the training sigmas, ascending in t), clipped to [0, T-1]; the shape of ``sigma``.

    Element for element what diffusers' ``_sigma_to_t`` gives (vectorised over ``sigma``); pass
    ``log_sigmas`` in diffusers' dtype (float32 for the schedulers, which take it from float32
    sigmas) since the interpolation weight's denominator is computed in that dtype.
    ``t_dtype``: the dtype of the last interpolation, (1 - w) low_idx + w high_idx. None: numpy's
    promotion (float64 from float32 weights, as diffusers' numpy path); np.float32 for the KDPM2
    schedulers, whose diffusers code passes torch float32 tensors and so interpolates in float32.
    """
    sigma = np.asarray(sigma)
    log_sigmas = np.asarray(log_sigmas)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    flat = log_sigma.reshape(-1)
    dists = flat - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low = log_sigmas[low_idx]
    high = log_sigmas[high_idx]
    w = np.clip((low - flat) / (low - high), 0, 1)
    if t_dtype is not None:
        w, low_idx, high_idx = w.astype(t_dtype), low_idx.astype(t_dtype), high_idx.astype(t_dtype)
        t = (t_dtype(1) - w) * low_idx + w * high_idx
    else:
        t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)


def check_one_sigma_type(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas) -> None:
    """At most one of the sigma conversions may be on (diffusers' ValueError)."""
    if sum([bool(use_beta_sigmas), bool(use_exponential_sigmas), bool(use_karras_sigmas)]) > 1:
        raise ValueError("Only one of `config.use_beta_sigmas`, `config.use_exponential_sigmas`, "
                         "`config.use_karras_sigmas` can be used.")


def train_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """sigma_t = ((1 - abar_t) / abar_t) ** 0.5 for every training timestep: float32 (T,), computed in
    float32 torch as diffusers does (their log is the ``log_sigmas`` of :func:`sigma_to_t`)."""
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
    return (((1 - abar) / abar) ** 0.5).numpy()


def spaced_sigma_timesteps(num_train_timesteps: int, num_inference_steps: int, timestep_spacing: str,
                           steps_offset: int = 0) -> np.ndarray:
    """Descending float32 timesteps of the sigma schedulers (Lin et al. 2023 Table 2), as diffusers:

    linspace: linspace(0, T-1, n) in float32 (fractional); leading: k * (T // n) + steps_offset;
    trailing: round(arange(T, 0, -T/n)) - 1.
    """
    T, n = num_train_timesteps, num_inference_steps
    if timestep_spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    if timestep_spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.float32)
        return ts + np.float32(steps_offset)
    if timestep_spacing == "trailing":
        return np.arange(T, 0, -T / n).round().astype(np.float32) - np.float32(1)
    raise ValueError(f"timestep_spacing must be one of {SIGMA_SPACINGS}, got {timestep_spacing!r}")


def interpolate_sigmas(timesteps: np.ndarray, train: np.ndarray, interpolation_type: str = "linear") -> np.ndarray:
    """The sigmas of the inference ``timesteps`` from the training sigmas ``train`` (float32 (T,)).

    "linear": sigma interpolated linearly in t (np.interp), float64 (n,). "log_linear": n+1 sigmas
    evenly spaced in log sigma from train[-1] down to train[0], float32 (n+1,) (torch.linspace in
    float32, as diffusers; note the one extra entry, which diffusers keeps too)."""
    if interpolation_type == "linear":
        return np.interp(timesteps, np.arange(0, len(train)), train)
    if interpolation_type == "log_linear":
        n = len(timesteps)
        return torch.linspace(float(np.log(train[-1])), float(np.log(train[0])), n + 1).exp().numpy()
    raise ValueError(f"interpolation_type must be one of {INTERPOLATION_TYPES}, got {interpolation_type!r}")


def convert_sigmas(sigmas: np.ndarray, log_sigmas: np.ndarray, num_inference_steps: int,
                   use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
                   use_beta_sigmas: bool = False, sigma_min: float | None = None, sigma_max: float | None = None,
                   round_karras_timesteps: bool = False):
    """Apply the configured sigma conversion: returns (sigmas, timesteps) float64, timesteps from
    :func:`sigma_to_t`; or None when no conversion is on (keep the spaced timesteps).
    ``round_karras_timesteps``: KDPM2's rounding of the Karras timesteps to integers."""
    check_one_sigma_type(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
    n = num_inference_steps
    if use_karras_sigmas:
        out = karras_sigmas(sigmas, n, sigma_min, sigma_max)
    elif use_exponential_sigmas:
        out = exponential_sigmas(sigmas, n, sigma_min, sigma_max)
    elif use_beta_sigmas:
        out = beta_sigmas(sigmas, n, sigma_min, sigma_max)
    else:
        return None
    ts = sigma_to_t(out, log_sigmas)
    if use_karras_sigmas and round_karras_timesteps:
        ts = ts.round()
    return out, ts


def time_shift(kind: str, mu: float, sigma: float, t):
    """diffusers' dynamic shift of flow sigmas t in (0, 1] by mu: exponential
    e^mu / (e^mu + (1/t - 1)^sigma), or linear mu / (mu + (1/t - 1)^sigma)."""
    if kind == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
    return mu / (mu + (1 / t - 1) ** sigma)


def stretch_to_terminal(t, shift_terminal: float):
    """Stretch flow sigmas t so that the last one becomes ``shift_terminal``."""
    one_minus_z = 1 - t
    scale_factor = one_minus_z[-1] / (1 - shift_terminal)
    return 1 - one_minus_z / scale_factor


def check_final_sigmas_type(final_sigmas_type: str) -> None:
    if final_sigmas_type not in FINAL_SIGMAS_TYPES:
        raise ValueError(f"final_sigmas_type must be one of {FINAL_SIGMAS_TYPES}, got {final_sigmas_type!r}")


def final_sigma(final_sigmas_type: str, alphas_cumprod: torch.Tensor) -> float:
    """The sigma the last step lands on: 0 ("zero") or the training schedule's smallest sigma,
    sqrt((1 - abar_0) / abar_0) in float32 ("sigma_min")."""
    if final_sigmas_type == "zero":
        return 0.0
    if final_sigmas_type == "sigma_min":
        return float(train_sigmas(alphas_cumprod[:1])[0])
    raise ValueError(f"final_sigmas_type must be one of {FINAL_SIGMAS_TYPES}, got {final_sigmas_type!r}")
