"""KDPM2DiscreteScheduler and KDPM2AncestralDiscreteScheduler (diffusers 0.42): k-diffusion's DPM-2
(sample_dpm_2 / sample_dpm_2_ancestral), a midpoint method in log sigma, each stage one fused call."""
from __future__ import annotations

import numpy as np
import torch

from ..ops import sampling_step
from ..ops.step_coefficients import _rows
from . import sigmas as S
from .scheduling_base import SchedulerOutput
from .scheduling_euler import SigmaSchedulerBase, x0_and_derivative

KDPM2DiscreteSchedulerOutput = SchedulerOutput
KDPM2AncestralDiscreteSchedulerOutput = SchedulerOutput


def _interleave(v: torch.Tensor) -> torch.Tensor:
    """[v0, v1, v1, v2, v2, ..., v_last, v_last, v_last]: diffusers' per-stage layout."""
    return torch.cat([v[:1], v[1:].repeat_interleave(2), v[-1:]])


def _finite(rows: torch.Tensor) -> torch.Tensor:
    # rows a schedule can never use (a stage dividing by a zero sigma) are zeroed instead of inf
    return torch.where(torch.isfinite(rows).all(-1, keepdim=True), rows, torch.zeros_like(rows))


def _stage(sigma_x0, out_step, prediction_type, **extra) -> torch.Tensor:
    """Rows with x0 at ``sigma_x0``, d = (x - x0) / sigma_x0 and out = [x or h1] + out_step d."""
    cols = x0_and_derivative(sigma_x0, prediction_type)
    return _rows(torch.as_tensor(sigma_x0).shape, None, **cols, OE=out_step, S0=1.0, **extra)


class _KDPM2Base(SigmaSchedulerBase):
    """What the two DPM-2 schedulers share: constructor (arguments as diffusers'), schedule, the
    two-stage step."""

    order = 2
    _ancestral = False

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "linear", trained_betas=None, use_karras_sigmas: bool = False,
                 use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 prediction_type: str = "epsilon", timestep_spacing: str = "linspace", steps_offset: int = 0):
        self._register_config(locals())
        S.check_one_sigma_type(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        self._init_sigma_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                  prediction_type, timestep_spacing, False)
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)

    @property
    def state_in_first_order(self) -> bool:
        """True when the next call is a first stage (diffusers: ``sample is None``)."""
        return self.sample is None

    def set_timesteps(self, num_inference_steps: int, device=None, num_train_timesteps: int | None = None) -> None:
        """diffusers' interleaved schedule: [t0, ti_1, t1, ti_2, t2, ...] with ti the timesteps of
        the interpolated (midpoint) sigmas; the table is built on ``device``."""
        ts, sig, log_sigmas = self._spaced(num_inference_steps, num_train_timesteps)
        sig, ts = self._converted(sig, ts, log_sigmas, round_karras_timesteps=True)
        self.num_inference_steps = len(ts)
        self.log_sigmas = torch.from_numpy(log_sigmas).to(device)
        s = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        ts = torch.from_numpy(np.asarray(ts))
        tables = self._tables_of(s)  # float32 per-step sigma tables, diffusers' torch arithmetic
        interpol = tables["sigmas_interpol"]
        for name, value in tables.items():
            setattr(self, name, _interleave(value))
        ti = torch.from_numpy(np.asarray(S.sigma_to_t(interpol.numpy(), log_sigmas, np.float32))).to(ts.dtype)
        mid = ti[:-2] if self._ancestral else ti[1:-1]
        timesteps = torch.cat([ts[:1], torch.stack((mid[:, None], ts[1:, None]), dim=-1).flatten()])
        sigmas = _interleave(s)
        self.sample = None
        self._publish(timesteps, sigmas, self._scales(sigmas), self._table(sigmas, len(timesteps)), device)

    def _scale_row(self, step_index: int) -> int:
        return step_index if self.state_in_first_order else len(self.sigmas) + step_index - self._ancestral

    def _scales(self, sigmas: torch.Tensor) -> torch.Tensor:
        """First-stage divisors (by sigma), then second-stage ones (by the interpolated sigma)."""
        return torch.cat([(sigmas**2 + 1) ** 0.5, (self.sigmas_interpol**2 + 1) ** 0.5])

    def _stage_rows(self, k, s, si, *extra):
        raise NotImplementedError

    def _table(self, sigmas: torch.Tensor, num: int) -> torch.Tensor:
        """(2 num, NUM_COEFS): first stages at step index k, then second stages."""
        pred = self.config.prediction_type
        pred = "epsilon" if pred in ("sample", "original_sample") else pred  # raises in step, as diffusers
        k = torch.arange(num)
        first, second = self._stage_rows(k, sigmas.double(), self.sigmas_interpol.double(), pred)
        return torch.cat([_finite(first), _finite(second)])

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        num = len(self._coefs) // 2
        i = self._begin_step(timestep, num)
        if self.config.prediction_type in ("sample", "original_sample"):
            raise NotImplementedError("prediction_type not implemented yet: sample")
        device = sample.device
        coefs = self._on("coefs", self._coefs, device)
        want_x0 = self.compute_pred_original_sample
        if self.state_in_first_order:
            out, state = sampling_step(sample, model_output, coefs, self._row_index(i, device),
                                       return_state=want_x0, impl=self.impl)
            self.sample = sample
        else:
            if i == 0:
                raise ValueError(f"{type(self).__name__}: a second stage at step index 0")
            noise_args = {}
            if self._ancestral:
                noise_args = self._noise_args(model_output, generator, None, model_output.dtype)
            out, state = sampling_step(sample, model_output, coefs, self._row_index(num + i, device),
                                       history=(self.sample,), return_state=want_x0, impl=self.impl, **noise_args)
            self._after_noise(noise_args, sample.numel())
            self.sample = None
        x0 = state.to(torch.promote_types(sample.dtype, model_output.dtype)) if want_x0 else None
        self._step_index += 1
        if not return_dict:
            return out, x0
        return SchedulerOutput(out, x0)


