"""``MODEL`` of ``fastgen generate``: what it is, the network and scheduler it holds, and its fingerprint.

Three layouts (:func:`load_model` tells them apart and raises for anything else):

* a diffusers pipeline folder: ``model_index.json``, ``unet/`` (a ``UNet2DModel``) and ``scheduler/``
  (its ``scheduler_config.json``; the class it names is replaced by fastgen's of the same name);
* a bare ``UNet2DModel`` folder: ``config.json`` with ``"_class_name": "UNet2DModel"`` and its weights.
  It holds no scheduler: ``--scheduler`` is required (built with that class's default config);
* a fastgen training checkpoint file (:mod:`fastgen.checkpoint`) of a DiffusionTrainer (its EMA
  weights where it keeps them) or a GANTrainer (its EMA generator where it keeps one). A checkpoint
  holds weights, not the architecture: that comes from a JSON file (``--model-config``, default
  ``fastgen_model.json`` beside the checkpoint) of the form
  ``{"class": "UNet" | "DCGANGenerator", "kwargs": {...}, "scheduler": {<diffusers scheduler config>}}``
  naming a class of :mod:`fastgen.models` (``"scheduler"`` optional; diffusion only).

Nothing is downloaded: diffusers loads the folders with ``from_pretrained`` of a local path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from torch import nn

from .. import checkpoint

from .schedulers import build_scheduler, resolve_scheduler_name

__all__ = ["LoadedModel", "load_model", "MODEL_CONFIG_NAME", "write_model_config", "MODEL_CLASSES"]

MODEL_CONFIG_NAME = "fastgen_model.json"
MODEL_CLASSES = ("UNet", "DCGANGenerator")  # fastgen.models classes a checkpoint's model config may name
_DIFFUSION_FORMAT = "fastgen.diffusion.DiffusionTrainer/1"
_GAN_FORMAT = "fastgen.gan.GANTrainer/1"


@dataclasses.dataclass
class LoadedModel:
    """A network ready to generate, and what identifies it.

    ``kind``: "diffusion" (``module(x_t, t)`` predicts for ``scheduler``; samples ``sample_shape``
    (C, H, W)) or "gan" (``module(z)``, z (B, latent_dim)). ``label_kwarg``: the keyword taking (B,)
    int64 class labels, for a class-conditional model with ``num_classes`` classes. ``source``:
    layout, path and the SHA-256 of the files the images depend on (weights, configs).
    """

    kind: str
    module: nn.Module
    scheduler: object | None
    sample_shape: tuple[int, ...] | None
    latent_dim: int | None
    num_classes: int | None
    label_kwarg: str | None
    source: dict


def _sha256_files(paths: list[str], root: str) -> str:
    """SHA-256 over (relative path, bytes) of ``paths``, in sorted order: one digest for a model's files."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(os.path.relpath(path, root).replace(os.sep, "/").encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _files(folder: str) -> list[str]:
    return [os.path.join(folder, n) for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))]


