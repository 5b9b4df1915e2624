"""What the drop-in schedulers share: config, outputs, device tables and the noise source.

A scheduler keeps its coefficient table (:mod:`fastgen.ops.step_coefficients`) on the samples'
device and hands ``step`` to the fused :func:`fastgen.ops.sampling_step`, so a step reads its
coefficients on the device: no host-device synchronisation.

Noise, per step that draws it (only where diffusers draws, so generator streams stay aligned):
``variance_noise`` if given; else from ``generator`` exactly as diffusers' ``randn_tensor`` draws
it; else ``torch.randn`` on CPU (see :attr:`SchedulerBase.cpu_noise`); else Philox inside the
kernel from the device state ``[seed, offset]`` (:attr:`noise_state`), whose offset the scheduler
advances on the device after each noisy step (an in-place add, so a captured CUDA graph draws
fresh noise on every replay).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import _rng
from ..ops import add_noise as _add_noise_op
from ..ops import sampling_step
from ..ops.step_coefficients import PREDICTION_TYPES
from . import schedules
from .._layout import per_sample
from .scheduler_config import _SCHEDULERS, ConfigurableScheduler, SchedulerConfig, diffusers_bases

__all__ = ["SchedulerBase", "SchedulerOutput", "SchedulerConfig"]


class SchedulerOutput:
    """A step's outputs, indexed as diffusers' ``BaseOutput``: attributes, ``out[0]``,
    ``out["prev_sample"]``, ``to_tuple()``, ``keys()``, ``len(out)``; a field that is None is not a
    key (as in diffusers). Fields here: ``prev_sample`` (x_{t-1}) and ``pred_original_sample`` (x0);
    a scheduler whose step returns others names them in a subclass's ``_fields``."""

    _fields: tuple[str, ...] = ("prev_sample", "pred_original_sample")

    def __init__(self, *args, **kwargs):
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(self._fields)} fields, got {len(args)}")
        values = dict(zip(self._fields, args))
        for name, value in kwargs.items():
            if name not in self._fields or name in values:
                raise TypeError(f"{type(self).__name__} got an unexpected or repeated field {name!r}")
            values[name] = value
        for name in self._fields:
            setattr(self, name, values.get(name))

    def keys(self) -> tuple[str, ...]:
        return tuple(f for f in self._fields if getattr(self, f) is not None)

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
        shapes = ", ".join(f"{k}={tuple(getattr(self, k).shape)}" for k in self.keys())
        return f"{type(self).__name__}({shapes})"


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
        if not cls.__name__.startswith("_") and not cls.__name__.endswith("Base"):  # not a shared base
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
        any other integer tensor is the index itself (no host synchronisation)."""
        _require_integer_timestep(timestep)
        if isinstance(timestep, torch.Tensor) and torch.compiler.is_compiling():
            return timestep, None  # a traced value: index on the device (the kernels clamp it into the table)
        if isinstance(timestep, (int, np.integer)) or (isinstance(timestep, torch.Tensor)
                                                       and timestep.device.type == "cpu" and timestep.numel() == 1):
            t = int(timestep)
            if not 0 <= t < self._num_rows:
                raise ValueError(f"timestep must lie in [0, {self._num_rows - 1}], got {t}")
            return self._row_index(t, device), t
        return timestep, None

    def _fused_step(self, model_output: torch.Tensor, sample: torch.Tensor, coefs: torch.Tensor,
                    index: torch.Tensor, noise_args: dict, return_dict: bool):
        """The fused update with this scheduler's clipping, then (prev_sample, pred_original_sample).
        x0 is written by the same kernel pass unless ``compute_pred_original_sample`` is off."""
        clip = self.config.clip_sample_range if self.config.clip_sample else None
        want_x0 = self.compute_pred_original_sample
        out, x0 = sampling_step(sample, model_output, coefs, index, clip_range=clip, return_state=want_x0,
                                impl=self.impl, **noise_args)
        self._after_noise(noise_args, sample.numel())
        if x0 is not None:
            x0 = x0.to(model_output.dtype)
        if not return_dict:
            return out, x0
        return SchedulerOutput(out, x0)

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
        key = ("row", row, device)
        view = self._device_cache.get(key)  # cached: a step then creates no index tensor
        if view is None:
            rows = self._device_cache.get(("rows", device))
            if rows is None:
                rows = self._on("rows", torch.arange(self._num_rows, dtype=torch.int64), device)
            view = self._device_cache[key] = rows[row]
        return view

    def _set_schedule(self, timesteps, device) -> None:
        """Publish the schedule ``timesteps`` (a host array or tensor; its dtype is kept) on
        ``device``, with its host copy and the position of each value that
        :meth:`index_for_timestep` reads (built here, on the host, so that a step under
        torch.compile only reads a dict). The step counter restarts, as diffusers' does."""
        host = torch.as_tensor(timesteps)
        self._host_timesteps = host.numpy().copy()
        self.timesteps = host.clone().to(device)
        self._schedule_tensor = self.timesteps
        self._timestep_dtype = host.dtype
        self._positions = _positions_of(self._host_timesteps.tolist())
        self._step_index = None
        self._begin_index = None

    def _scheduled_value(self, timestep: torch.Tensor) -> int | float | None:
        """The value of a one-element tensor that is a view into the ``timesteps`` set_timesteps
        made (``for t in scheduler.timesteps``), read from the host copy: its storage position
        names it, so an accelerator tensor is never read. None for any other tensor."""
        ts = getattr(self, "_schedule_tensor", None)
        if (ts is None or timestep.numel() != 1 or timestep.device != ts.device or timestep.dtype != ts.dtype
                or timestep.untyped_storage().data_ptr() != ts.untyped_storage().data_ptr()):
            return None
        position = timestep.storage_offset() - ts.storage_offset()
        return self._host_timesteps[position].item() if 0 <= position < len(self._host_timesteps) else None

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

    # -- the step counter of the schedulers that count steps (all but DDPM / DDIM / PNDM) -----

    _step_index: int | None = None
    _begin_index: int | None = None
    # What index_for_timestep makes of a timestep the schedule lacks, as diffusers does: the last
    # step (the DPM-Solver / UniPC family, EDM's DPM-Solver) or an error (the Euler family, flow
    # matching, EDM's Euler, LCM).
    _absent_timestep_is_last = False
    # diffusers' Euler schedulers step over the training schedule their constructor publishes
    _steps_before_set_timesteps = False

    @property
    def step_index(self) -> int | None:
        """The counter of the current step (None before the first step)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The first step's index when a pipeline set it (``set_begin_index``), else None."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the counter at ``begin_index`` (pipelines that start mid-schedule call this)."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)) or begin_index < 0:
            raise ValueError(f"begin_index must be an int >= 0, got {begin_index!r}")
        self._begin_index = int(begin_index)

    def _host_value(self, timestep, dtype: torch.dtype | None = None) -> int | float | None:
        """The value of a one-element ``timestep`` where the host knows it without reading an
        accelerator (a Python or numpy number, a CPU tensor, a view into ``timesteps``), else None;
        as a value of ``dtype`` (default: the schedule's), since diffusers compares the two in the
        schedule's dtype: rounded to float32 for a float32 schedule, an int for an integer one
        (a fractional value stays a float there, and matches no timestep)."""
        if isinstance(timestep, (bool, np.bool_)) or (isinstance(timestep, torch.Tensor)
                                                      and (timestep.dtype == torch.bool or timestep.is_complex())):
            raise TypeError(f"timestep must be a real number or a one-element tensor of them, got {timestep!r}")
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be a single value, got a tensor of shape {tuple(timestep.shape)}")
            timestep = timestep.item() if timestep.device.type == "cpu" else self._scheduled_value(timestep)
            if timestep is None:
                return None
        elif not isinstance(timestep, (int, float, np.number)):
            raise TypeError(f"timestep must be a number or a one-element tensor, got {type(timestep).__name__}")
        dtype = self._timestep_dtype if dtype is None else dtype
        if dtype.is_floating_point:
            return float(np.float32(timestep)) if dtype == torch.float32 else float(timestep)
        return int(timestep) if float(timestep).is_integer() else float(timestep)

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        """Position of ``timestep`` in the schedule as diffusers resolves it: the second match when
        it repeats (so a schedule that starts mid-way, as img2img's, skips no sigma); when absent,
        the last position or a ValueError (``_absent_timestep_is_last``). A device tensor that is
        not a view into ``timesteps`` is read here, once, as diffusers reads it."""
        if schedule_timesteps is None:
            positions, dtype = self._positions, self._timestep_dtype
        else:
            schedule = torch.as_tensor(schedule_timesteps).detach().cpu().reshape(-1)
            positions, dtype = _positions_of(schedule.tolist()), schedule.dtype
        value = self._host_value(timestep, dtype)
        if value is None:
            value = self._host_value(timestep.cpu(), dtype)
        index = positions.get(value)
        if index is None:
            if not self._absent_timestep_is_last:
                raise ValueError(f"timestep {value} is not one of the scheduler's timesteps (not in the schedule); "
                                 f"pass a value of scheduler.timesteps, or call set_begin_index")
            index = len(self.timesteps) - 1
        return index

    def _init_step_index(self, timestep) -> None:
        """Set the counter before the first step, without reading an accelerator: from
        ``set_begin_index``; else from the timestep's host value (:meth:`_host_value`); under
        torch.compile a traced timestep has no host value, so the loop is taken to start at the
        schedule's first timestep, checked on the device (a mismatch raises when the graph runs)."""
        if self._begin_index is not None:
            self._step_index = self._begin_index
        elif isinstance(timestep, torch.Tensor) and torch.compiler.is_compiling():
            first = self._on("timesteps", self.timesteps, timestep.device)[0]
            torch._assert_async((timestep.reshape(-1)[0] == first).all(),
                                "the first traced step must be at the schedule's first timestep; call "
                                "set_begin_index(i) to start elsewhere")
            self._step_index = 0
        else:
            self._step_index = self.index_for_timestep(timestep)

    def _begin_step(self, timestep, num_steps: int | None) -> int:
        """This step's index (a host int): found from ``timestep`` on the first step (or taken from
        set_begin_index), counted after; checked against the ``num_steps`` the schedule holds
        (None: not checked)."""
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if num_steps is not None and not 0 <= i < num_steps:
            raise ValueError(f"step called at step index {i}, past the end of the schedule ({num_steps} steps after "
                             f"set_timesteps); call set_timesteps again")
        return i

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None and not self._steps_before_set_timesteps:
            raise ValueError(f"{type(self).__name__}.step called before set_timesteps(num_inference_steps)")

    def _refuse_integer_timestep(self, timestep) -> None:
        """diffusers' error for an integer where the schedule holds float timesteps: an index passed
        by mistake (``enumerate(timesteps)``), not a timestep."""
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError(f"Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to "
                             f"`{type(self).__name__}.step()` is not supported. Make sure to pass one of the "
                             f"`scheduler.timesteps` as a timestep.")


def _positions_of(values: list) -> dict:
    """{value: its position as diffusers resolves it}: the second occurrence of a repeated value."""
    positions, seen = {}, {}
    for position, value in enumerate(values):
        seen[value] = seen.get(value, 0) + 1
        if seen[value] <= 2:
            positions[value] = position
    return positions


def _require_integer_timestep(timestep) -> None:
    """The check of the schedulers that index their table by the timestep itself (DDPM, DDIM,
    PNDM): a bool, a floating or a non-numeric timestep is a TypeError (diffusers fails on them
    too, less clearly)."""
    if isinstance(timestep, (bool, np.bool_)) or (isinstance(timestep, torch.Tensor)
                                                  and (timestep.dtype == torch.bool or timestep.is_floating_point()
                                                       or timestep.is_complex())):
        what = timestep.dtype if isinstance(timestep, torch.Tensor) else type(timestep).__name__
        raise TypeError(f"timestep must be an int or an integer tensor (a value of scheduler.timesteps), got {what}")
    if not isinstance(timestep, (int, np.integer, torch.Tensor)):
        raise TypeError(f"timestep must be an int or an integer tensor, got {type(timestep).__name__}")
