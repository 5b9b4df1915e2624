"""EulerDiscreteScheduler and EulerAncestralDiscreteScheduler (diffusers 0.42), fused; plus
:class:`SigmaSchedulerBase`, what the k-diffusion family (Euler, Heun, LMS, KDPM2) shares.

The sigma schedulers work on the variance-exploding form x = x0 + sigma * eps; the model sees
x / sqrt(sigma^2 + 1) (``scale_model_input``). Their timesteps are floats (fractional with Karras
sigmas), their ``sigmas`` stay on the CPU as diffusers keeps them, and the step counter lives on
the host: the first ``step`` (or ``scale_model_input``) finds its place from the timestep, later
calls count, so ``step`` reads no device value.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import _rng
from ..ops import sampling_step
from ..ops.sampling_step import PM, PX
from ..ops.step_coefficients import _rows
from . import schedules, sigmas as S
from .scheduling_base import SchedulerBase, SchedulerOutput

SIGMA_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
EulerDiscreteSchedulerOutput = SchedulerOutput
EulerAncestralDiscreteSchedulerOutput = SchedulerOutput


def x0_and_derivative(sigma, prediction_type: str, sigma_hat=None) -> dict:
    """Columns (float64) of x0 = PX x + PM m and of the ODE derivative d = (x - x0) / sigma_hat,
    kept in the eps columns (EX x + EM m), for the sigma-form models of diffusers:

        epsilon: x0 = x - sigma_hat m                      d = m
        sample:  x0 = m                                    d = (x - m) / sigma_hat
        v:       x0 = x / (sigma^2 + 1) - m sigma / sqrt(sigma^2 + 1)    (sigma, not sigma_hat)

    ``sigma_hat`` (default ``sigma``) is Euler's churned noise level.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    sh = sigma if sigma_hat is None else torch.as_tensor(sigma_hat, dtype=torch.float64)
    zero, one = torch.zeros_like(sh), torch.ones_like(sh)
    if prediction_type == "epsilon":
        px, pm, ex, em = one, -sh, zero, one
    elif prediction_type in ("sample", "original_sample"):
        px, pm, ex, em = zero, one, 1 / sh, -1 / sh
    elif prediction_type == "v_prediction":
        s2 = sigma * sigma + 1
        px, pm = 1 / s2, -sigma / s2.sqrt()
        ex, em = (1 - px) / sh, -pm / sh
    else:
        raise ValueError(f"prediction_type given as {prediction_type} must be one of `epsilon`, or `v_prediction`")
    return {"PX": px, "PM": pm, "EX": ex, "EM": em}


def exp_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """diffusers' ``betas_for_alpha_bar(T, alpha_transform_type="exp")``: abar(u) = exp(-12 u),
    beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta), in float64 (cast to float32 by the caller)."""
    u = np.arange(num_train_timesteps + 1) / num_train_timesteps
    return np.array([min(1 - math.exp(u[i + 1] * -12.0) / math.exp(u[i] * -12.0), max_beta)
                     for i in range(num_train_timesteps)])


