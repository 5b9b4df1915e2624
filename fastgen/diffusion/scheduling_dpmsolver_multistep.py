"""DPMSolverMultistepScheduler: diffusers' (0.42) DPM-Solver++ (1st/2nd order, ODE and SDE), fused."""
from __future__ import annotations

import numpy as np
import torch

from ..ops import sampling_step
from ..ops.step_coefficients import DPM_ALGORITHM_TYPES, DPM_SOLVER_TYPES, dpmpp_coefficients
from . import schedules
from .scheduling_base import SchedulerBase, SchedulerOutput

FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


class DPMSolverMultistepScheduler(SchedulerBase):
    """Multistep DPM-Solver++ (Lu et al. 2022), constructor arguments as diffusers'.

    Supported: algorithm_type "dpmsolver++" / "sde-dpmsolver++", solver_order 1 or 2, solver_type
    "midpoint" / "heun", lower_order_final, euler_at_final, final_sigmas_type, lambda_min_clipped,
    timestep spacings, rescale_betas_zero_snr. Everything else that changes the math
    (thresholding, solver_order 3, karras / exponential / beta / lu / flow sigmas, learned
    variance, the noise-prediction "dpmsolver" variants) raises NotImplementedError.

    The table has 2n rows: row i is the first-order step i -> i+1, row n+i the second-order one.
    ``step`` picks the row on the host from its step counter (as diffusers does) and reads it on
    the device. The multistep state is the previous x0, kept in float32 (``model_outputs``).
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, solver_order: int = 2,
                 prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint", lower_order_final: bool = True,
                 euler_at_final: bool = False, use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
                 use_beta_sigmas: bool = False, use_lu_lambdas: bool = False, use_flow_sigmas: bool = False,
                 flow_shift: float = 1.0, final_sigmas_type: str = "zero", lambda_min_clipped: float = -float("inf"),
                 variance_type: str | None = None, timestep_spacing: str = "linspace", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False, use_dynamic_shifting: bool = False,
                 time_shift_type: str = "exponential"):
        # diffusers maps these legacy names onto the supported solver the same way
        if algorithm_type == "deis":
            algorithm_type = "dpmsolver++"
        if solver_type in ("logrho", "bh1", "bh2"):
            solver_type = "midpoint"
        self._register_config(locals())
        unsupported = [name for name, on in [
            ("thresholding=True", thresholding), ("use_karras_sigmas=True", use_karras_sigmas),
            ("use_exponential_sigmas=True", use_exponential_sigmas), ("use_beta_sigmas=True", use_beta_sigmas),
            ("use_lu_lambdas=True", use_lu_lambdas), ("use_flow_sigmas=True", use_flow_sigmas),
            ("use_dynamic_shifting=True", use_dynamic_shifting),
            (f"variance_type={variance_type!r}", variance_type in ("learned", "learned_range"))] if on]
        if algorithm_type in ("dpmsolver", "sde-dpmsolver"):
            unsupported.append(f"algorithm_type={algorithm_type!r} (deprecated in diffusers; use dpmsolver++ or "
                               f"sde-dpmsolver++)")
        if solver_order == 3:
            unsupported.append("solver_order=3")
        if prediction_type == "flow_prediction":
            unsupported.append("prediction_type='flow_prediction'")
        if unsupported:
            raise NotImplementedError("fastgen's DPMSolverMultistepScheduler does not implement " + ", ".join(unsupported))
        if algorithm_type not in DPM_ALGORITHM_TYPES:
            raise ValueError(f"algorithm_type must be one of {DPM_ALGORITHM_TYPES}, got {algorithm_type!r}")
        if solver_type not in DPM_SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {DPM_SOLVER_TYPES}, got {solver_type!r}")
        if solver_order not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2, got {solver_order!r}")
        if final_sigmas_type not in FINAL_SIGMAS_TYPES:
            raise ValueError(f"final_sigmas_type must be one of {FINAL_SIGMAS_TYPES}, got {final_sigmas_type!r}")
        self._init_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                            timestep_spacing, rescale_betas_zero_snr)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2.0**-24  # keeps sigma finite at the zero-SNR end, as diffusers does
        self.alpha_t = self.alphas_cumprod.sqrt()
        self.sigma_t = (1.0 - self.alphas_cumprod).sqrt()
        self.lambda_t = self.alpha_t.log() - self.sigma_t.log()
        self.sigmas = ((1.0 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._begin_index = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index = None

    @property
    def step_index(self):
        """The counter of the current step (None before the first step)."""
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the counter at ``begin_index`` (pipelines that start mid-schedule call this)."""
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None) -> None:
        """Timesteps and sigmas as diffusers builds them (spacing, steps_offset, lambda_min_clipped,
        final_sigmas_type), or custom descending ``timesteps``; the table is built on ``device``."""
        T = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps and timesteps")
        if timesteps is not None:
            ts = np.asarray(timesteps, dtype=np.int64).reshape(-1)
            if ts.size == 0 or ts.max() >= T or ts.min() < 0:
                raise ValueError(f"timesteps must be values in [0, {T - 1}], got {list(ts)}")
        else:
            n = schedules.check_num_inference_steps(num_inference_steps, T)
            # lambda_min_clipped drops the low-SNR end where lambda(t) falls below it (cosine schedule)
            clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), self.config.lambda_min_clipped))
            ts = schedules.dpm_timesteps(T, n, self.config.timestep_spacing, self.config.steps_offset, T - clipped)
            if ts.max() >= T:
                raise ValueError(f"steps_offset={self.config.steps_offset} pushes timestep {ts.max()} past "
                                 f"num_train_timesteps={T}")
        abar = self.alphas_cumprod
        sig = ((1.0 - abar) / abar).sqrt()  # sigma = sqrt((1 - abar) / abar), float32 like diffusers'
        last = sig[0] if self.config.final_sigmas_type == "sigma_min" else torch.tensor(0.0)
        self.sigmas = torch.cat([sig[torch.from_numpy(ts)], last.reshape(1)])
        n = len(ts)
        s = self.sigmas.double()
        alpha = 1.0 / (s * s + 1.0).sqrt()
        sigma = s * alpha
        kw = dict(prediction_type=self.config.prediction_type, algorithm_type=self.config.algorithm_type,
                  solver_type=self.config.solver_type)
        first = dpmpp_coefficients(alpha[1:], sigma[1:], alpha[:-1], sigma[:-1], **kw)
        second = first.clone()
        if n > 1:
            second[1:] = dpmpp_coefficients(alpha[2:], sigma[2:], alpha[1:-1], sigma[1:-1], alpha[:-2], sigma[:-2], **kw)
        # a second-order row the solver can never use (a final step to sigma = 0) may hold inf
        second = torch.where(torch.isfinite(second).all(-1, keepdim=True), second, first)
        self._coefs = torch.cat([first, second])
        self._num_rows = 2 * n
        self.num_inference_steps = n
        self._device_cache = {}
        self._set_schedule(ts, device)
        self._begin_index = None
        self._reset_state()
        if device is not None:
            device = self.timesteps.device  # with its index: caches are keyed by the samples' device
            self._on("coefs", self._coefs, device)
            self._row_index(0, device)
        self._reset_noise_state(device)

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        """Position of ``timestep`` in the schedule (the second match when it repeats, the last
        position when absent), as diffusers resolves it."""
        ts = self._host_timesteps if schedule_timesteps is None else np.asarray(schedule_timesteps.cpu())
        hits = np.nonzero(ts == int(timestep))[0]
        if len(hits) == 0:
            return len(self._host_timesteps) - 1
        return int(hits[1] if len(hits) > 1 else hits[0])

    def _init_step_index(self, timestep) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        if isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu":
            value = self._scheduled_value(timestep)  # ``for t in scheduler.timesteps``: no device read
            timestep = timestep if value is None else value
        # any other device tensor is read once here (diffusers reads it too); set_begin_index avoids it
        self._step_index = self.index_for_timestep(int(timestep))

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):
        """One solver step from timestep to the next. The first call finds its position in the
        schedule from ``timestep`` (or ``set_begin_index``); later calls count. SDE noise is drawn
        every step, float32, from ``variance_noise``, ``generator`` or the scheduler's own source.
        Returns :class:`SchedulerOutput` (``prev_sample``) or a 1-tuple."""
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        i, n = self._step_index, self.num_inference_steps
        if i >= n:
            raise ValueError(f"step called {i + 1} times after set_timesteps({n}); call set_timesteps again")
        cfg = self.config
        final = i == n - 1 and (cfg.euler_at_final or (cfg.lower_order_final and n < 15)
                                or cfg.final_sigmas_type == "zero")
        second = cfg.solver_order == 2 and self.lower_order_nums >= 1 and not final
        device = sample.device
        noise_args = {}
        if cfg.algorithm_type == "sde-dpmsolver++":
            noise_args = self._noise_args(model_output, generator, variance_noise, torch.float32)
        prev_x0 = self.model_outputs[-1] if second else None  # the previous step's x0
        out, x0 = sampling_step(sample, model_output, self._on("coefs", self._coefs, device),
                                self._row_index(i + (n if second else 0), device), prev_x0=prev_x0,
                                return_x0=True, impl=self.impl, **noise_args)
        self._after_noise(noise_args, sample.numel())
        self.model_outputs = self.model_outputs[1:] + [x0]
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._step_index += 1
        if not return_dict:
            return (out,)
        return SchedulerOutput(out)
