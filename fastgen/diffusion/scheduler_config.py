"""Scheduler configuration with diffusers' ConfigMixin semantics, without needing diffusers.

What a drop-in scheduler must reproduce (diffusers 0.42, ``configuration_utils.py``), so that
``fd.X.from_config(pipe.scheduler.config)`` gives exactly what ``diffusers.X.from_config`` gives:

* the constructor records its arguments in ``config`` (a read-only dict), and the names of the
  arguments the caller did not pass as keywords in ``config["_use_default_values"]``
  (diffusers counts positional arguments there too; so does this);
* ``from_config(config, return_unused_kwargs=False, **overrides)`` drops the keys listed in
  ``_use_default_values`` (the *new* class uses its *own* defaults for them: a hub file that omits
  ``timestep_spacing`` gives each class its default spacing), takes the constructor's keys from
  ``overrides`` first, then from ``config``, ignores private keys, and keeps every other key of
  ``config`` in the new config ("hidden" keys, for later conversions), with ``_class_name`` set to
  the new class. Unknown overrides are not an error: they come back in the unused kwargs;
* ``save_config`` / ``save_pretrained`` write ``scheduler_config.json`` (without
  ``_use_default_values``), ``load_config`` / ``from_pretrained(path, subfolder=...)`` read it.

Where diffusers is installed, every fastgen scheduler is also a subclass of diffusers'
``SchedulerMixin`` and ``ConfigMixin`` (so pipelines accept it and ``save_pretrained`` saves it);
the methods below override theirs, so both installs behave the same.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_write_text

logger = logging.getLogger("fastgen")

CONFIG_NAME = "scheduler_config.json"

# diffusers' KarrasDiffusionSchedulers: what most of its schedulers list as ``_compatibles``
KARRAS_COMPATIBLES = ("DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
                      "EulerDiscreteScheduler", "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                      "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler",
                      "KDPM2AncestralDiscreteScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
                      "DPMSolverSDEScheduler", "EDMEulerScheduler")

# load_config's keyword arguments that say where a file comes from, not what the scheduler is
_LOCATION_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision",
                    "user_agent", "_from_pipeline", "_commit_hash", "dduf_entries", "resume_download",
                    "output_loading_info")


def diffusers_bases() -> tuple[type, ...]:
    """(SchedulerMixin, ConfigMixin) from diffusers when it is installed, else ()."""
    try:
        from diffusers.configuration_utils import ConfigMixin
        from diffusers.schedulers.scheduling_utils import SchedulerMixin
    except ImportError:
        return ()
    return (SchedulerMixin, ConfigMixin)


def _diffusers_version() -> str | None:
    try:
        from diffusers import __version__
    except ImportError:
        return None
    return __version__


class SchedulerConfig(dict):
    """The constructor arguments, read-only, with attribute access (like diffusers' FrozenDict)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the scheduler config has no {name!r}") from None

    def _frozen(self, *args, **kwargs):
        raise TypeError("a scheduler config is read-only; build a new scheduler with from_config(config, **changes)")

    __setattr__ = __setitem__ = __delitem__ = update = pop = popitem = setdefault = clear = _frozen

    def __reduce__(self):  # copy / deepcopy / pickle rebuild it whole instead of item by item
        return (type(self), (dict(self),))


def _init_parameters(cls) -> list[str]:
    """The constructor's named parameters (not self, not *args / **kwargs)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def record_init_call(init):
    """Wrap a scheduler's ``__init__`` so the call is known to ``_register_config``: the private
    keywords (``_class_name`` ..., kept in the config, not passed on) and which parameters came as
    keywords. Only the outermost call of a ``super().__init__`` chain records."""
    names = [p.name for p in inspect.signature(init).parameters.values()][1:]

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        if "_init_call" in self.__dict__:  # an inner __init__ of a subclass chain
            return init(self, *args, **{k: v for k, v in kwargs.items() if not k.startswith("_")})
        private = {k: v for k, v in kwargs.items() if k.startswith("_")}
        public = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        # diffusers lists every parameter not passed *as a keyword*, positional ones included
        defaults_used = [n for n in names if n not in public]
        object.__setattr__(self, "_init_call", (private, defaults_used))
        return init(self, *args, **public)

    wrapper._records_config = True
    return wrapper


def _json_value(value):
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


class ConfigurableScheduler:
    """The configuration half of a drop-in scheduler (see the module docstring)."""

    config_name = CONFIG_NAME
    # diffusers class names this scheduler's config converts to and from (``compatibles``)
    _compatibles: tuple[str, ...] | list[str] = KARRAS_COMPATIBLES
    has_compatibles = True
    _deprecated_kwargs: tuple[str, ...] | list[str] = ()
    ignore_for_config: tuple[str, ...] | list[str] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_config", False):
            cls.__init__ = record_init_call(init)

    def _register_config(self, args: Mapping) -> None:
        """Record the constructor's arguments (``locals()`` at the top of ``__init__``)."""
        private, defaults_used = self.__dict__.pop("_init_call", ({}, []))
        values = {k: args[k] for k in _init_parameters(type(self)) if k in args and k not in self.ignore_for_config}
        config = {**private, **values}
        if defaults_used:
            config["_use_default_values"] = [k for k in defaults_used if k in values]
        self._internal_dict = SchedulerConfig(config)

    @property
    def config(self) -> SchedulerConfig:
        """The configuration: the constructor's arguments plus hidden keys, read-only."""
        return self._internal_dict

    def register_to_config(self, **kwargs) -> None:
        """Add or replace config entries (diffusers' ``register_to_config``)."""
        kwargs.pop("kwargs", None)
        self._internal_dict = SchedulerConfig({**self.__dict__.get("_internal_dict", {}), **kwargs})

    def __getattr__(self, name):
        # diffusers still serves config keys as attributes, with a deprecation warning
        config = self.__dict__.get("_internal_dict")
        if config is not None and not name.startswith("_") and name in config:
            warnings.warn(f"Accessing config attribute {name!r} directly on {type(self).__name__} is deprecated "
                          f"(as in diffusers); use scheduler.config.{name}", FutureWarning, stacklevel=2)
            return config[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- conversion --------------------------------------------------------------------------

    @classmethod
    def extract_init_dict(cls, config_dict: Mapping, **kwargs) -> tuple[dict, dict, dict]:
        """(constructor arguments, unused kwargs, hidden config) for ``config_dict`` plus ``kwargs``."""
        used_defaults = set(config_dict.get("_use_default_values", ()))
        config_dict = {k: v for k, v in config_dict.items() if k not in used_defaults and k != "_use_default_values"}
        original = dict(config_dict)
        expected = set(_init_parameters(cls)) - set(cls.ignore_for_config)
        public = {k: v for k, v in config_dict.items() if not k.startswith("_") and k != "quantization_config"}
        init_dict = {}
        for key in expected:
            if key in kwargs:
                init_dict[key] = kwargs.pop(key)
                public.pop(key, None)
            elif key in public:
                init_dict[key] = public.pop(key)
        unknown = sorted(k for k in public if not _known_elsewhere(k))
        if unknown:
            logger.warning("config keys %s are not arguments of %s or of any known scheduler; they are ignored",
                           unknown, cls.__name__)
        unused = {**public, **kwargs}
        hidden = {k: v for k, v in original.items() if k not in init_dict}
        return init_dict, unused, hidden

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs: bool = False, **kwargs):
        """A new scheduler from another scheduler's ``config`` (any class) plus keyword overrides,
        exactly as diffusers' ``from_config`` converts (see the module docstring). Returns the
        scheduler, or ``(scheduler, unused_kwargs)`` with ``return_unused_kwargs=True``."""
        if "pretrained_model_name_or_path" in kwargs:
            config = kwargs.pop("pretrained_model_name_or_path")
        if config is None:
            raise ValueError("from_config needs a config mapping (e.g. another scheduler's .config) as its first argument")
        if isinstance(config, (str, os.PathLike)):
            warnings.warn("passing a path to from_config is deprecated (as in diffusers); use from_pretrained(path)",
                          FutureWarning, stacklevel=2)
            config, kwargs = cls.load_config(config, return_unused_kwargs=True, **kwargs)
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping (e.g. a scheduler's .config), got {type(config).__name__}")
        init_dict, unused, hidden = cls.extract_init_dict(config, **kwargs)
        for name in cls._deprecated_kwargs:
            if name in unused:
                init_dict[name] = unused.pop(name)
        scheduler = cls(**init_dict)
        if "_class_name" in hidden:
            hidden["_class_name"] = cls.__name__
        scheduler.register_to_config(**hidden)
        unused = {**unused, **hidden}
        return (scheduler, unused) if return_unused_kwargs else scheduler

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        """fastgen's schedulers among ``[cls] + cls._compatibles`` (by diffusers' class names)."""
        names = {cls.__name__, *cls._compatibles}
        found = {c.__name__: c for c in _SCHEDULERS if c.__name__ in names}
        found[cls.__name__] = cls
        return list(found.values())

    @property
    def compatibles(self) -> list[type]:
        """The fastgen scheduler classes this one's config converts into."""
        return self._get_compatibles()

    # -- files -------------------------------------------------------------------------------

    def to_json_string(self) -> str:
        """The config as diffusers writes it: sorted keys, ``_class_name``, no ``_use_default_values``."""
        config = {k: _json_value(v) for k, v in self.config.items()
                  if k not in ("_use_default_values", "_ignore_files", "_pre_quantization_dtype")}
        config["_class_name"] = type(self).__name__
        version = _diffusers_version()
        if version is not None:
            config["_diffusers_version"] = version
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path) -> None:
        atomic_write_text(str(json_file_path), self.to_json_string())

    def save_config(self, save_directory, push_to_hub: bool = False, **kwargs) -> None:
        """Write ``scheduler_config.json`` into ``save_directory`` (created if needed), atomically."""
        if push_to_hub:
            raise NotImplementedError("fastgen schedulers save to a local folder only (push_to_hub=True is not "
                                      "supported); upload the folder with huggingface_hub")
        directory = Path(save_directory)
        if directory.is_file():
            raise ValueError(f"save_directory must be a directory, got the file {directory}")
        directory.mkdir(parents=True, exist_ok=True)
        self.to_json_file(directory / self.config_name)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> None:
        """diffusers' name for :meth:`save_config` (pipelines call it)."""
        self.save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

    @classmethod
    def load_config(cls, pretrained_model_name_or_path, return_unused_kwargs: bool = False,
                    return_commit_hash: bool = False, subfolder: str | None = None, **kwargs):
        """Read ``scheduler_config.json`` from a local folder (optionally its ``subfolder``) or file.
        A name that is not a local path is resolved by diffusers (hub ids, its cache) where diffusers
        is installed; fastgen itself never downloads."""
        path = Path(pretrained_model_name_or_path)
        if subfolder:
            path = path / subfolder
        if path.is_dir():
            path = path / cls.config_name
        if not path.is_file():
            bases = diffusers_bases()
            if bases and not Path(pretrained_model_name_or_path).exists():
                return bases[1].load_config.__func__(cls, pretrained_model_name_or_path,
                                                     return_unused_kwargs=return_unused_kwargs,
                                                     return_commit_hash=return_commit_hash, subfolder=subfolder,
                                                     **kwargs)
            raise FileNotFoundError(f"no {cls.config_name} at {path} (pretrained_model_name_or_path="
                                    f"{str(pretrained_model_name_or_path)!r}, subfolder={subfolder!r})")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}")
        unused = {k: v for k, v in kwargs.items() if k not in _LOCATION_KWARGS}
        outputs = (config,)
        if return_unused_kwargs:
            outputs += (unused,)
        if return_commit_hash:
            outputs += (None,)
        return outputs if len(outputs) > 1 else config

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder: str | None = None,
                        return_unused_kwargs: bool = False, **kwargs):
        """A scheduler from a saved config (a folder holding ``scheduler_config.json``, its
        ``subfolder`` such as a pipeline's "scheduler", or the file), plus keyword overrides."""
        config, kwargs = cls.load_config(pretrained_model_name_or_path, return_unused_kwargs=True,
                                         subfolder=subfolder, **kwargs)
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def __repr__(self):
        return f"{type(self).__name__} {self.to_json_string()}"


# every concrete fastgen scheduler class, registered by SchedulerBase.__init_subclass__
_SCHEDULERS: list[type] = []


def _known_elsewhere(key: str) -> bool:
    """Whether some known scheduler (fastgen's, or diffusers' where installed) takes ``key``."""
    if any(key in _init_parameters(c) for c in _SCHEDULERS):
        return True
    try:
        import diffusers.schedulers as ds
    except ImportError:
        return False
    return any(key in _init_parameters(getattr(ds, name)) for name in KARRAS_COMPATIBLES if hasattr(ds, name))