class SigmaSchedulerBase(SchedulerBase):
    """Shared by the sigma schedulers: beta schedule, the float timestep schedule and its tables,
    ``scale_model_input`` from a device table, sigma-based ``add_noise``; the step counter is
    :class:`SchedulerBase`'s, with diffusers' error for an integer (index) timestep.

    A subclass's ``set_timesteps`` ends with :meth:`_publish`; its ``step`` takes the step index
    (a host int) from :meth:`_begin_step` and advances ``_step_index`` when it is done.
    """

    def _init_sigma_schedule(self, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                             prediction_type, timestep_spacing, rescale_betas_zero_snr,
                             beta_schedules=SIGMA_BETA_SCHEDULES) -> None:
        if trained_betas is None and beta_schedule not in beta_schedules:
            raise NotImplementedError(f"{beta_schedule} is not implemented for {type(self).__name__} "
                                      f"(beta_schedule must be one of {beta_schedules} or trained_betas given)")
        if trained_betas is None and beta_schedule == "exp":
            trained_betas = exp_betas(num_train_timesteps)
        # diffusers checks prediction_type only in step; the base checks it at construction
        self._init_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                            "sample" if prediction_type == "original_sample" else prediction_type,
                            timestep_spacing, rescale_betas_zero_snr)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2.0**-24  # keeps the first sigma finite, as diffusers does
        self.is_scale_input_called = False

    # -- schedule ------------------------------------------------------------------------------

    def _spaced(self, num_inference_steps, num_train_timesteps=None):
        """(float32 timesteps, float64 sigmas by linear interpolation, float32 log_sigmas)."""
        T = num_train_timesteps or self.config.num_train_timesteps
        n = schedules.check_num_inference_steps(num_inference_steps, T)
        ts = S.spaced_sigma_timesteps(T, n, self.config.timestep_spacing, self.config.steps_offset)
        train = S.train_sigmas(self.alphas_cumprod)
        return ts, S.interpolate_sigmas(ts, train), np.log(train)

    def _custom_timesteps(self, timesteps) -> np.ndarray:
        """Custom descending ``timesteps`` as float32, refused with Karras / exponential / beta
        sigmas (which place their own), as diffusers refuses them."""
        for name in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if self.config[name]:
                raise ValueError(f"Cannot set `timesteps` with `config.{name} = True`.")
        ts = np.asarray(timesteps, dtype=np.float64).reshape(-1).astype(np.float32)
        if ts.size == 0:
            raise ValueError("timesteps must hold at least one value")
        return ts

    def _converted(self, sigmas: np.ndarray, timesteps: np.ndarray, log_sigmas: np.ndarray, **options):
        """(sigmas, timesteps) converted to the configured Karras / exponential / beta sigmas
        (:func:`fastgen.diffusion.sigmas.convert_sigmas` with ``options``), else as given."""
        cfg = self.config
        converted = S.convert_sigmas(sigmas, log_sigmas, len(timesteps), cfg.use_karras_sigmas,
                                     cfg.use_exponential_sigmas, cfg.use_beta_sigmas, **options)
        return (sigmas, timesteps) if converted is None else converted

    def _publish(self, timesteps: torch.Tensor, sigmas: torch.Tensor, scale: torch.Tensor, coefs: torch.Tensor,
                 device) -> None:
        """Publish ``timesteps`` (on ``device``; diffusers' dtype), ``sigmas`` (float32, CPU, as
        diffusers), the input scales 1 / sqrt(sigma_i^2 + 1) per step index (float32, computed as
        diffusers divides: by (sigma^2 + 1) ** 0.5 in float32) and the coefficient table."""
        self._set_schedule(timesteps, device)
        self.sigmas = sigmas
        self._host_sigmas = sigmas.tolist()  # Python floats: step reads them without touching a tensor
        self._scale = scale
        self._coefs = coefs
        self._num_rows = max(len(scale), len(coefs))
        self._device_cache = {}
        if device is not None:
            device = self.timesteps.device  # with its index: caches are keyed by the samples' device
            self._on("coefs", coefs, device)
            self._on("scale", scale, device)
            self._row_index(0, device)
        self._reset_noise_state(device)

    @property
    def init_noise_sigma(self):
        """The initial noise's standard deviation: max sigma (linspace / trailing), else
        sqrt(max sigma^2 + 1); a 0-d float32 CPU tensor, as diffusers."""
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    # -- step --------------------------------------------------------------------------------

    def _begin_step(self, timestep, num_steps: int) -> int:
        self._refuse_integer_timestep(timestep)  # the sigma schedulers' timesteps are floats
        return super()._begin_step(timestep, num_steps)

    def _scale_row(self, step_index: int) -> int:
        """The row of the input-scale table for this step (two-stage solvers pick by stage)."""
        return step_index

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """sample / sqrt(sigma^2 + 1) for the current step (the divisor read from a device table)."""
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        row = self._scale_row(self._step_index)
        if not 0 <= row < len(self._scale):
            raise ValueError(f"scale_model_input called at step index {self._step_index}, past the end of the "
                             f"schedule")
        key = ("scale_row", row, sample.device)
        divisor = self._device_cache.get(key)  # a 0-d view of the device table, cached: one op per call
        if divisor is None:
            divisor = self._device_cache[key] = self._on("scale", self._scale, sample.device)[row]
        self.is_scale_input_called = True
        return sample / divisor

    # -- noise ---------------------------------------------------------------------------------

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x0 + noise * sigma(t), sigma from this schedule (diffusers' k-diffusion forward noising).

        The step index of each timestep is found on the host as diffusers does (the timesteps are
        read there when begin_index is unset: one synchronisation, as in diffusers); with
        set_begin_index it is the current step (inpainting) or the begin index (img2img)."""
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        timesteps = torch.as_tensor(timesteps).reshape(-1)
        if self._begin_index is None:
            host = timesteps.detach().cpu()
            indices = [self.index_for_timestep(t) for t in host]
        elif self._step_index is not None:
            indices = [self._step_index] * timesteps.shape[0]
        else:
            indices = [self._begin_index] * timesteps.shape[0]
        sigma = sigmas[indices].flatten()
        while sigma.dim() < original_samples.dim():
            sigma = sigma.unsqueeze(-1)
        return original_samples + noise * sigma

    def get_velocity(self, sample, noise, timesteps):
        raise NotImplementedError(f"{type(self).__name__}.get_velocity is not implemented by fastgen")


class EulerDiscreteScheduler(SigmaSchedulerBase):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2), constructor
    arguments as diffusers'.

    Row i of the table steps sigma_i -> sigma_{i+1}: out = x + (sigma_{i+1} - sigma_hat) d with
    d = (x - x0) / sigma_hat (the eps columns), state = x0. Everything diffusers offers is
    supported: linear / log_linear interpolation, Karras / exponential / beta sigmas, sigma_min /
    sigma_max, final_sigmas_type, timestep_type continuous (with v_prediction: t = log(sigma) / 4),
    rescale_betas_zero_snr, custom ``sigmas=`` / ``timesteps=``.

    Churn (``s_churn > 0`` with sigma in [s_tmin, s_tmax]): diffusers adds noise first,
    x' = x + s_noise z sqrt(sigma_hat^2 - sigma^2), then steps from x'. ``prev_sample`` stays one
    fused call (x' is affine in x and z: the row's SZ column carries z); a table per (s_churn,
    s_tmin, s_tmax, s_noise) is built the first time ``step`` sees it. ``pred_original_sample``
    then depends on z, which the fused state cannot hold: it is computed in an extra pass of torch
    ops from (x, m, z), and z is materialised (with no generator on an accelerator: drawn from the
    Philox stream by its torch reference) instead of being drawn inside the kernel.
    """

    order = 1
    _steps_before_set_timesteps = True

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 interpolation_type: str = "linear", use_karras_sigmas: bool | None = False,
                 use_exponential_sigmas: bool | None = False, use_beta_sigmas: bool | None = False,
                 sigma_min: float | None = None, sigma_max: float | None = None, timestep_spacing: str = "linspace",
                 timestep_type: str = "discrete", steps_offset: int = 0, rescale_betas_zero_snr: bool = False,
                 final_sigmas_type: str = "zero"):
        self._register_config(locals())
        S.check_one_sigma_type(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        if interpolation_type not in S.INTERPOLATION_TYPES:
            raise ValueError(f"interpolation_type must be one of {S.INTERPOLATION_TYPES}, got {interpolation_type!r}")
        if timestep_type not in ("discrete", "continuous"):
            raise ValueError(f"timestep_type must be 'discrete' or 'continuous', got {timestep_type!r}")
        S.check_final_sigmas_type(final_sigmas_type)
        self._init_sigma_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                  prediction_type, timestep_spacing, rescale_betas_zero_snr)
        self.use_karras_sigmas = use_karras_sigmas
        self.use_exponential_sigmas = use_exponential_sigmas
        self.use_beta_sigmas = use_beta_sigmas
        train = torch.from_numpy(S.train_sigmas(self.alphas_cumprod)).flip(0)
        if timestep_type == "continuous" and prediction_type == "v_prediction":
            timesteps = 0.25 * train.log()
        else:
            timesteps = torch.linspace(num_train_timesteps - 1, 0, num_train_timesteps, dtype=torch.float64
                                       ).to(torch.float32)
        # diffusers' constructor publishes the training schedule, and its step runs on it
        self._publish_sigmas(timesteps, torch.cat([train, torch.zeros(1)]), None)

    def set_timesteps(self, num_inference_steps: int = None, device=None, timesteps=None, sigmas=None) -> None:
        """The schedule as diffusers builds it (see the class docstring), or custom descending
        ``timesteps`` (float) or ``sigmas`` (n + 1 values, the last the final sigma)."""
        cfg = self.config
        if timesteps is not None and sigmas is not None:
            raise ValueError("Only one of `timesteps` or `sigmas` should be set.")
        if num_inference_steps is None and timesteps is None and sigmas is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps` or `sigmas.")
        if num_inference_steps is not None and (timesteps is not None or sigmas is not None):
            raise ValueError("Can only pass one of `num_inference_steps` or `timesteps` or `sigmas`.")
        if timesteps is not None:
            timesteps = self._custom_timesteps(timesteps)
            if cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction":
                raise ValueError("Cannot set `timesteps` with `config.timestep_type = 'continuous'` and "
                                 "`config.prediction_type = 'v_prediction'`.")
        train = S.train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(train)
        if sigmas is not None:
            sig = np.asarray(sigmas, dtype=np.float64).reshape(-1).astype(np.float32)
            if sig.size < 2:
                raise ValueError(f"sigmas must hold at least 2 values (n steps and the final sigma), got {sig.size}")
            n = sig.size - 1
            ts = S.sigma_to_t(sig[:-1], log_sigmas)
        else:
            if timesteps is not None:
                ts, n = timesteps, timesteps.size
            else:
                n = schedules.check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
                ts = S.spaced_sigma_timesteps(cfg.num_train_timesteps, n, cfg.timestep_spacing, cfg.steps_offset)
            sig = S.interpolate_sigmas(ts, train, cfg.interpolation_type)
            sig, ts = self._converted(sig, ts, log_sigmas, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max)
            sig = np.concatenate([sig, [S.final_sigma(cfg.final_sigmas_type, self.alphas_cumprod)]]).astype(np.float32)
        self.num_inference_steps = n
        sig_t = torch.from_numpy(sig)
        if cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction":
            t_out = 0.25 * sig_t[:-1].log()
        else:
            t_out = torch.from_numpy(np.asarray(ts).astype(np.float32))
        self._publish_sigmas(t_out, sig_t, device)

    def _publish_sigmas(self, timesteps: torch.Tensor, sigmas: torch.Tensor, device) -> None:
        """Publish the schedule with the churn-free table (churn tables are built again on demand)."""
        self._tables = {}
        rows, _ = self._euler_rows(sigmas, np.zeros(len(sigmas) - 1), 1.0)
        self._publish(timesteps, sigmas, (sigmas**2 + 1) ** 0.5, rows, device)

    def _euler_rows(self, sigmas: torch.Tensor, gamma: np.ndarray, s_noise: float):
        """(rows, c): the table for churn factors ``gamma`` per step, and c = s_noise sqrt(sigma_hat^2
        - sigma^2), the scale of the churn noise z in x' = x + c z (float64 per step)."""
        s = sigmas.double()
        sigma, sigma_next = s[:-1], s[1:]
        sigma_hat = sigma * (torch.from_numpy(np.asarray(gamma, dtype=np.float64)) + 1)
        cols = x0_and_derivative(sigma, self.config.prediction_type, sigma_hat)
        dt = sigma_next - sigma_hat
        c = s_noise * (sigma_hat**2 - sigma**2).clamp_min(0).sqrt()
        # out = x' + dt d(x', m) = (1 + dt EX) x' + dt EM m: z enters through SZ = c (1 + dt EX)
        return _rows(sigma.shape, None, **cols, OX=1.0, OE=dt, SZ=c * (1 + dt * cols["EX"]), S0=1.0), c

    def _churn_table(self, s_churn, s_tmin, s_tmax, s_noise):
        """(gamma per step, rows, c per step) for these churn arguments, built once per tuple."""
        key = (float(s_churn), float(s_tmin), float(s_tmax), float(s_noise))
        if key not in self._tables:
            sig = self.sigmas[:-1].numpy()
            # diffusers compares the float32 sigma with the bounds in float32
            inside = (np.float32(s_tmin) <= sig) & (sig <= np.float32(s_tmax))
            gamma = np.where(inside, min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1), 0.0)
            rows, c = self._euler_rows(self.sigmas, gamma, float(s_noise))
            self._tables[key] = (gamma, rows, c)
        return key, self._tables[key]

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None,
             return_dict: bool = True):
        """One Euler step sigma_i -> sigma_{i+1} (one fused call). Returns
        :class:`SchedulerOutput` (``prev_sample``, ``pred_original_sample``) or a tuple."""
        i = self._begin_step(timestep, len(self._coefs))
        device = sample.device
        pred = self.config.prediction_type
        x0_dtype = model_output.dtype if pred in ("sample", "original_sample") else torch.float32
        churned = False
        if s_churn > 0:
            key, (gamma, rows, c) = self._churn_table(s_churn, s_tmin, s_tmax, s_noise)
            churned = gamma[i] > 0
        index = self._row_index(i, device)
        want_x0 = self.compute_pred_original_sample
        x0 = None
        if churned:
            coefs = self._on(("churn",) + key, rows, device)
            z = self._churn_noise(model_output, generator)
            out, _ = sampling_step(sample, model_output, coefs, index, noise=z, impl=self.impl)
            if want_x0:
                row = rows[i].double()
                x0 = self._churned_x0(sample, model_output, z, float(c[i]), float(row[PX]), float(row[PM]),
                                      x0_dtype)
        else:
            coefs = self._on("coefs", self._coefs, device)
            out, state = sampling_step(sample, model_output, coefs, index, return_state=want_x0, impl=self.impl)
            if want_x0:
                x0 = state.to(x0_dtype)
        out = out.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return out, x0
        return SchedulerOutput(out, x0)

    def _churn_noise(self, model_output, generator) -> torch.Tensor:
        """The churn's z, materialised (x0 needs it): from ``generator`` as diffusers draws it, else
        torch.randn on CPU, else the Philox stream (drawn here by the reference generator)."""
        args = self._noise_args(model_output, generator, None, model_output.dtype)
        if "noise" in args:
            return args["noise"]
        z = _rng.philox_normal_ref(args["seed"], model_output.numel()).reshape(model_output.shape)
        self._after_noise(args, model_output.numel())
        return z.to(model_output.dtype)

    @staticmethod
    def _churned_x0(sample, model_output, z, c, px, pm, dtype):
        """diffusers' x0 after churn, PX (x + c z) + PM m, in torch ops (the documented extra pass);
        the scalars come from the host table, so nothing is read from the device."""
        if px == 0.0 and pm == 1.0:  # a "sample" model: x0 is the model output
            return model_output.to(dtype)
        xs = sample.float() + c * z.float()
        return (px * xs + pm * model_output.float()).to(dtype)


