"""FlowMatchEulerDiscreteScheduler: diffusers' (0.42) flow-matching Euler sampler (SD3, Flux), fused.

Also :class:`SigmaNoising`, the forward noising of the sigma-indexed schedulers (used by the EDM
pair too): each timestep's sigma looked up as diffusers looks it up, without a host read.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..ops import sampling_step
from ..ops.step_coefficients import _rows
from . import sigmas as sigma_schedules
from .scheduling_base import SchedulerBase, SchedulerOutput

logger = logging.getLogger("fastgen")

TIME_SHIFT_TYPES = ("exponential", "linear")


class FlowMatchEulerDiscreteSchedulerOutput(SchedulerOutput):
    """``prev_sample``; indexes like diffusers' output (``out[0]``, ``out["prev_sample"]``)."""

    _fields = ("prev_sample",)


class SigmaNoising:
    """What flow matching's ``scale_noise`` and the EDM schedulers' ``add_noise`` share: the sigma
    of each timestep (float32 ``timesteps``, ``_host_sigmas``), without a host read."""

    def _sigma_index_of(self, timesteps, device: torch.device) -> torch.Tensor:
        """Per-sample indices into ``sigmas`` for ``timesteps`` as diffusers' add_noise picks them:
        the begin / current step index when set, else each timestep's position. Host-known values
        are looked up on the host; device values on the device (no sync; an absent value gives
        index -1, which the callers turn into NaN)."""
        t = timesteps if isinstance(timesteps, torch.Tensor) else torch.as_tensor(timesteps, dtype=torch.float32)
        t = t.reshape(-1)
        if self._begin_index is not None:
            at = self._step_index if self._step_index is not None else self._begin_index
            return torch.full((t.numel(),), at, dtype=torch.int64).to(device)
        if t.device.type == "cpu":
            return torch.tensor([self.index_for_timestep(float(v)) for v in t.tolist()], dtype=torch.int64).to(device)
        schedule = self._on("schedule", torch.from_numpy(self._host_timesteps.copy()), t.device)
        eq = schedule[None, :] == t.to(torch.float32)[:, None]
        count = eq.sum(1, keepdim=True)
        pick = eq & (eq.cumsum(1) == torch.where(count > 1, 2, 1))
        index = torch.where(count[:, 0] > 0, pick.to(torch.int64).argmax(1), -1)
        if self._absent_timestep_is_last:
            index = torch.where(index < 0, len(self._host_timesteps) - 1, index)
        return index.to(device)

    def _sigmas_at(self, timesteps, sample: torch.Tensor) -> torch.Tensor:
        """sigma for each sample of ``sample`` at ``timesteps``, broadcastable against it, sample's dtype."""
        index = self._sigma_index_of(timesteps, sample.device)
        table = self._on("sigmas", self._host_sigmas, sample.device).to(sample.dtype)
        sigma = torch.where(index >= 0, table[index.clamp_min(0)], torch.full_like(table[:1], float("nan")))
        return sigma.reshape(-1, *([1] * (sample.dim() - 1)))


