"""Coefficient rows of :func:`fastgen.ops.sampling_step` for DDPM, DDIM and DPM-Solver++.

Each builder takes schedule values (Python floats or float tensors of any shape ``S``, on any
device), computes in float64 and returns float32 rows of shape ``S + (NUM_COEFS,)``. The kernel
then evaluates, per sample (columns named as in :mod:`fastgen.ops.sampling_step`)::

    x0    = PX x + PM m,  clamped when the caller clips
    eps   = EX x + EM m + E0 x0
    out   = OX x + O0 x0 + OE eps + H1 h1 + H2 h2 + H3 h3 + H4 h4 + SZ z
    state = SX x + S0 x0 + SE eps

Every row built here sets S0 = 1 (SX = SE = 0), so the state a step returns is its x0: diffusers'
``pred_original_sample``, and the history (h1 = the previous x0) of DPM-Solver++'s next step.

Notation: a = alpha_prod_t (cumulative product of 1 - beta up to the current timestep t),
a' = alpha_prod_t_prev (at the timestep the step lands on), m = the model output.

Predicted x0 from m (Ho et al. 2020 eq. 15; Salimans & Ho 2022 for v = sqrt(a) eps - sqrt(1-a) x0):
    epsilon: x0 = (x - sqrt(1-a) m) / sqrt(a)     sample: x0 = m     v: x0 = sqrt(a) x - sqrt(1-a) m
and the noise implied by m, before any clipping of x0:
    epsilon: eps = m     sample: eps = (x - sqrt(a) m) / sqrt(1-a)     v: eps = sqrt(a) m + sqrt(1-a) x
"""
from __future__ import annotations

import torch

from .sampling_step import E0, EM, EX, H1, H2, H3, H4, NUM_COEFS, O0, OE, OX, PM, PX, S0, SE, SX, SZ

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
DDPM_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
DPM_ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++")
DPM_SOLVER_TYPES = ("midpoint", "heun")


def _f64(*values):
    """Broadcast floats / tensors to float64 tensors on the first tensor's device."""
    device = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
    tensors = [torch.as_tensor(v, dtype=torch.float64, device=device) for v in values]
    return torch.broadcast_tensors(*tensors)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


_COLUMNS = {"PX": PX, "PM": PM, "EX": EX, "EM": EM, "E0": E0, "OX": OX, "O0": O0, "OE": OE, "H1": H1, "H2": H2,
            "H3": H3, "H4": H4, "SZ": SZ, "SX": SX, "S0": S0, "SE": SE}


def _rows(shape, device, **cols) -> torch.Tensor:
    """Assemble float64 columns (by name) into float32 rows; absent columns are zero."""
    out = torch.zeros(tuple(shape) + (NUM_COEFS,), dtype=torch.float64, device=device)
    for name, value in cols.items():
        out[..., _COLUMNS[name]] = value
    return out.to(torch.float32)


def x0_coefficients(sqrt_a: torch.Tensor, sqrt_b: torch.Tensor, prediction_type: str):
    """(PX, PM) with x0 = PX x + PM m, for alpha = sqrt_a**2 and sigma = sqrt_b (float64 tensors)."""
    _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return 1.0 / sqrt_a, -sqrt_b / sqrt_a
    if prediction_type == "sample":
        return torch.zeros_like(sqrt_a), torch.ones_like(sqrt_a)
    return sqrt_a, -sqrt_b


def _eps_coefficients(sqrt_a, sqrt_b, prediction_type):
    """(EX, EM) with eps = EX x + EM m, from the unclipped prediction."""
    if prediction_type == "epsilon":
        return torch.zeros_like(sqrt_a), torch.ones_like(sqrt_a)
    if prediction_type == "sample":
        return 1.0 / sqrt_b, -sqrt_a / sqrt_b
    return sqrt_b, sqrt_a


def ddpm_coefficients(alpha_prod_t, alpha_prod_t_prev, *, prediction_type: str = "epsilon",
                      variance_type: str = "fixed_small", add_noise_mask=None) -> torch.Tensor:
    """Rows of the DDPM ancestral step (Ho et al. 2020, eqs. 6-7), float32 ``S + (NUM_COEFS,)``.

    With beta = 1 - a / a' (the effective beta of the jump t -> t_prev)::

        out = sqrt(a') beta / (1-a) * x0 + sqrt(a/a') (1-a') / (1-a) * x + std * z

    std: fixed_small = sqrt(max(beta (1-a') / (1-a), 1e-20)) (the posterior variance, floored as
    diffusers floors it before taking logs); fixed_small_log is the same number; fixed_large =
    sqrt(beta); fixed_large_log = sqrt(beta) too, the standard deviation of GLIDE's log-variance
    log(beta) (diffusers 0.42 evaluates ``log(beta) ** 0.5`` there, which is NaN). ``add_noise_mask``
    (bool, broadcastable; default all True) zeroes std where no noise is drawn (diffusers: t == 0).
    """
    _check_choice("variance_type", variance_type, DDPM_VARIANCE_TYPES)
    a, a_prev = _f64(alpha_prod_t, alpha_prod_t_prev)
    beta = 1.0 - a / a_prev
    px, pm = x0_coefficients(a.sqrt(), (1.0 - a).sqrt(), prediction_type)
    if variance_type in ("fixed_small", "fixed_small_log"):
        std = ((1.0 - a_prev) / (1.0 - a) * beta).clamp_min(1e-20).sqrt()
    else:
        std = beta.sqrt()
    if add_noise_mask is not None:
        std = torch.where(torch.as_tensor(add_noise_mask, device=std.device), std, torch.zeros_like(std))
    return _rows(a.shape, a.device, PX=px, PM=pm, O0=a_prev.sqrt() * beta / (1.0 - a),
                 OX=(a / a_prev).sqrt() * (1.0 - a_prev) / (1.0 - a), SZ=std, S0=1.0)