class EulerAncestralDiscreteScheduler(SigmaSchedulerBase):
    """Ancestral Euler (k-diffusion's sample_euler_ancestral), constructor arguments as diffusers'.

    Row i: sigma_up = sqrt(sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2), sigma_down =
    sqrt(sigma_{i+1}^2 - sigma_up^2); out = x + (sigma_down - sigma_i) d + sigma_up z, state = x0.
    Noise is drawn at every step (also the last, where sigma_up = 0), in model_output's dtype,
    as diffusers draws it. prediction_type "sample" raises NotImplementedError in step (as diffusers).
    """

    order = 1
    _steps_before_set_timesteps = True

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 timestep_spacing: str = "linspace", steps_offset: int = 0, rescale_betas_zero_snr: bool = False):
        self._register_config(locals())
        self._init_sigma_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                  prediction_type, timestep_spacing, rescale_betas_zero_snr)
        # diffusers' constructor publishes the training schedule (float64 timesteps), and its step runs on it
        train = torch.from_numpy(S.train_sigmas(self.alphas_cumprod)).flip(0)
        timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].copy())
        self._publish_sigmas(timesteps, torch.cat([train, torch.zeros(1)]), None)

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Timesteps as diffusers spaces them, sigmas interpolated linearly, final sigma 0."""
        ts, sig, _ = self._spaced(num_inference_steps)
        self.num_inference_steps = len(ts)
        self._publish_sigmas(torch.from_numpy(ts), torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32)),
                             device)

    def _publish_sigmas(self, timesteps: torch.Tensor, sigmas: torch.Tensor, device) -> None:
        """Publish the schedule with its table: row i steps sigma_i -> sigma_{i+1} (float32 sigmas)."""
        s = sigmas.double()
        s_from, s_to = s[:-1], s[1:]
        up = (s_to**2 * (s_from**2 - s_to**2) / s_from**2).sqrt()
        down = (s_to**2 - up**2).clamp_min(0).sqrt()
        pred = self.config.prediction_type
        cols = x0_and_derivative(s_from, "epsilon" if pred == "sample" else pred)
        coefs = _rows(s_from.shape, None, **cols, OX=1.0, OE=down - s_from, SZ=up, S0=1.0)
        self._publish(timesteps, sigmas, (sigmas**2 + 1) ** 0.5, coefs, device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """One ancestral step sigma_i -> sigma_{i+1} (one fused call, noise drawn every step).
        Returns :class:`SchedulerOutput` (``prev_sample``, ``pred_original_sample``) or a tuple."""
        i = self._begin_step(timestep, len(self._coefs))
        if self.config.prediction_type == "sample":
            raise NotImplementedError("prediction_type not implemented yet: sample")
        device = sample.device
        coefs, index = self._on("coefs", self._coefs, device), self._row_index(i, device)
        noise_args = self._noise_args(model_output, generator, None, model_output.dtype)
        out, x0 = sampling_step(sample, model_output, coefs, index, return_state=self.compute_pred_original_sample,
                                impl=self.impl, **noise_args)
        self._after_noise(noise_args, sample.numel())
        out = out.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return out, x0
        return SchedulerOutput(out, x0)
