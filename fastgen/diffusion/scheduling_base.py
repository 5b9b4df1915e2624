"""What the drop-in schedulers share: config, outputs, device tables and the noise source.

A scheduler keeps its coefficient table (:mod:`fastgen.ops.step_coefficients`) on the samples'
device and hands ``step`` to the fused :func:`fastgen.ops.sampling_step`, so a step reads its
coefficients on the device: no host-device synchronisation.

Noise, per step that draws it (only where diffusers draws, so generator streams stay aligned):
``variance_noise`` if given; else from ``generator`` exactly as diffusers' ``randn_tensor`` draws
it; else ``torch.randn`` on CPU (see :attr:`SchedulerBase.cpu_noise`); else Philox inside the kernel from the device state
``[seed, offset]`` (:attr:`noise_state`), whose offset the scheduler advances on the device after
each noisy step (an in-place add, so a captured CUDA graph draws fresh noise on every replay).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import _rng
from ..ops import add_noise as _add_noise_op
from ..ops import sampling_step
from ..ops.sampling_step import PM, PX
from ..ops.step_coefficients import PREDICTION_TYPES
from . import schedules
from .._layout import per_sample
from .scheduler_config import _SCHEDULERS, ConfigurableScheduler, SchedulerConfig, diffusers_bases

__all__ = ["SchedulerBase", "SchedulerOutput", "SchedulerConfig"]


class SchedulerOutput:
    """``prev_sample`` (x_{t-1}) and, for DDPM/DDIM, ``pred_original_sample`` (x0). Indexes like
    diffusers' outputs: ``out[0]``, ``out["prev_sample"]``, ``out.to_tuple()``."""

    def __init__(self, prev_sample: torch.Tensor, pred_original_sample=None, *, has_x0: bool = False):
        self.prev_sample = prev_sample
        self.pred_original_sample = pred_original_sample
        self._has_x0 = has_x0 or pred_original_sample is not None

    def keys(self):
        return ("prev_sample", "pred_original_sample") if self._has_x0 else ("prev_sample",)

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __len__(self):
        return len(self.keys())

    def __iter__(self):
        return iter(self.keys())

    def __repr__(self):
        return f"{type(self).__name__}(prev_sample={tuple(self.prev_sample.shape)}, keys={self.keys()})"


