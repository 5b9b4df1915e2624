"""DDIMScheduler: diffusers' DDIMScheduler (0.42) with the step fused into one kernel pass."""
from __future__ import annotations

import torch

from ..ops.step_coefficients import ddim_coefficients
from . import schedules
from .scheduling_base import SchedulerBase, SchedulerOutput

DDIMSchedulerOutput = SchedulerOutput


class DDIMScheduler(SchedulerBase):
    """DDIM sampling (Song et al. 2021), constructor arguments as diffusers'.

    Row t of the coefficient table steps from t to t - num_train_timesteps // num_inference_steps
    (to ``final_alpha_cumprod`` below 0: 1 with ``set_alpha_to_one``, else abar_0), so ``step``
    indexes it with t on the device. A table is built per (eta, use_clipped_model_output) pair the
    first time ``step`` sees it. ``thresholding=True`` raises NotImplementedError.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 clip_sample_range: float = 1.0, sample_max_value: float = 1.0, timestep_spacing: str = "leading",
                 rescale_betas_zero_snr: bool = False):
        self._register_config(locals())
        if thresholding:
            raise NotImplementedError("thresholding=True (dynamic thresholding) is not implemented by fastgen's "
                                      "DDIMScheduler; use clip_sample")
        self._init_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                            timestep_spacing, rescale_betas_zero_snr)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._num_rows = num_train_timesteps
        self._tables: dict = {}

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Timesteps as diffusers spaces them (``timestep_spacing``, ``steps_offset``); the coefficient
        table of the default step (eta = 0) is built on ``device``."""
        T = self.config.num_train_timesteps
        n = schedules.check_num_inference_steps(num_inference_steps, T)
        ts = schedules.spaced_timesteps(T, n, self.config.timestep_spacing, self.config.steps_offset)
        if ts.max() >= T:
            raise ValueError(f"steps_offset={self.config.steps_offset} pushes timestep {ts.max()} past "
                             f"num_train_timesteps={T}")
        self.num_inference_steps = n
        self._tables = {}
        self._device_cache = {}
        self._set_schedule(ts, device)
        if device is not None:
            device = self.timesteps.device  # with its index: caches are keyed by the samples' device
            self._table(0.0, False, device)
            self._row_index(0, device)
        self._reset_noise_state(device)

    def _table(self, eta: float, use_clipped: bool, device: torch.device) -> torch.Tensor:
        key = (float(eta), bool(use_clipped))
        if key not in self._tables:
            T = self.config.num_train_timesteps
            prev = torch.arange(T) - T // self.num_inference_steps
            abar = self.alphas_cumprod.double()
            abar_prev = torch.where(prev >= 0, abar[prev.clamp_min(0)], self.final_alpha_cumprod.double())
            self._tables[key] = ddim_coefficients(abar, abar_prev, eta=float(eta),
                                                  prediction_type=self.config.prediction_type,
                                                  use_clipped_model_output=bool(use_clipped))
        return self._on(("coefs",) + key, self._tables[key], device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True):
        """x_t -> x_{t_prev}. ``timestep``: an int, or an integer tensor (scalar, or one per sample)
        on any device; a device tensor indexes the table on the device. Noise is drawn only for
        eta > 0, from ``variance_noise``, ``generator`` or the scheduler's own source. Returns
        :class:`SchedulerOutput` (``prev_sample``, ``pred_original_sample``) or a tuple."""
        self._require_timesteps()
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
            raise ValueError(f"eta must be a number >= 0, got {eta!r}")
        device = sample.device
        coefs = self._table(eta, use_clipped_model_output, device)
        index, _ = self._timestep_index(timestep, device)
        noise_args = self._noise_args(model_output, generator, variance_noise, model_output.dtype) if eta > 0 else {}
        return self._fused_step(model_output, sample, coefs, index, noise_args, return_dict)
