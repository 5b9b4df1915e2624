"""Trainer checkpoints that cannot lie: checksummed on disk, validated whole before anything is restored.

One implementation for :class:`fastgen.diffusion.DiffusionTrainer`, :class:`fastgen.gan.GANTrainer` and
:class:`fastgen.vae.VAETrainer`, which also take their EMA (:func:`ema_copy`, :func:`update_ema`) from here;
a trainer names its stateful parts (modules, optimizers, GradScalers; None for one it does not keep),
its plain values (step, seed, ...) and the settings a checkpoint must match (its ``_structure()``).

File layout: one header line ``fastgen-checkpoint sha256=<64 hex digits>\\n``, then the payload, a
``torch.save``'d dict {"format", "structure", "rng", <each part's state_dict or None>, <each value>}.
The digest is the SHA-256 of the payload bytes, so a single flipped bit anywhere in them is caught
on load. Files are written with :func:`fastgen._io.atomic_write` (temp file, fsync, rename, fsync of
the folder).

Loading reads and verifies the whole file, then checks the format, the structure, every key, every
value, the random states (set on scratch generators) and each state dict against the live part
(module keys and shapes, optimizer groups, scaler keys) before it assigns anything; should a
``load_state_dict`` still fail, the parts already restored are put back, so a bad checkpoint leaves
the trainer exactly as it was.
"""
from __future__ import annotations

import copy
import hashlib
import io
import re
from typing import Callable, Mapping

import torch
import torch.nn as nn

from ._io import atomic_write

__all__ = ["CheckpointError", "save", "load", "read", "is_checkpoint", "rng_states", "restore_rng_states", "ema_copy",
           "update_ema"]

_MAGIC = b"fastgen-checkpoint sha256="
_HEADER = re.compile(rb"fastgen-checkpoint sha256=([0-9a-f]{64})\n")
_HEADER_SIZE = len(_MAGIC) + 64 + 1
_RESERVED = ("format", "structure", "rng")


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, incomplete, or written by another kind of trainer."""


# --- random states ------------------------------------------------------------------------------------

def rng_states(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """torch's CPU generator, the trainer's ``generator`` and, when that one is on CUDA, that device's
    default CUDA generator: every random state a trainer's step draws from."""
    rng = {"torch_cpu": torch.get_rng_state(), "trainer": generator.get_state()}
    if generator.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(generator.device)
    return rng


def _check_rng_states(path: str, rng: object, generator: torch.Generator) -> None:
    """Raise unless :func:`restore_rng_states` of ``rng`` would succeed; sets scratch generators only."""
    needed = {"torch_cpu": torch.device("cpu"), "trainer": generator.device}
    if generator.device.type == "cuda":
        needed["cuda"] = generator.device
    if not isinstance(rng, dict):
        raise CheckpointError(f"{path} has no random states (entry 'rng' is {type(rng).__name__})")
    for key, device in needed.items():
        if key not in rng:
            raise CheckpointError(f"{path} lacks the random state rng[{key!r}]")
        try:
            torch.Generator(device=device).set_state(rng[key])
        except (RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{path} has an invalid random state rng[{key!r}]: {exc}") from exc


def restore_rng_states(rng: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    """Set the states of :func:`rng_states` back."""
    torch.set_rng_state(rng["torch_cpu"])
    generator.set_state(rng["trainer"])
    if generator.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], generator.device)


# --- the EMA a trainer keeps (and checkpoints as one of its parts) -------------------------------------