class SchedulerBase(ConfigurableScheduler, *diffusers_bases()):
    """Device caches, the noise source and the fused step shared by the schedulers; configuration
    as diffusers' ConfigMixin (:mod:`fastgen.diffusion.scheduler_config`). Where diffusers is
    installed this is also a diffusers ``SchedulerMixin``, so pipelines accept and save it."""

    order = 1
    init_noise_sigma = 1.0
    impl = "auto"  # implementation of the fused step (fastgen.set_impl / FASTGEN_IMPL apply to "auto")
    # Noise with no generator on CPU: "randn" draws torch.randn from torch's default generator (as
    # diffusers does, so torch.manual_seed reproduces diffusers); "philox" uses the in-kernel stream
    # of the accelerators, so one seed gives the same samples on CPU and GPU (to float rounding).
    cpu_noise = "randn"
    # pred_original_sample costs a float32 write pass per step; fd.sample, which never reads it,
    # turns it off on its private copy. Off, steps return pred_original_sample=None.
    compute_pred_original_sample = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("fastgen.diffusion.scheduling_"):
            # saved pipelines name the class by module: name the package, which exports it, so
            # moving a scheduler between files never breaks a saved model_index.json
            cls.__module__ = "fastgen.diffusion"
        _SCHEDULERS.append(cls)

    def _register_config(self, args: dict) -> None:
        super()._register_config(args)
        self._device_cache: dict = {}
        self._noise_seed: int | None = None  # pinned by set_noise_seed
        self._noise_state: torch.Tensor | None = None
        self.num_inference_steps = None

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The sample unchanged: these schedulers feed the model x_t as it is."""
        return sample

    # -- what every scheduler's constructor and step share ------------------------------------

    def _init_schedule(self, num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str,
                       trained_betas, prediction_type: str, timestep_spacing: str,
                       rescale_betas_zero_snr: bool) -> None:
        """Check the common configuration and build ``betas``, ``alphas`` and ``alphas_cumprod`` (host)."""
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        schedules.check_spacing(timestep_spacing)
        self.betas = schedules.make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        if rescale_betas_zero_snr:
            self.betas = schedules.rescale_zero_terminal_snr(self.betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = schedules.alphas_cumprod_of(self.betas)

    def _timestep_index(self, timestep, device: torch.device) -> tuple[torch.Tensor, int | None]:
        """(row index on ``device``, the timestep as an int where it is known on the host, else None).

        An int or a one-element CPU tensor is range-checked and turned into a cached device index;
        any other integer tensor is the index itself (no host synchronisation). A bool or a
        floating timestep is a TypeError (diffusers fails on them too, less clearly)."""
        if isinstance(timestep, (bool, np.bool_)) or (isinstance(timestep, torch.Tensor)
                                                      and (timestep.dtype == torch.bool or timestep.is_floating_point()
                                                           or timestep.is_complex())):
            what = timestep.dtype if isinstance(timestep, torch.Tensor) else type(timestep).__name__
            raise TypeError(f"timestep must be an int or an integer tensor (a value of scheduler.timesteps), got {what}")
        if isinstance(timestep, (int, np.integer)) or (isinstance(timestep, torch.Tensor)
                                                       and timestep.device.type == "cpu" and timestep.numel() == 1):
            t = int(timestep)
            if not 0 <= t < self._num_rows:
                raise ValueError(f"timestep must lie in [0, {self._num_rows - 1}], got {t}")
            return self._row_index(t, device), t
        if isinstance(timestep, torch.Tensor):
            return timestep, None
        raise TypeError(f"timestep must be an int or an integer tensor, got {type(timestep).__name__}")

    def _fused_step(self, model_output: torch.Tensor, sample: torch.Tensor, coefs: torch.Tensor,
                    index: torch.Tensor, noise_args: dict, return_dict: bool):
        """The fused update with this scheduler's clipping, then (prev_sample, pred_original_sample).
        x0 is written by the same kernel pass unless ``compute_pred_original_sample`` is off."""
        clip = self.config.clip_sample_range if self.config.clip_sample else None
        want_x0 = self.compute_pred_original_sample
        out, x0 = sampling_step(sample, model_output, coefs, index, clip_range=clip, return_x0=want_x0,
                                impl=self.impl, **noise_args)
        self._after_noise(noise_args, sample.numel())
        if x0 is not None:
            x0 = x0.to(model_output.dtype)
        if not return_dict:
            return out, x0
        return SchedulerOutput(out, x0, has_x0=True)

    # -- device caches -------------------------------------------------------------------------

    def _on(self, name: str, host: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``host`` copied to ``device`` once and cached under ``name`` (dropped by set_timesteps)."""
        key = (name, device)
        cached = self._device_cache.get(key)
        if cached is None:
            cached = host if host.device == device else host.to(device)
            self._device_cache[key] = cached
        return cached

    def _row_index(self, row: int, device: torch.device) -> torch.Tensor:
        """A 0-d int64 device tensor holding ``row``: a view into a cached arange, so using it in a
        step costs no host-to-device copy (and a captured CUDA graph reads live memory)."""
        rows = self._device_cache.get(("rows", device))
        if rows is None:
            rows = self._on("rows", torch.arange(self._num_rows, dtype=torch.int64), device)
        return rows[row]

    def _set_schedule(self, host_timesteps, device) -> None:
        """Publish the schedule: ``timesteps`` (int64, on ``device``) and its host copy."""
        self._host_timesteps = host_timesteps
        self.timesteps = torch.from_numpy(host_timesteps.copy()).to(device)
        self._schedule_tensor = self.timesteps

    def _scheduled_value(self, timestep: torch.Tensor) -> int | None:
        """The value of a one-element tensor that is a view into the ``timesteps`` set_timesteps
        made (``for t in scheduler.timesteps``), read from the host copy: its storage position
        names it, so an accelerator tensor is never read. None for any other tensor."""
        ts = getattr(self, "_schedule_tensor", None)
        if (ts is None or timestep.numel() != 1 or timestep.device != ts.device
                or timestep.untyped_storage().data_ptr() != ts.untyped_storage().data_ptr()):
            return None
        position = timestep.storage_offset() - ts.storage_offset()
        return int(self._host_timesteps[position]) if 0 <= position < len(self._host_timesteps) else None

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """Forward noising x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (:func:`fastgen.ops.add_noise`)."""
        table = self._on("alphas_cumprod", self.alphas_cumprod, original_samples.device)
        return _add_noise_op(original_samples, timesteps, table, noise, impl=self.impl)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """v = sqrt(abar_t) noise - sqrt(1 - abar_t) sample (the v_prediction target)."""
        table = self._on("alphas_cumprod", self.alphas_cumprod, sample.device)
        t = torch.as_tensor(timesteps, device=sample.device).reshape(-1)
        abar = per_sample(table[t.long()].expand(sample.shape[0]), sample)
        return (abar.sqrt() * noise.float() - (1.0 - abar).sqrt() * sample.float()).to(sample.dtype)

    # -- noise ---------------------------------------------------------------------------------

    def set_noise_seed(self, seed: int | None) -> None:
        """Pin the seed of the in-kernel noise (used with no generator on accelerators) and restart
        its stream; ``set_timesteps`` restarts it from the same seed. None unpins: each
        ``set_timesteps`` then draws a seed from torch's default generator."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise ValueError(f"seed must be None or an int in [0, 2**63), got {seed!r}")
        self._noise_seed = seed
        self._reset_noise_state()

    def _reset_noise_state(self, device=None) -> None:
        """Restart the Philox stream: in place where a state exists (graphs keep their pointer)."""
        state = self._noise_state
        if state is None and (device is None or (torch.device(device).type == "cpu" and self.cpu_noise == "randn")):
            return  # created on first use: CPU steps draw with torch.randn, and drawing a seed here
            # would shift torch's default generator against diffusers
        seed = _rng.new_seed() if self._noise_seed is None else self._noise_seed
        fresh = torch.tensor([seed, 0], dtype=torch.int64)
        if state is None:
            self._noise_state = fresh.to(device)
        else:
            state.copy_(fresh)

    @property
    def noise_state(self) -> torch.Tensor | None:
        """The int64 Philox state ``[seed, offset]`` on the device (None until first needed)."""
        return self._noise_state

    def _noise_args(self, model_output: torch.Tensor, generator, variance_noise, dtype: torch.dtype) -> dict:
        """The noise source of a step that draws noise, as sampling_step keyword arguments."""
        if variance_noise is not None:
            if generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            return {"noise": variance_noise}
        if generator is not None:
            return {"noise": _rng.randn_like_diffusers(model_output.shape, generator, model_output.device, dtype)}
        if model_output.device.type == "cpu" and self.cpu_noise == "randn":
            return {"noise": torch.randn(model_output.shape, dtype=dtype)}
        state = self._noise_state
        if state is None or state.device != model_output.device:
            self._noise_state = None
            self._reset_noise_state(model_output.device)
        return {"seed": self._noise_state}

    def advance_noise(self, numel: int) -> None:
        """Move the Philox offset past ``numel`` draws, on the device (one in-place add, no sync)."""
        self._noise_state.narrow(0, 1, 1).add_(numel)

    def _after_noise(self, args: dict, numel: int) -> None:
        if "seed" in args:
            self.advance_noise(numel)

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__}.step called before set_timesteps(num_inference_steps)")
