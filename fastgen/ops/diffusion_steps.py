"""Named reverse-diffusion steps on the fused :func:`~fastgen.ops.sampling_step`: DDPM, DDIM, DPM-Solver++(2M).

Each builds its coefficient rows (:mod:`fastgen.ops.step_coefficients`, float64 math, float32
rows) from the schedule values it is given, one row for all samples (Python floats) or one per
sample (tensors of shape (B,) on the samples' device, no host synchronisation), and runs one
kernel pass. Noise: ``noise`` if given, else drawn from ``generator`` exactly as diffusers draws
it, else Philox in the kernel from ``seed`` (an int or an int64 device state [seed, offset]; a
fresh seed from torch's default generator when None).
"""
from __future__ import annotations

import torch

from .. import _rng
from .sampling_step import sampling_step
from .step_coefficients import ddim_coefficients, ddpm_coefficients, dpmpp_coefficients


def _schedule_value(name: str, value, sample: torch.Tensor, *, lo: float, hi: float, hi_open: bool = False):
    """A float, or a float tensor of shape () / (1,) / (B,) on the sample's device; range-checked
    where that costs no synchronisation (floats, CPU tensors)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a float or a float tensor of shape (B,), got {type(value).__name__}")
    batch = sample.shape[0]
    if isinstance(value, torch.Tensor):
        if not value.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] not in (1, batch)):
            raise ValueError(f"{name} must be a scalar or of shape ({batch},) (one per sample), got {tuple(value.shape)}")
        if value.device != sample.device:
            raise ValueError(f"{name} is on {value.device} but sample is on {sample.device}; they must share a device")
        check = value.device.type == "cpu" and not torch.compiler.is_compiling()
        lo_v, hi_v = (float(value.min()), float(value.max())) if check and value.numel() else (None, None)
    else:
        lo_v = hi_v = float(value)
    if lo_v is not None and not (lo_v >= lo and (hi_v < hi if hi_open else hi_v <= hi)):
        raise ValueError(f"{name} must lie in [{lo}, {hi}{')' if hi_open else ']'}, got {lo_v if lo_v < lo else hi_v}")
    return value


def _run(sample, model_output, rows, *, noisy, noise, generator, seed, noise_dtype, **kwargs):
    """One sampling_step with rows (1 or B, NUM_COEFS): row 0 for all, or row b for sample b."""
    rows = rows.reshape(-1, rows.shape[-1]).to(sample.device)
    index = 0 if rows.shape[0] == 1 else torch.arange(rows.shape[0], device=sample.device)
    if noisy:
        if noise is None and generator is not None:
            noise = _rng.randn_like_diffusers(model_output.shape, generator, sample.device, noise_dtype)
            generator = None
        if noise is None and seed is None:
            seed = _rng.new_seed()
    else:
        noise = generator = seed = None
    return sampling_step(sample, model_output, rows, index, noise=noise, generator=generator, seed=seed, **kwargs)


def ddpm_step(model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t, alpha_prod_t_prev, *,
              prediction_type: str = "epsilon", variance_type: str = "fixed_small",
              clip_sample_range: float | None = None, noise: torch.Tensor | None = None, generator=None, seed=None,
              return_pred_original: bool = False, impl: str = "auto"):
    """One DDPM ancestral step x_t -> x_{t_prev} (Ho et al. 2020 eqs. 6-7; math in
    :func:`~fastgen.ops.step_coefficients.ddpm_coefficients`).

    Args:
        model_output, sample: (B, ...) float32 / float16 / bfloat16 (float64 runs the reference).
        alpha_prod_t: abar at t, in (0, 1); alpha_prod_t_prev: abar at the target, in (0, 1]
            (1 past the last step). Floats, or float tensors (B,) on the sample's device.
        prediction_type: "epsilon", "sample" or "v_prediction" (what the model predicts).
        variance_type: "fixed_small", "fixed_small_log", "fixed_large" or "fixed_large_log".
        clip_sample_range: clamp x0 into [-r, r] (diffusers' clip_sample); None: no clamp.
        noise / generator / seed: the noise z (see the module docstring).
        return_pred_original: also return x0 (float32; costs one more write pass).
        impl: "auto", "triton", "cuda", "cpu" or "reference".

    Returns x_{t_prev} (sample's dtype and layout), or (x_{t_prev}, x0) with return_pred_original.
    """
    _schedule_value("alpha_prod_t", alpha_prod_t, sample, lo=0.0, hi=1.0, hi_open=True)
    _schedule_value("alpha_prod_t_prev", alpha_prod_t_prev, sample, lo=0.0, hi=1.0)
    rows = ddpm_coefficients(alpha_prod_t, alpha_prod_t_prev, prediction_type=prediction_type,
                             variance_type=variance_type)
    out, x0 = _run(sample, model_output, rows, noisy=True, noise=noise, generator=generator, seed=seed,
                   noise_dtype=model_output.dtype, clip_range=clip_sample_range, return_state=return_pred_original,
                   impl=impl)
    return (out, x0) if return_pred_original else out


def ddim_step(model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t, alpha_prod_t_prev, *, eta: float = 0.0,
              prediction_type: str = "epsilon", clip_sample_range: float | None = None,
              use_clipped_model_output: bool = False, noise: torch.Tensor | None = None, generator=None, seed=None,
              return_pred_original: bool = False, impl: str = "auto"):
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021 eqs. 12, 16; math in
    :func:`~fastgen.ops.step_coefficients.ddim_coefficients`). Deterministic for eta == 0 (no noise
    is drawn or read); eta > 0 adds eta-scaled posterior noise (eta = 1: DDPM-like).

    Arguments as :func:`ddpm_step`, plus ``eta`` (float >= 0) and ``use_clipped_model_output``
    (re-derive the noise from the clipped x0, as GLIDE does).
    Returns x_{t_prev}, or (x_{t_prev}, x0 float32) with return_pred_original.
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    _schedule_value("alpha_prod_t", alpha_prod_t, sample, lo=0.0, hi=1.0, hi_open=True)
    _schedule_value("alpha_prod_t_prev", alpha_prod_t_prev, sample, lo=0.0, hi=1.0)
    rows = ddim_coefficients(alpha_prod_t, alpha_prod_t_prev, eta=eta, prediction_type=prediction_type,
                             use_clipped_model_output=use_clipped_model_output)
    out, x0 = _run(sample, model_output, rows, noisy=eta > 0, noise=noise, generator=generator, seed=seed,
                   noise_dtype=model_output.dtype, clip_range=clip_sample_range, return_state=return_pred_original,
                   impl=impl)
    return (out, x0) if return_pred_original else out


def dpmpp_2m_step(model_output: torch.Tensor, sample: torch.Tensor, prev_x0: torch.Tensor | None, *, alpha_t,
                  sigma_t, alpha_s0, sigma_s0, alpha_s1=None, sigma_s1=None, prediction_type: str = "epsilon",
                  algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint",
                  noise: torch.Tensor | None = None, generator=None, seed=None, impl: str = "auto"):
    """One multistep DPM-Solver++ step from s0 (where the model ran) to t (Lu et al. 2022; math in
    :func:`~fastgen.ops.step_coefficients.dpmpp_coefficients`).

    Args:
        model_output, sample: (B, ...) float32 / float16 / bfloat16.
        prev_x0: the x0 returned by the previous step (float32 or sample's dtype), or None for a
            first-order step (the first step, or the final one).
        alpha_*, sigma_*: x_s = alpha_s x0 + sigma_s eps at the target t, current s0 and previous
            s1 (s1 only with prev_x0); sigma_t may be 0 (a final step to a clean sample).
            Floats, or float tensors (B,) on the sample's device.
        algorithm_type: "dpmsolver++" (ODE) or "sde-dpmsolver++" (SDE, draws float32 noise).
        solver_type: "midpoint" or "heun" (how the second-order term is weighted).

    Returns (x_t in sample's dtype, x0 float32: pass it as prev_x0 to the next step).
    """
    if (prev_x0 is None) != (alpha_s1 is None) or (alpha_s1 is None) != (sigma_s1 is None):
        raise ValueError("prev_x0, alpha_s1 and sigma_s1 must all be given (second order) or all be None (first order)")
    for name, value, lo in [("alpha_t", alpha_t, 0.0), ("sigma_t", sigma_t, 0.0), ("alpha_s0", alpha_s0, 0.0),
                            ("sigma_s0", sigma_s0, 0.0), ("alpha_s1", alpha_s1, 0.0), ("sigma_s1", sigma_s1, 0.0)]:
        if value is not None:
            _schedule_value(name, value, sample, lo=lo, hi=float("inf"))
    rows = dpmpp_coefficients(alpha_t, sigma_t, alpha_s0, sigma_s0, alpha_s1, sigma_s1, prediction_type=prediction_type,
                              algorithm_type=algorithm_type, solver_type=solver_type)
    return _run(sample, model_output, rows, noisy=algorithm_type == "sde-dpmsolver++", noise=noise, generator=generator,
                seed=seed, noise_dtype=torch.float32, history=() if prev_x0 is None else (prev_x0,), return_state=True,
                impl=impl)