class KDPM2DiscreteScheduler(_KDPM2Base):
    """DPM-2 (Karras et al. 2022's 2nd-order sampler in k-diffusion), constructor arguments as
    diffusers'. Per step from s to s' with the midpoint s_mid = sqrt(s s') (log-sigma midpoint):

        first stage  (model at s):     x_mid = x + (s_mid - s) d(x, s)
        second stage (model at s_mid): out = x_1 + (s' - s) d(x_mid, s_mid),  x_1 = the first stage's sample

    each stage one fused call; the second gets x_1 as history h1. ``pred_original_sample`` is the
    stage's x0 (float32 state). prediction_type "sample" raises NotImplementedError in step (as diffusers).
    """

    @staticmethod
    def _tables_of(s: torch.Tensor) -> dict:
        return {"sigmas_interpol": s.log().lerp(s.roll(1).log(), 0.5).exp()}

    def _stage_rows(self, k, s, si, pred):
        # first stage at k: s[k] -> si[k + 1]; second at k: model at si[k], x_1 + (s[k] - s[k-1]) d
        first = _stage(s[k], si[k + 1] - s[k], pred, OX=1.0)
        km = (k - 1).clamp_min(0)
        second = _stage(si[k], s[k] - s[km], pred, H1=1.0)
        return first, second


class KDPM2AncestralDiscreteScheduler(_KDPM2Base):
    """Ancestral DPM-2 (k-diffusion's sample_dpm_2_ancestral), constructor arguments as diffusers'.
    Per step s -> s' with sigma_up / sigma_down of the ancestral split and s_mid the log-midpoint of
    s and sigma_down:

        first stage  (model at s):     x_mid = x + (s_mid - s) d(x, s)
        second stage (model at s_mid): out = x_1 + (sigma_down - s) d(x_mid, s_mid) + sigma_up z

    Noise is drawn in the second stage only, in model_output's dtype, as diffusers draws it.
    prediction_type "sample" raises NotImplementedError in step (as diffusers).
    """

    _ancestral = True

    @staticmethod
    def _tables_of(s: torch.Tensor) -> dict:
        nxt = s.roll(-1)
        nxt[-1] = 0.0
        up = (nxt**2 * (s**2 - nxt**2) / s**2) ** 0.5
        down = (nxt**2 - up**2) ** 0.5
        down[-1] = 0.0
        interpol = s.log().lerp(down.log(), 0.5).exp()
        interpol[-2:] = 0.0
        return {"sigmas_interpol": interpol, "sigmas_up": up, "sigmas_down": down}

    def _stage_rows(self, k, s, si, pred):
        # first stage at k: s[k] -> si[k]; second at k: model at si[k-1], x_1 + (down - s[k-1]) d + up z
        first = _stage(s[k], si[k] - s[k], pred, OX=1.0)
        km = (k - 1).clamp_min(0)
        up, down = self.sigmas_up.double()[km], self.sigmas_down.double()[km]
        second = _stage(si[km], down - s[km], pred, H1=1.0, SZ=up)
        return first, second