class FlowMatchEulerDiscreteScheduler(SigmaNoising, SchedulerBase):
    """Euler steps of a rectified-flow ODE x_sigma = (1 - sigma) x0 + sigma noise, constructor
    arguments as diffusers'.

    A step is x' = x + (sigma_next - sigma) v (one fused pass, row i of the table: OX = 1, OE = dt);
    with ``stochastic_sampling`` it is x' = (1 - sigma_next)(x - sigma v) + sigma_next z, z drawn
    every step in float32 as diffusers draws it. ``per_token_timesteps`` (a sigma per token) is
    computed with plain torch ops, not fused: its coefficients vary inside a sample, which one row
    per sample cannot hold. The step's output dtype is the model output's, as diffusers'.
    """

    _compatibles = ()
    order = 1

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, use_dynamic_shifting: bool = False,
                 base_shift: float | None = 0.5, max_shift: float | None = 1.15, base_image_seq_len: int = 256,
                 max_image_seq_len: int = 4096, invert_sigmas: bool = False, shift_terminal: float | None = None,
                 use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
                 use_beta_sigmas: bool = False, time_shift_type: str = "exponential",
                 stochastic_sampling: bool = False):
        self._register_config(locals())
        if use_beta_sigmas:
            try:
                import scipy.stats  # noqa: F401
            except ImportError as e:
                raise ImportError("use_beta_sigmas=True needs scipy; install it with `pip install scipy`") from e
        sigma_schedules.check_one_sigma_type(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        if time_shift_type not in TIME_SHIFT_TYPES:
            raise ValueError(f"time_shift_type must be one of {TIME_SHIFT_TYPES}, got {time_shift_type!r}")
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive int, got {num_train_timesteps!r}")
        # the training schedule, in float32 torch arithmetic as diffusers computes it
        ts = torch.from_numpy(np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy())
        sig = ts / num_train_timesteps
        if not use_dynamic_shifting:
            sig = shift * sig / (1 + (shift - 1) * sig)
        self._shift = shift
        self._set_sigmas(sig, sig * num_train_timesteps, None)
        self.num_inference_steps = None
        self.sigma_min = self.sigmas[-1].item()
        self.sigma_max = self.sigmas[0].item()

    @property
    def shift(self) -> float:
        """The shift set_timesteps applies (the config's, or ``set_shift``'s)."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = shift

    def _set_sigmas(self, sig: torch.Tensor, timesteps: torch.Tensor, device) -> None:
        """Publish float32 ``sigmas`` / ``timesteps`` (host tensors) and build the step table."""
        self._host_sigmas = sig
        self.sigmas = sig if device is None else sig.to(device)
        self._device_cache = {}
        self._set_schedule(timesteps.to(torch.float32), device)
        s = sig.double()
        n = len(s) - 1
        if n >= 1:
            cur, nxt = s[:-1], s[1:]
            if self.config.stochastic_sampling:
                self._coefs = _rows((n,), None, PX=1.0, PM=-cur, O0=1.0 - nxt, SZ=nxt)
            else:
                self._coefs = _rows((n,), None, OX=1.0, EM=1.0, OE=nxt - cur)
        else:
            self._coefs = _rows((1,), None)
        self._num_rows = self._coefs.shape[0]

    # -- schedule ----------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, mu: float | None = None,
                      timesteps=None) -> None:
        """The inference schedule as diffusers builds it: n timesteps evenly spaced between the
        training schedule's ends (or the given ``sigmas`` / ``timesteps``), shifted (``shift``, or
        with ``use_dynamic_shifting`` the time shift by ``mu``), stretched to ``shift_terminal``,
        converted to karras / exponential / beta sigmas, inverted; then a final 0 (1 inverted)."""
        cfg = self.config
        T = cfg.num_train_timesteps
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("`mu` must be passed when `use_dynamic_shifting` is set to be `True`")
        if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
            raise ValueError("`sigmas` and `timesteps` should have the same length")
        if num_inference_steps is not None:
            if (sigmas is not None and len(sigmas) != num_inference_steps) or (
                    timesteps is not None and len(timesteps) != num_inference_steps):
                raise ValueError("`sigmas` and `timesteps` should have the same length as num_inference_steps, if "
                                 "`num_inference_steps` is provided")
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                    or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        elif sigmas is None and timesteps is None:
            raise ValueError("pass num_inference_steps, sigmas or timesteps")
        else:
            num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)
        n = int(num_inference_steps)
        given_timesteps = timesteps is not None
        if given_timesteps and sigmas is None:
            logger.warning("`timesteps` were passed without `sigmas`. The timesteps are used as given, while the "
                           "sigmas derived from them go through the scheduler's shifting, so the two may not be "
                           "consistent. Pass `sigmas` to get a shifted schedule, or pass both `sigmas` and "
                           "`timesteps` to control them separately.")
        if given_timesteps:
            timesteps = np.array(timesteps).astype(np.float32)
        if sigmas is None:
            if timesteps is None:
                timesteps = np.linspace(self.sigma_max * T, self.sigma_min * T, n)
            sig = timesteps / T
        else:
            sig = np.array(sigmas).astype(np.float32)
            n = len(sig)
        if cfg.use_dynamic_shifting:
            sig = sigma_schedules.time_shift(cfg.time_shift_type, mu, 1.0, sig)
        else:
            sig = self.shift * sig / (1 + (self.shift - 1) * sig)
        if cfg.shift_terminal:
            sig = self.stretch_shift_to_terminal(sig)
        ends = (cfg.get("sigma_min"), cfg.get("sigma_max"))  # hidden config keys, as diffusers reads them
        if cfg.use_karras_sigmas:
            sig = sigma_schedules.karras_sigmas(sig, n, *ends)
        elif cfg.use_exponential_sigmas:
            sig = sigma_schedules.exponential_sigmas(sig, n, *ends)
        elif cfg.use_beta_sigmas:
            sig = sigma_schedules.beta_sigmas(sig, n, *ends)
        sig = torch.from_numpy(np.asarray(sig)).to(torch.float32)
        ts = torch.from_numpy(timesteps) if given_timesteps else sig * T
        if cfg.invert_sigmas:
            sig = 1.0 - sig
            ts = sig * T
            sig = torch.cat([sig, torch.ones(1)])
        else:
            sig = torch.cat([sig, torch.zeros(1)])
        self.num_inference_steps = n
        self._set_sigmas(sig, ts, device)
        if device is not None:
            device = self.timesteps.device  # with its index: caches are keyed by the samples' device
            self._on("coefs", self._coefs, device)
            self._row_index(0, device)
        self._reset_noise_state(device)

    # -- step --------------------------------------------------------------------------------

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None,
             per_token_timesteps: torch.Tensor | None = None, return_dict: bool = True):
        """x_sigma -> x_sigma_next. ``timestep``: a value of ``timesteps`` (an integer index is an
        error, as in diffusers). ``s_churn`` .. ``s_noise`` are accepted and unused, as in diffusers.
        Returns :class:`FlowMatchEulerDiscreteSchedulerOutput` or a 1-tuple."""
        self._refuse_integer_timestep(timestep)
        # the per-token step reads no row of the table, so it is not bound by the schedule's length
        i = self._begin_step(timestep, self.num_inference_steps if per_token_timesteps is None else None)
        device = sample.device
        noise_args = {}
        if self.config.stochastic_sampling:  # diffusers draws every step, float32 (its sample is cast)
            noise_args = self._noise_args(sample, generator, None, torch.float32)
        if per_token_timesteps is not None:
            out = self._per_token_step(model_output, sample, per_token_timesteps, noise_args)
        else:
            out, _ = sampling_step(sample, model_output, self._on("coefs", self._coefs, device),
                                   self._row_index(i, device), impl=self.impl, **noise_args)
            out = out.to(model_output.dtype)
        self._after_noise(noise_args, sample.numel())
        self._step_index += 1
        if not return_dict:
            return (out,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=out)

    def _per_token_step(self, model_output, sample, per_token_timesteps, noise_args):
        """diffusers' per-token step, in plain torch ops (float32, on the device, no sync): each token
        steps from its own sigma to the largest scheduled sigma below it."""
        sample = sample.to(torch.float32)
        per_token_sigmas = per_token_timesteps / self.config.num_train_timesteps
        sig = self._on("sigmas", self._host_sigmas, sample.device)[:, None, None]
        lower = (sig < per_token_sigmas[None] - 1e-6) * sig
        current, nxt = per_token_sigmas[..., None], lower.max(dim=0).values[..., None]
        if not self.config.stochastic_sampling:
            return sample + (current - nxt) * model_output
        if "noise" in noise_args:
            z = noise_args["noise"]
        else:
            from .._rng import philox_normal_ref
            z = philox_normal_ref(noise_args["seed"], sample.numel()).view(sample.shape)
        return (1.0 - nxt) * (sample - current * model_output) + nxt * z

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Forward process of flow matching: sigma noise + (1 - sigma) sample, sigma looked up from
        ``timestep`` (one value per sample) as diffusers does."""
        if noise is None:
            raise ValueError("scale_noise needs the noise tensor (noise=None)")
        sigma = self._sigmas_at(timestep, sample)
        return sigma * noise + (1.0 - sigma) * sample

    @property
    def add_noise(self):
        raise AttributeError("FlowMatchEulerDiscreteScheduler has no add_noise (as in diffusers): use scale_noise")

    @property
    def get_velocity(self):
        raise AttributeError("FlowMatchEulerDiscreteScheduler has no get_velocity (as in diffusers)")

    def time_shift(self, mu: float, sigma: float, t):
        """diffusers' time shift (exponential or linear, per the config)."""
        return sigma_schedules.time_shift(self.config.time_shift_type, mu, sigma, t)

    def stretch_shift_to_terminal(self, t):
        """Stretch t so that its last value becomes ``shift_terminal``."""
        return sigma_schedules.stretch_to_terminal(t, self.config.shift_terminal)
