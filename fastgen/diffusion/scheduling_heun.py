"""HeunDiscreteScheduler (diffusers 0.42): Heun's 2nd-order method (Karras et al. 2022, Algorithm 1
without churn), each stage one fused call."""
from __future__ import annotations

import numpy as np
import torch

from ..ops import sampling_step
from ..ops.step_coefficients import _rows
from . import schedules, sigmas as S
from .scheduling_base import SchedulerOutput
from .scheduling_euler import SigmaSchedulerBase, x0_and_derivative

HeunDiscreteSchedulerOutput = SchedulerOutput
HEUN_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "exp")


def _derivative_columns(sigma_x0, sigma_div, prediction_type: str, clip: bool) -> dict:
    """x0 columns at noise level ``sigma_x0`` and the derivative d = (x - x0) / ``sigma_div`` in the
    eps columns: straight from (x, m) when x0 is not clipped, else through the clipped x0 (E0)."""
    cols = x0_and_derivative(sigma_x0, prediction_type)
    div = torch.as_tensor(sigma_div, dtype=torch.float64)
    if clip:
        cols["EX"], cols["EM"], cols["E0"] = 1 / div, torch.zeros_like(div), -1 / div
    else:  # d computed for sigma_x0, rescaled to the divisor diffusers uses
        scale = torch.as_tensor(sigma_x0, dtype=torch.float64) / div
        cols["EX"], cols["EM"] = cols["EX"] * scale, cols["EM"] * scale
    return cols


class HeunDiscreteScheduler(SigmaSchedulerBase):
    """Heun's method on the sigma grid, constructor arguments as diffusers'.

    The schedule is diffusers' interleaved one: timesteps [t0, t1, t1, t2, t2, ..., t_{n-1}, t_{n-1}]
    and sigmas [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0]; calls alternate between a first (Euler)
    stage and a second (trapezoidal correction) stage, the last call is a plain Euler step to 0.

    Table rows: block 0 row k is the first stage at step index k, x' = x + (s_{k+1} - s_k) d1,
    state = x0 (kept in float32, diffusers' ``pred_original_sample``). Block 1 row k is the second
    stage, one call with history (h1 = the first stage's input sample, h2 = its x0):

        out = x1 + dt/2 (d1 + d2),  d1 = (x1 - x0_1) / s_{k-1},  d2 = (x - x0) / s_k,  dt = s_k - s_{k-1}

    ``clip_sample`` clamps x0 (in the kernel) before the derivatives, as diffusers does.
    """

    order = 2

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 clip_sample: bool = False, clip_sample_range: float = 1.0, timestep_spacing: str = "linspace",
                 steps_offset: int = 0):
        self._register_config(locals())
        S.check_one_sigma_type(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        self._init_sigma_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                  prediction_type, timestep_spacing, False, HEUN_BETA_SCHEDULES)
        if clip_sample and not clip_sample_range > 0:
            raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range!r}")
        self.use_karras_sigmas = use_karras_sigmas
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)

    @property
    def state_in_first_order(self) -> bool:
        """True when the next call is a first stage (diffusers: ``dt is None``)."""
        return self.dt is None

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, num_train_timesteps: int | None = None,
                      timesteps=None) -> None:
        """The interleaved schedule of diffusers (spacing, Karras / exponential / beta sigmas) or
        custom descending ``timesteps``; the table is built on ``device``."""
        cfg = self.config
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None:
            timesteps = self._custom_timesteps(timesteps)
        T = num_train_timesteps or cfg.num_train_timesteps
        train = S.train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(train)
        if timesteps is not None:
            ts, n = timesteps, timesteps.size
        else:
            n = schedules.check_num_inference_steps(num_inference_steps, T)
            ts = S.spaced_sigma_timesteps(T, n, cfg.timestep_spacing, cfg.steps_offset)
        sig = S.interpolate_sigmas(ts, train)
        sig, ts = self._converted(sig, ts, log_sigmas)
        self.num_inference_steps = n
        sig = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        sigmas = torch.cat([sig[:1], sig[1:-1].repeat_interleave(2), sig[-1:]])
        ts = torch.from_numpy(np.asarray(ts))
        ts = torch.cat([ts[:1], ts[1:].repeat_interleave(2)]).to(torch.float32)
        self.dt = None
        self.sample = None
        self._x0_first = None
        self._publish(ts, sigmas, (sigmas**2 + 1) ** 0.5, self._heun_rows(sigmas), device)

    def _heun_rows(self, sigmas: torch.Tensor) -> torch.Tensor:
        """(2K, NUM_COEFS) for K = len(sigmas) - 1 step indices: first stages, then second stages."""
        cfg = self.config
        s = sigmas.double()
        pred = "sample" if cfg.prediction_type == "original_sample" else cfg.prediction_type
        # first stage at k: s_k -> s_{k+1}
        sigma, nxt = s[:-1], s[1:]
        first = _rows(sigma.shape, None, **_derivative_columns(sigma, sigma, pred, cfg.clip_sample), OX=1.0,
                      OE=nxt - sigma, S0=1.0)
        # second stage at k: model at s_k, dt = s_k - s_{k-1} (row 0 is never used: zeros)
        prev, cur = s[:-1], s[1:]
        dt = cur - prev
        cols = _derivative_columns(cur, cur, pred, cfg.clip_sample)
        second = _rows(prev.shape, None, **cols, OE=dt / 2, H1=1 + dt / (2 * prev), H2=-dt / (2 * prev), S0=1.0)
        second = torch.cat([torch.zeros_like(second[:1]), second])[:-1]
        second = torch.where(torch.isfinite(second).all(-1, keepdim=True), second, torch.zeros_like(second))
        return torch.cat([first, second])

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """One stage (one fused call): a first (Euler) stage, or the second stage combining this
        call's derivative with the first stage's. Returns :class:`SchedulerOutput`
        (``prev_sample``, ``pred_original_sample``) or a tuple."""
        num = len(self._coefs) // 2
        i = self._begin_step(timestep, num)
        device = sample.device
        clip = self.config.clip_sample_range if self.config.clip_sample else None
        coefs = self._on("coefs", self._coefs, device)
        want_x0 = self.compute_pred_original_sample
        if self.state_in_first_order:
            out, state = sampling_step(sample, model_output, coefs, self._row_index(i, device), clip_range=clip,
                                       return_state=True, impl=self.impl)
            self.sample, self._x0_first = sample, state
            self.dt = self._host_sigmas[i + 1] - self._host_sigmas[i]
        else:
            if i == 0:
                raise ValueError("HeunDiscreteScheduler: a second stage at step index 0 (set_begin_index(0) after "
                                 "a first stage?)")
            out, state = sampling_step(sample, model_output, coefs, self._row_index(num + i, device),
                                       history=(self.sample, self._x0_first), clip_range=clip,
                                       return_state=want_x0, impl=self.impl)
            self.sample = self._x0_first = self.dt = None
        x0 = None
        if want_x0:
            x0_dtype = (model_output.dtype if self.config.prediction_type in ("sample", "original_sample")
                        else torch.promote_types(sample.dtype, model_output.dtype))
            x0 = state.to(x0_dtype)
        self._step_index += 1
        if not return_dict:
            return out, x0
        return SchedulerOutput(out, x0)