def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` in eval mode, to average its parameters into with :func:`update_ema`."""
    return copy.deepcopy(model).requires_grad_(False).eval()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- lerp(ema, model, 1 - decay) for every parameter (one foreach call, no host sync), and
    the buffers (batch-norm statistics) copied, as StyleGAN2 does. Not torch's
    AveragedModel.update_parameters: it tests its device-side step counter on the host, a sync per step."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    ema_buffers, buffers = list(ema.buffers()), list(model.buffers())
    if buffers:
        torch._foreach_copy_(ema_buffers, buffers)


# --- bytes on disk ------------------------------------------------------------------------------------

def _write(path: str, payload: dict) -> None:
    """Serialise ``payload`` (before any file is created, so a failing torch.save leaves none) and write
    it behind its checksum header."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()
    header = _MAGIC + hashlib.sha256(data).hexdigest().encode("ascii") + b"\n"

    def write(f) -> None:
        f.write(header)
        f.write(data)

    atomic_write(path, write)


def _read(path: str, kind: str) -> dict:
    """The payload of a :func:`_write` file, after checking its SHA-256."""
    with open(path, "rb") as f:
        blob = f.read()
    if not blob.startswith(_MAGIC):
        raise CheckpointError(f"{path} is not a {kind} checkpoint (no fastgen checkpoint header: another "
                              "file, or one written without a checksum)")
    match = _HEADER.match(blob, 0, _HEADER_SIZE)
    if match is None:
        raise CheckpointError(f"{path} is corrupt: its checksum header is damaged")
    payload = memoryview(blob)[_HEADER_SIZE:]
    actual = hashlib.sha256(payload).hexdigest()
    if actual != match.group(1).decode("ascii"):
        raise CheckpointError(f"{path} is corrupt: the SHA-256 of its contents is {actual}, but it was written "
                              f"with {match.group(1).decode('ascii')} (damaged on disk or in transfer)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # the checksum matched: the payload is what was written, yet unreadable
        raise CheckpointError(f"{path} is not a readable {kind} checkpoint: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a {kind} checkpoint (its payload is a {type(state).__name__})")
    return state


def read(path: str, kind: str = "training") -> dict:
    """The whole stored state of a checkpoint (its checksum verified first), without a trainer: for
    tools that only read one, such as ``fastgen generate`` taking the EMA weights. ``kind`` names it
    in errors. Raises :class:`CheckpointError` for a file that is not an intact fastgen checkpoint."""
    return _read(path, kind)


def is_checkpoint(path: str) -> bool:
    """Whether ``path`` starts with a fastgen checkpoint header (nothing else is read or checked)."""
    with open(path, "rb") as f:
        return f.read(len(_MAGIC)) == _MAGIC


# --- validating state dicts ---------------------------------------------------------------------------

def _check_module(where: str, module: nn.Module, stored: object) -> None:
    """The checks of ``module.load_state_dict(stored, strict=True)``, without loading."""
    if not isinstance(stored, Mapping):
        raise CheckpointError(f"{where} is a {type(stored).__name__}, not a state dict")
    live = module.state_dict()
    missing, unexpected = sorted(live.keys() - stored.keys()), sorted(stored.keys() - live.keys())
    if missing or unexpected:
        raise CheckpointError(f"{where} does not fit the live module: missing keys {missing[:5]}, "
                              f"unexpected keys {unexpected[:5]}")
    for key, value in live.items():
        if isinstance(value, torch.Tensor):
            other = stored[key]
            if not isinstance(other, torch.Tensor) or other.shape != value.shape:
                got = tuple(other.shape) if isinstance(other, torch.Tensor) else type(other).__name__
                raise CheckpointError(f"{where}[{key!r}] has shape {got}, the live module {tuple(value.shape)}")


def _check_optimizer(where: str, optimizer: torch.optim.Optimizer, stored: object) -> None:
    """The checks of ``optimizer.load_state_dict(stored)``, without loading."""
    if not isinstance(stored, Mapping) or not {"state", "param_groups"} <= stored.keys():
        raise CheckpointError(f"{where} is not an optimizer state dict (needs 'state' and 'param_groups')")
    groups = stored["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        raise CheckpointError(f"{where} has {len(groups) if isinstance(groups, list) else 'no'} parameter "
                              f"groups, the live optimizer {len(optimizer.param_groups)}")
    ids = set()
    for i, (group, live) in enumerate(zip(groups, optimizer.param_groups)):
        params = group.get("params") if isinstance(group, Mapping) else None
        if not isinstance(params, list) or len(params) != len(live["params"]):
            raise CheckpointError(f"{where} group {i} does not hold the live group's {len(live['params'])} "
                                  "parameters")
        ids.update(params)
    state = stored["state"]
    if not isinstance(state, Mapping) or not set(state) <= ids:
        raise CheckpointError(f"{where} has per-parameter state for parameters none of its groups holds")


def _check_state(where: str, part: object, stored: object) -> None:
    if isinstance(part, nn.Module):
        _check_module(where, part, stored)
    elif isinstance(part, torch.optim.Optimizer):
        _check_optimizer(where, part, stored)
    else:  # a GradScaler, or another object with a flat state dict (empty when disabled)
        live = part.state_dict()
        if not isinstance(stored, Mapping) or not live.keys() <= stored.keys():
            raise CheckpointError(f"{where} lacks the keys {sorted(live.keys() - set(stored or ()))} of the "
                                  f"live {type(part).__name__}")


def _cpu_copy(state: object) -> object:
    """A deep copy of a state dict with its tensors on the CPU (so a rollback costs no device memory)."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return type(state)((k, _cpu_copy(v)) for k, v in state.items())
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu_copy(v) for v in state)
    return copy.deepcopy(state)


# --- the two entry points -----------------------------------------------------------------------------

def save(path: str, *, format: str, structure: dict, parts: Mapping[str, object],
         values: Mapping[str, object], generator: torch.Generator) -> None:
    """Write a checkpoint of ``parts`` (name -> object with ``state_dict()``, or None for one the trainer
    does not keep; an nn.Module, an Optimizer, a GradScaler), plain ``values`` (step, seed, ...) and the random states of :func:`rng_states`."""
    payload = {"format": format, "structure": structure, "rng": rng_states(generator)}
    payload.update({name: None if part is None else part.state_dict() for name, part in parts.items()})
    payload.update(values)
    _write(path, payload)


def load(path: str, *, format: str, structure: dict, parts: Mapping[str, object],
         values: Mapping[str, Callable[[object], bool]], generator: torch.Generator) -> dict:
    """Validate the checkpoint at ``path`` whole, then restore ``parts`` and the random states.

    Args:
        format: the trainer's format string, ``"<module>.<TrainerName>/<version>"``.
        structure: what the checkpoint's ``structure`` must equal, key by key.
        parts: as for :func:`save`; a None part must be stored as None.
        values: name -> a test each stored plain value must pass (the trainer assigns them).

    Returns the stored plain values. Raises :class:`CheckpointError` (a ValueError) naming ``path``
    for a corrupt, foreign or incomplete file, before anything of the trainer has changed.
    """
    kind = format.split("/")[0].rsplit(".", 1)[-1]
    state = _read(path, kind)
    if state.get("format") != format:
        raise CheckpointError(f"{path} is not a {kind} checkpoint (expected format {format!r}, "
                              f"found {state.get('format')!r})")
    stored = state.get("structure")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path} lacks its 'structure' entry")
    for key, value in structure.items():
        if stored.get(key) != value:
            raise CheckpointError(f"{path} was written with {key}={stored.get(key)!r} but this trainer has "
                                  f"{key}={value!r}")
    missing = [k for k in (*_RESERVED, *parts, *values) if k not in state]
    if missing:
        raise CheckpointError(f"{path} is incomplete: it lacks the entries {missing}")
    for name, test in values.items():
        if not test(state[name]):
            raise CheckpointError(f"{path} has an invalid {name}: {state[name]!r}")
    for name, part in parts.items():
        if part is None:
            if state[name] is not None:
                raise CheckpointError(f"{path} holds a {name} state but this trainer keeps no {name}")
        else:
            _check_state(f"{path}: {name}", part, state[name])
    _check_rng_states(path, state["rng"], generator)

    live = {name: part for name, part in parts.items() if part is not None}
    backup = {name: _cpu_copy(part.state_dict()) for name, part in live.items()}
    done = []
    for name, part in live.items():
        try:
            part.load_state_dict(state[name])
        except Exception as exc:
            for previous in done:
                live[previous].load_state_dict(backup[previous])
            outcome = "the trainer is unchanged"
            try:  # the failing part may have changed before it raised
                part.load_state_dict(backup[name])
            except Exception:
                outcome = f"the other parts are unchanged, the {name} may be partly overwritten"
            raise CheckpointError(f"{path}: the {name} could not be restored ({exc}); {outcome}") from exc
        done.append(name)
    restore_rng_states(state["rng"], generator)
    return {name: state[name] for name in values}