def ddim_coefficients(alpha_prod_t, alpha_prod_t_prev, *, eta: float = 0.0, prediction_type: str = "epsilon",
                      use_clipped_model_output: bool = False) -> torch.Tensor:
    """Rows of the generalised DDIM step (Song et al. 2021, eqs. 12 and 16), float32 ``S + (NUM_COEFS,)``::

        sigma = eta * sqrt((1-a') / (1-a) * (1 - a/a'))
        out   = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma z

    eps is the model's implied noise, or with ``use_clipped_model_output`` the noise implied by the
    (clipped) x0: eps = (x - sqrt(a) x0) / sqrt(1-a). SZ = 0 when eta == 0 (no noise is drawn).
    """
    a, a_prev, eta_t = _f64(alpha_prod_t, alpha_prod_t_prev, eta)
    sqrt_a, sqrt_b = a.sqrt(), (1.0 - a).sqrt()
    px, pm = x0_coefficients(sqrt_a, sqrt_b, prediction_type)
    std = eta_t * ((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev)).sqrt()
    if use_clipped_model_output:
        ex, em, e0 = 1.0 / sqrt_b, torch.zeros_like(a), -sqrt_a / sqrt_b
    else:
        (ex, em), e0 = _eps_coefficients(sqrt_a, sqrt_b, prediction_type), torch.zeros_like(a)
    return _rows(a.shape, a.device, PX=px, PM=pm, EX=ex, EM=em, E0=e0, O0=a_prev.sqrt(),
                 OE=(1.0 - a_prev - std * std).sqrt(), SZ=std, S0=1.0)


def dpmpp_coefficients(alpha_t, sigma_t, alpha_s0, sigma_s0, alpha_s1=None, sigma_s1=None, *,
                       prediction_type: str = "epsilon", algorithm_type: str = "dpmsolver++",
                       solver_type: str = "midpoint") -> torch.Tensor:
    """Rows of one multistep DPM-Solver++ step (Lu et al. 2022, arXiv:2211.01095), float32 ``S + (NUM_COEFS,)``.

    The step goes from the current point s0 (alpha_s0, sigma_s0, where the model ran) to the target t;
    s1 is the previous point, whose x0 (history h1 of the kernel) the second-order update uses.
    Without s1 the update is first order. lambda = log(alpha) - log(sigma), h = lambda_t - lambda_s0,
    r = (lambda_s0 - lambda_s1) / h, D1 = (x0 - x0_prev) / r::

        dpmsolver++      out = sigma_t/sigma_s0 x - alpha_t (e^-h - 1) x0 + c D1
                         c = -alpha_t (e^-h - 1) / 2 (midpoint),  alpha_t ((e^-h - 1)/h + 1) (heun)
        sde-dpmsolver++  out = sigma_t/sigma_s0 e^-h x + alpha_t (1 - e^-2h) x0 + c D1
                               + sigma_t sqrt(1 - e^-2h) z
                         c = alpha_t (1 - e^-2h) / 2 (midpoint),  alpha_t ((1 - e^-2h)/(-2h) + 1) (heun)

    sigma_t = 0 (the final step to a clean sample) gives h = inf and out = x0.
    x0 comes from the model output at s0 (see the module docstring) and is never clipped.
    """
    _check_choice("algorithm_type", algorithm_type, DPM_ALGORITHM_TYPES)
    _check_choice("solver_type", solver_type, DPM_SOLVER_TYPES)
    second = alpha_s1 is not None or sigma_s1 is not None
    if second and (alpha_s1 is None or sigma_s1 is None):
        raise ValueError("alpha_s1 and sigma_s1 must be given together (second order) or both be None (first order)")
    values = _f64(alpha_t, sigma_t, alpha_s0, sigma_s0, *((alpha_s1, sigma_s1) if second else ()))
    at, st, a0, s0 = values[:4]
    px, pm = x0_coefficients(a0, s0, prediction_type)
    h = (at.log() - st.log()) - (a0.log() - s0.log())
    if algorithm_type == "dpmsolver++":
        ox = st / s0
        o0 = -at * torch.expm1(-h)
        if solver_type == "midpoint":
            c = 0.5 * o0
        else:
            c = at * (torch.expm1(-h) / h + 1.0)
        sz = torch.zeros_like(at)
    else:
        ox = st / s0 * torch.exp(-h)
        o0 = -at * torch.expm1(-2.0 * h)
        if solver_type == "midpoint":
            c = 0.5 * o0
        else:
            c = at * (torch.expm1(-2.0 * h) / (2.0 * h) + 1.0)
        sz = st * (-torch.expm1(-2.0 * h)).sqrt()
    h1 = torch.zeros_like(at)
    if second:
        a1, s1 = values[4:]
        inv_r = h / ((a0.log() - s0.log()) - (a1.log() - s1.log()))
        o0, h1 = o0 + c * inv_r, -c * inv_r
    return _rows(at.shape, at.device, PX=px, PM=pm, OX=ox, O0=o0, H1=h1, SZ=sz, S0=1.0)
