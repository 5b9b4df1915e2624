"""DDPMScheduler: diffusers' DDPMScheduler (0.42) with the step fused into one kernel pass."""
from __future__ import annotations

import numpy as np
import torch

from ..ops.step_coefficients import DDPM_VARIANCE_TYPES, ddpm_coefficients
from . import schedules
from .scheduling_base import SchedulerBase, SchedulerOutput

DDPMSchedulerOutput = SchedulerOutput


class DDPMScheduler(SchedulerBase):
    """Ancestral DDPM sampling (Ho et al. 2020), constructor arguments as diffusers'.

    ``set_timesteps`` builds one coefficient row per *training* timestep t (row t steps from t to
    the schedule's next timestep below it, or to abar = 1 past the last), so ``step`` indexes the
    table with t itself, on the device. Unsupported options raise NotImplementedError:
    ``thresholding``, variance types "learned" / "learned_range".
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, variance_type: str = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False):
        self._register_config(locals())
        if thresholding:
            raise NotImplementedError("thresholding=True (dynamic thresholding) is not implemented by fastgen's "
                                      "DDPMScheduler; use clip_sample")
        if variance_type in ("learned", "learned_range"):
            raise NotImplementedError(f"variance_type={variance_type!r} is not implemented by fastgen's DDPMScheduler "
                                      f"(supported: {DDPM_VARIANCE_TYPES})")
        if variance_type not in DDPM_VARIANCE_TYPES:
            raise ValueError(f"variance_type must be one of {DDPM_VARIANCE_TYPES}, got {variance_type!r}")
        self._init_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                            timestep_spacing, rescale_betas_zero_snr)
        self.variance_type = variance_type
        self._num_rows = num_train_timesteps
        # before set_timesteps, step walks every training timestep (t -> t - 1), as diffusers' does
        self._use_timesteps(np.arange(num_train_timesteps - 1, -1, -1, dtype=np.int64), None)
        self.num_inference_steps = None

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None) -> None:
        """Timesteps as diffusers spaces them (``timestep_spacing``, ``steps_offset``), or custom
        descending ``timesteps``; builds the coefficient table on ``device``."""
        T = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps and timesteps")
        if timesteps is not None:
            ts = np.asarray(timesteps, dtype=np.int64).reshape(-1)
            if ts.size == 0 or (np.diff(ts) >= 0).any() or ts[0] >= T or ts[-1] < 0:
                raise ValueError(f"timesteps must be strictly descending values in [0, {T - 1}], got {list(ts)}")
        else:
            n = schedules.check_num_inference_steps(num_inference_steps, T)
            ts = schedules.spaced_timesteps(T, n, self.config.timestep_spacing, self.config.steps_offset)
            if ts.max() >= T:
                raise ValueError(f"steps_offset={self.config.steps_offset} pushes timestep {ts.max()} past "
                                 f"num_train_timesteps={T}")
        self._use_timesteps(ts, device)
        self.num_inference_steps = len(ts)

    def _use_timesteps(self, ts: np.ndarray, device) -> None:
        """Publish descending timesteps ``ts`` and build the table (on ``device`` when given)."""
        T = self.config.num_train_timesteps
        # row t jumps to the largest scheduled timestep below t (diffusers' previous_timestep for
        # scheduled t; any other t gets the same rule instead of an error)
        below = np.searchsorted(ts[::-1], np.arange(T), side="left") - 1
        prev = np.where(below >= 0, ts[::-1][np.maximum(below, 0)], -1)
        abar = self.alphas_cumprod.double()
        abar_prev = torch.where(torch.from_numpy(prev) >= 0, abar[torch.from_numpy(prev).clamp_min(0)], 1.0)
        self._coefs = ddpm_coefficients(abar, abar_prev, prediction_type=self.config.prediction_type,
                                        variance_type=self.variance_type, add_noise_mask=torch.arange(T) > 0)
        self._device_cache = {}
        self._set_schedule(ts, device)
        if device is not None:
            device = self.timesteps.device  # with its index: caches are keyed by the samples' device
            self._on("coefs", self._coefs, device)
            self._row_index(0, device)
        self._reset_noise_state(device)

    def previous_timestep(self, timestep: int) -> int:
        """The timestep a step from ``timestep`` lands on (-1 past the end)."""
        ts = self._host_timesteps[::-1]
        below = int(np.searchsorted(ts, int(timestep), side="left")) - 1
        return int(ts[below]) if below >= 0 else -1

    def _timestep_value(self, timestep) -> int | None:
        """The host value of a scalar timestep when it costs no sync, else None."""
        if isinstance(timestep, (int, np.integer)):
            return int(timestep)
        if torch.compiler.is_compiling():
            return None  # traced: unknown on the host, so noise is drawn (rows with t = 0 ignore it)
        if timestep.device.type == "cpu":
            return int(timestep.reshape(-1).max())
        return self._scheduled_value(timestep)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True, *, variance_noise: torch.Tensor | None = None):
        """x_t -> x_{t-1}. ``timestep``: an int, or an integer tensor (scalar, or one per sample) on
        any device; a device tensor indexes the table on the device. Noise is drawn where diffusers
        draws it (t > 0), from ``variance_noise``, ``generator`` or the scheduler's own source.
        Returns :class:`SchedulerOutput` (``prev_sample``, ``pred_original_sample``) or a tuple."""
        device = sample.device
        coefs = self._on("coefs", self._coefs, device)
        index, t_host = self._timestep_index(timestep, device)
        if t_host is None:
            t_host = self._timestep_value(timestep)
        noise_args = {}
        if t_host is None and generator is not None and variance_noise is None:
            t_host = int(timestep.max())  # a generator draws on the host: whether to draw needs t (one sync)
        if t_host is None or t_host > 0:
            noise_args = self._noise_args(model_output, generator, variance_noise, model_output.dtype)
        return self._fused_step(model_output, sample, coefs, index, noise_args, return_dict)