def _read_json(path: str, argument: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{argument}: cannot read {path} as JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{argument}: {path} must hold a JSON object, got {type(value).__name__}")
    return value


def _scheduler(class_name: str | None, config: dict | None, where: str):
    """fastgen's scheduler for the model: ``--scheduler`` (``class_name``) converted from ``config``, else the
    class ``config`` names; ``where`` says where that config came from, for the errors."""
    if class_name is not None:
        return build_scheduler(resolve_scheduler_name(class_name), config)
    if not config:
        raise ValueError(f"MODEL: {where} has no scheduler; pass --scheduler NAME (e.g. ddim, ddpm, dpm++2m)")
    named = config.get("_class_name")
    if named is None:
        raise ValueError(f"MODEL: {where} names no scheduler class ('_class_name'); pass --scheduler NAME")
    try:
        name = resolve_scheduler_name(named)
    except ValueError:
        raise ValueError(f"MODEL: {where} names the scheduler {named!r}, which fastgen does not have; pass "
                         "--scheduler NAME to use one of fastgen's") from None
    return build_scheduler(name, config)


def _unet2d(folder: str, subfolder: str | None) -> nn.Module:
    from diffusers import UNet2DModel

    # low_cpu_mem_usage=False: the default wants the `accelerate` package, and says so at length without it
    return UNet2DModel.from_pretrained(folder, subfolder=subfolder, local_files_only=True, low_cpu_mem_usage=False)


def _from_unet(unet, scheduler, source: dict) -> LoadedModel:
    cfg = unet.config
    size = cfg.sample_size
    hw = (size, size) if isinstance(size, int) else tuple(size)
    num_classes = cfg.get("num_class_embeds")
    return LoadedModel("diffusion", unet, scheduler, (cfg.in_channels, *hw), None, num_classes,
                       "class_labels" if num_classes else None, source)


def _pipeline(path: str, scheduler_name: str | None) -> LoadedModel:
    index = _read_json(os.path.join(path, "model_index.json"), "MODEL")
    unet_entry = index.get("unet")
    if not (isinstance(unet_entry, list) and len(unet_entry) == 2 and unet_entry[1] == "UNet2DModel"):
        raise ValueError(f"MODEL: {path}/model_index.json has unet={unet_entry!r}; fastgen generate takes "
                         "pipelines of an unconditional UNet2DModel (DDPM / DDIM style)")
    extra = sorted(k for k, v in index.items() if not k.startswith("_") and k not in ("unet", "scheduler") and v
                   and v != [None, None])
    if extra:
        raise ValueError(f"MODEL: {path} also holds {extra}; fastgen generate takes pipelines of a UNet2DModel and a "
                         "scheduler only")
    unet_dir, sched_dir = os.path.join(path, "unet"), os.path.join(path, "scheduler")
    if not os.path.isdir(unet_dir):
        raise ValueError(f"MODEL: {path} has model_index.json but no unet/ folder")
    sched_file = os.path.join(sched_dir, "scheduler_config.json")
    config = _read_json(sched_file, "MODEL") if os.path.isfile(sched_file) else None
    scheduler = _scheduler(scheduler_name, config, f"{path} (scheduler/scheduler_config.json)")
    files = _files(unet_dir) + ([sched_file] if config is not None else [])
    source = {"layout": "diffusers-pipeline", "path": os.path.abspath(path), "sha256": _sha256_files(files, path)}
    return _from_unet(_unet2d(path, "unet"), scheduler, source)


def _bare_unet(path: str, scheduler_name: str | None) -> LoadedModel:
    if scheduler_name is None:
        raise ValueError(f"MODEL: {path} is a bare UNet2DModel folder, which holds no scheduler; pass --scheduler "
                         "NAME (e.g. ddim, ddpm, dpm++2m; built with that class's default config)")
    scheduler = _scheduler(scheduler_name, None, path)
    source = {"layout": "unet2d-folder", "path": os.path.abspath(path), "sha256": _sha256_files(_files(path), path)}
    return _from_unet(_unet2d(path, None), scheduler, source)


def write_model_config(path: str, class_name: str, kwargs: dict, scheduler=None) -> None:
    """Write the model config a checkpoint needs (see the module docstring), atomically: the
    :mod:`fastgen.models` class name, its keyword arguments, and optionally the scheduler to sample with
    (a scheduler, fastgen's or diffusers', or a diffusers scheduler config with ``_class_name``)."""
    from .._io import atomic_write_text

    if class_name not in MODEL_CLASSES:
        raise ValueError(f"class_name must be one of {MODEL_CLASSES}, got {class_name!r}")
    value = {"class": class_name, "kwargs": kwargs}
    if scheduler is not None:
        config = dict(getattr(scheduler, "config", scheduler))
        if hasattr(scheduler, "config"):
            config["_class_name"] = type(scheduler).__name__
        if "_class_name" not in config:
            raise ValueError("scheduler must be a scheduler or a scheduler config with '_class_name'")
        value["scheduler"] = config
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _checkpoint(path: str, scheduler_name: str | None, model_config: str | None) -> LoadedModel:
    from .. import models

    config_path = model_config or os.path.join(os.path.dirname(os.path.abspath(path)), MODEL_CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise ValueError(f"MODEL: {path} is a fastgen training checkpoint, which holds weights but not the "
                         f"architecture; pass --model-config FILE (no {config_path})")
    config = _read_json(config_path, "--model-config")
    cls_name, kwargs = config.get("class"), config.get("kwargs", {})
    if cls_name not in MODEL_CLASSES or not isinstance(kwargs, dict):
        raise ValueError(f"--model-config: {config_path} must name a class of {MODEL_CLASSES} and a kwargs object, "
                         f"got class={cls_name!r}")
    state = checkpoint.read(path)  # checksum verified before anything is used
    fmt = state.get("format")
    if fmt == _DIFFUSION_FORMAT:
        kind, weights = "diffusion", state.get("ema") if state.get("ema") is not None else state.get("model")
        which = "ema" if state.get("ema") is not None else "model"
    elif fmt == _GAN_FORMAT:
        kind, weights = "gan", state.get("ema") if state.get("ema") is not None else state.get("generator")
        which = "ema" if state.get("ema") is not None else "generator"
    else:
        raise ValueError(f"MODEL: {path} is a fastgen checkpoint of {fmt!r}, not of a DiffusionTrainer or GANTrainer")
    module = getattr(models, cls_name)(**kwargs)
    try:
        module.load_state_dict(weights, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(f"MODEL: the {which} weights of {path} do not fit {cls_name}(**kwargs) of {config_path}: "
                         f"{exc}") from exc
    digest = hashlib.sha256()
    with open(path, "rb") as f:  # the header line carries the SHA-256 of the payload: no need to hash it again
        digest.update(f.readline())
    with open(config_path, "rb") as f:
        digest.update(f.read())
    source = {"layout": f"fastgen-checkpoint ({kind}, {which} weights)", "path": os.path.abspath(path),
              "model_config": os.path.abspath(config_path), "sha256": digest.hexdigest()}
    if kind == "gan":
        if scheduler_name is not None:
            raise ValueError(f"--scheduler: MODEL {path} is a GAN, which takes no scheduler")
        latent = getattr(module, "latent_dim", None)
        return LoadedModel("gan", module, None, None, latent, None, None, source)
    structure = state.get("structure") or {}
    sched_config = dict(config.get("scheduler") or {})
    if not sched_config and scheduler_name is not None:
        # the trainer's schedule length and prediction type are in the checkpoint; the rest: the class's defaults
        sched_config = {"num_train_timesteps": structure.get("num_train_timesteps", 1000),
                        "prediction_type": structure.get("prediction_type", "epsilon")}
    scheduler = _scheduler(scheduler_name, sched_config, f"{config_path} ('scheduler')")
    shape = state.get("sample_shape") or config.get("sample_shape")
    if not shape:
        raise ValueError(f"MODEL: {path} records no sample shape (trained 0 steps?); add \"sample_shape\": [C, H, W] "
                         f"to {config_path}")
    num_classes = getattr(module, "num_classes", None)
    return LoadedModel("diffusion", module, scheduler, tuple(shape), None, num_classes, "y" if num_classes else None,
                       source)


def load_model(path: str, scheduler_name: str | None = None, model_config: str | None = None) -> LoadedModel:
    """Load ``path`` (see the module docstring) on the CPU in float32, in eval mode, without gradients.
    Raises ValueError naming MODEL (or the option at fault) for a layout it does not know."""
    if not isinstance(path, str) or not os.path.exists(path):
        raise ValueError(f"MODEL: {path!r} does not exist")
    if model_config is not None and not (os.path.isfile(path) and checkpoint.is_checkpoint(path)):
        raise ValueError("--model-config applies to fastgen training checkpoints only")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "model_index.json")):
            loaded = _pipeline(path, scheduler_name)
        elif os.path.isfile(os.path.join(path, "config.json")):
            cls = _read_json(os.path.join(path, "config.json"), "MODEL").get("_class_name")
            if cls != "UNet2DModel":
                raise ValueError(f"MODEL: {path}/config.json is a {cls!r}; fastgen generate takes a UNet2DModel folder")
            loaded = _bare_unet(path, scheduler_name)
        else:
            raise ValueError(f"MODEL: {path} is neither a diffusers pipeline folder (model_index.json, unet/, "
                             "scheduler/) nor a UNet2DModel folder (config.json)")
    elif checkpoint.is_checkpoint(path):
        loaded = _checkpoint(path, scheduler_name, model_config)
    else:
        raise ValueError(f"MODEL: {path} is a file but not a fastgen training checkpoint; pass a diffusers pipeline "
                         "folder, a UNet2DModel folder or a checkpoint of fastgen's trainers")
    loaded.module.eval().requires_grad_(False)
    return loaded
