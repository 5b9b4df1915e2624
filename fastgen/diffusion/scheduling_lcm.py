"""LCMScheduler: diffusers' (0.42) latent-consistency multistep sampler, each step one fused pass."""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..ops import sampling_step
from ..ops.step_coefficients import PREDICTION_TYPES, _rows, x0_coefficients
from .scheduling_base import SchedulerBase, SchedulerOutput
from .thresholding import thresholded_x0

logger = logging.getLogger("fastgen")

LCM_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class LCMSchedulerOutput(SchedulerOutput):
    """``prev_sample`` (the next step's input) and ``denoised`` (the consistency model's x0 estimate)."""

    _fields = ("prev_sample", "denoised")


class LCMScheduler(SchedulerBase):
    """Multistep latent-consistency sampling (Luo et al. 2023), constructor arguments as diffusers'.

    Step i (timestep t, target t' = the next scheduled timestep, t itself on the last one)::

        x0       = the model's x0 estimate (epsilon / sample / v), clipped or thresholded
        denoised = c_out(t) x0 + c_skip(t) x,   c_skip = sd^2 / (s^2 + sd^2), c_out = s / sqrt(s^2 + sd^2)
                   with s = t * timestep_scaling, sd = 0.5
        x'       = sqrt(abar_t') denoised + sqrt(1 - abar_t') z      (x' = denoised on the last step)

    One fused pass writes x' and ``denoised`` (the kernel's state). ``thresholding=True`` adds the
    documented extra pass of :func:`thresholded_x0`. Noise is drawn where diffusers draws it (every
    step but the one with index num_inference_steps - 1), in the dtype of ``denoised``.

    diffusers reads abar_t and the scalings from the ``timestep`` argument and the target from the
    schedule: a step called with the scheduled timestep (an int, a CPU tensor, or a view of
    ``timesteps``, as pipelines pass it) uses its precomputed row; another value gets a row built
    for it once; a device tensor that is not a view of ``timesteps`` is read on the host for that
    (one synchronisation, which passing the scheduler's own timesteps avoids).
    """

    _compatibles = ()
    order = 1
    init_noise_sigma = 1.0

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", trained_betas=None, original_inference_steps: int = 50,
                 clip_sample: bool = False, clip_sample_range: float = 1.0, set_alpha_to_one: bool = True,
                 steps_offset: int = 0, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 timestep_spacing: str = "leading", timestep_scaling: float = 10.0,
                 rescale_betas_zero_snr: bool = False):
        self._register_config(locals())
        if trained_betas is None and beta_schedule not in LCM_BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {LCM_BETA_SCHEDULES} for LCMScheduler (or pass "
                             f"trained_betas), got {beta_schedule!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self._init_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                            "leading", rescale_betas_zero_snr)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps = None
        self._set_schedule(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64), None)
        self.custom_timesteps = False
        self._adhoc_rows: dict = {}

    # -- schedule ----------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int | None = None, device=None,
                      original_inference_steps: int | None = None, timesteps=None, strength: float = 1.0) -> None:
        """diffusers' LCM schedule: n timesteps picked evenly from the ``original_inference_steps``
        the model was distilled on (those times ``strength`` for img2img), or custom descending
        ``timesteps`` (then ``strength`` keeps their last fraction)."""
        cfg = self.config
        T = cfg.num_train_timesteps
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        original_steps = original_inference_steps if original_inference_steps is not None \
            else cfg.original_inference_steps
        if original_steps > T:
            raise ValueError(f"`original_steps`: {original_steps} cannot be larger than `self.config.train_timesteps`:"
                             f" {T} as the unet model trained with this scheduler can only handle maximal {T} "
                             f"timesteps.")
        k = T // original_steps
        origin = np.asarray(list(range(1, int(original_steps * strength) + 1))) * k - 1
        if timesteps is not None:
            timesteps = [int(t) for t in timesteps]
            train = set(origin.tolist())
            for i in range(1, len(timesteps)):
                if timesteps[i] >= timesteps[i - 1]:
                    raise ValueError("`custom_timesteps` must be in descending order.")
            if not timesteps or timesteps[0] >= T:
                raise ValueError(f"`timesteps` must start before `self.config.train_timesteps`: {T}.")
            if min(timesteps) < 0:
                raise ValueError(f"`timesteps` must be values in [0, {T - 1}], got {timesteps}")
            if strength == 1.0 and timesteps[0] != T - 1:
                logger.warning(f"The first timestep on the custom timestep schedule is {timesteps[0]}, not "
                               f"`self.config.num_train_timesteps - 1`: {T - 1}. You may get unexpected results "
                               f"when using this timestep schedule.")
            off_schedule = [t for t in timesteps[1:] if t not in train]
            if off_schedule:
                logger.warning(f"The custom timestep schedule contains the following timesteps which are not on the "
                               f"original training/distillation timestep schedule: {off_schedule}. You may get "
                               f"unexpected results when using this timestep schedule.")
            if len(timesteps) > original_steps:
                logger.warning(f"The number of timesteps in the custom timestep schedule is {len(timesteps)}, which "
                               f"exceeds the length of the timestep schedule used for training: {original_steps}. "
                               f"You may get some unexpected results when using this timestep schedule.")
            ts = np.array(timesteps, dtype=np.int64)
            n = len(ts)
            self.custom_timesteps = True
            init_timestep = min(int(n * strength), n)
            ts = ts[max(n - init_timestep, 0) * self.order:]
            if len(ts) == 0:
                raise ValueError(f"strength={strength} leaves none of the {n} custom timesteps")
        else:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                    or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
            if num_inference_steps > T:
                raise ValueError(f"`num_inference_steps`: {num_inference_steps} cannot be larger than "
                                 f"`self.config.train_timesteps`: {T} as the unet model trained with this scheduler "
                                 f"can only handle maximal {T} timesteps.")
            if len(origin) // num_inference_steps < 1:
                raise ValueError(f"The combination of `original_steps x strength`: {original_steps} x {strength} is "
                                 f"smaller than `num_inference_steps`: {num_inference_steps}. Make sure to either "
                                 f"reduce `num_inference_steps` to a value smaller than "
                                 f"{int(original_steps * strength)} or increase `strength` to a value higher than "
                                 f"{float(num_inference_steps / original_steps)}.")
            if num_inference_steps > original_steps:
                raise ValueError(f"`num_inference_steps`: {num_inference_steps} cannot be larger than "
                                 f"`original_inference_steps`: {original_steps} because the final timestep schedule "
                                 f"will be a subset of the `original_inference_steps`-sized initial timestep "
                                 f"schedule.")
            n = int(num_inference_steps)
            origin = origin[::-1].copy()
            picks = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
            ts = origin[picks]
        self.num_inference_steps = n
        self._device_cache = {}
        self._adhoc_rows = {}
        self._set_schedule(ts.astype(np.int64), device)
        self._schedule_list = self._host_timesteps.tolist()  # what step reads: host ints, no tensor
        self._coefs, self._x0_coefs = self._table(ts)
        self._num_rows = len(ts)
        if device is not None:
            device = self.timesteps.device  # with its index: caches are keyed by the samples' device
            self._on("coefs", self._coefs, device)
            self._on("x0_coefs", self._x0_coefs, device)
            self._row_index(0, device)
        self._reset_noise_state(device)

    def get_scalings_for_boundary_condition_discrete(self, timestep):
        """(c_skip, c_out) of the consistency model's boundary condition at ``timestep``."""
        self.sigma_data = 0.5
        scaled = timestep * self.config.timestep_scaling
        c_skip = self.sigma_data**2 / (scaled**2 + self.sigma_data**2)
        c_out = scaled / (scaled**2 + self.sigma_data**2) ** 0.5
        return c_skip, c_out

    def _rows_for(self, t, t_prev, noisy):
        """Rows (float32, shape of t) of steps at timesteps t landing on t_prev; ``noisy``: whether
        the step adds noise. Returns (rows from the model output, rows from a given x0)."""
        t, t_prev, noisy = (torch.as_tensor(v) for v in (t, t_prev, noisy))
        abar = self.alphas_cumprod.double()
        a = abar[t]
        a_prev = torch.where(t_prev >= 0, abar[t_prev.clamp_min(0)], self.final_alpha_cumprod.double())
        c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(t.double())
        px, pm = x0_coefficients(a.sqrt(), (1.0 - a).sqrt(), self.config.prediction_type)
        scale = torch.where(noisy, a_prev.sqrt(), torch.ones_like(a_prev))
        cols = dict(O0=scale * c_out, OX=scale * c_skip, SZ=torch.where(noisy, (1.0 - a_prev).sqrt(), 0.0),
                    S0=c_out, SX=c_skip)
        return _rows(a.shape, None, PX=px, PM=pm, **cols), _rows(a.shape, None, PM=1.0, **cols)

    def _table(self, ts: np.ndarray):
        t = torch.from_numpy(ts)
        t_prev = torch.cat([t[1:], t[-1:]])  # the last step "lands" on its own timestep, as diffusers
        noisy = torch.arange(len(ts)) != self.num_inference_steps - 1
        return self._rows_for(t, t_prev, noisy)

    def previous_timestep(self, timestep):
        """The scheduled timestep after ``timestep`` (-1 after the last)."""
        if self.custom_timesteps or self.num_inference_steps:
            hits = np.nonzero(self._host_timesteps == int(timestep))[0]
            if len(hits) == 0:
                raise ValueError(f"timestep {int(timestep)} is not one of the scheduler's timesteps")
            i = int(hits[0])
            return torch.tensor(-1) if i == len(self._host_timesteps) - 1 else self.timesteps[i + 1]
        return timestep - 1

    # -- step --------------------------------------------------------------------------------

    def _step_rows(self, i: int, timestep, device):
        """(table from the model output, table from a given x0, row index) for step i called with
        ``timestep``: the schedule's row, or, when the call names another timestep (diffusers reads
        abar_t and the scalings from the argument), a row built for it once and cached."""
        t = self._host_value(timestep)
        # a device tensor that is not a view of timesteps: its value decides the row (one read)
        t = int(self._host_value(timestep.cpu()) if t is None else t)
        if t == self._schedule_list[i]:
            return (self._on("coefs", self._coefs, device), self._on("x0_coefs", self._x0_coefs, device),
                    self._row_index(i, device))
        T = self.config.num_train_timesteps
        if not 0 <= t < T:
            raise ValueError(f"timestep must lie in [0, {T - 1}], got {t}")
        key = (i, t, device)
        if key not in self._adhoc_rows:
            n = len(self._schedule_list)
            t_prev = self._schedule_list[i + 1] if i + 1 < n else t
            rows, x0_rows = self._rows_for(t, t_prev, i != self.num_inference_steps - 1)
            self._adhoc_rows[key] = (rows.reshape(1, -1).to(device), x0_rows.reshape(1, -1).to(device))
        rows, x0_rows = self._adhoc_rows[key]
        return rows, x0_rows, torch.zeros((), dtype=torch.int64, device=device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """One consistency step. Returns :class:`LCMSchedulerOutput` (``prev_sample``, ``denoised``)
        or the tuple (prev_sample, denoised)."""
        i = self._begin_step(timestep, len(self._host_timesteps))
        cfg = self.config
        device = sample.device
        coefs, x0_coefs, index = self._step_rows(i, timestep, device)
        dtype = torch.promote_types(sample.dtype, model_output.dtype)  # diffusers' denoised dtype
        noise_args = {}
        if i != self.num_inference_steps - 1:
            noise_args = self._noise_args(model_output, generator, None, dtype)
        clip = cfg.clip_sample_range if cfg.clip_sample and not cfg.thresholding else None
        source = model_output
        if cfg.thresholding:  # the documented extra pass: x0 thresholded, then the step from that x0
            source = thresholded_x0(sample, model_output, coefs, index, cfg.dynamic_thresholding_ratio,
                                    cfg.sample_max_value)
            coefs = x0_coefs
        want_denoised = self.compute_pred_original_sample
        out, denoised = sampling_step(sample, source, coefs, index, clip_range=clip, return_state=want_denoised,
                                      impl=self.impl, **noise_args)
        self._after_noise(noise_args, sample.numel())
        self._step_index += 1
        out = out.to(dtype)
        if denoised is not None:
            denoised = denoised.to(dtype)
        if not return_dict:
            return (out, denoised)
        return LCMSchedulerOutput(prev_sample=out, denoised=denoised)
