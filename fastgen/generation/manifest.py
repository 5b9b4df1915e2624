"""``DIR/manifest.json``: what the images in an output folder are, and where they came from.

Two parts. ``images``: everything an image depends on (the model's files' SHA-256, the scheduler
class and config, the steps, dtype, device type, the noise rule, the class-label rule, the sample
shape and the output layout). A folder only ever holds images of one ``images`` part: a run whose
``images`` differs from the folder's manifest is refused before anything is written.
``provenance``: the rest (model path, versions, git commit, date, command, seeds, batch size,
processes, accelerate / compile / CUDA-graph switches), as of the run that created the folder.

Rank 0 writes it atomically before the first image, so any image in a folder has its manifest.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys

from .._io import atomic_write_text, is_temp_name

__all__ = ["FORMAT", "MANIFEST_NAME", "ManifestMismatch", "check_or_write", "jsonable", "versions"]

FORMAT = "fastgen.generate/1"
MANIFEST_NAME = "manifest.json"


class ManifestMismatch(ValueError):
    """An output folder holds the files of another run (or of something else)."""


def _default(value):
    if hasattr(value, "tolist"):  # numpy arrays and scalars, tensors (trained_betas)
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


def jsonable(value):
    """``value`` as it reads back from JSON (tuples -> lists, arrays -> lists), so manifests compare equal."""
    return json.loads(json.dumps(value, default=_default, sort_keys=True))


def versions() -> dict:
    from ..benchmarking import git_commit, package_version

    import torch

    return {"fastgen": package_version("fastgen"), "torch": torch.__version__, "cuda": torch.version.cuda,
            "diffusers": package_version("diffusers"), "numpy": package_version("numpy"), "pillow": package_version("pillow"),
            "python": platform.python_version(), "git_commit": git_commit()}


def build(images: dict, provenance: dict) -> dict:
    prov = dict(provenance)
    prov.update(versions=versions(),
                date_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                command=shlex.join(["fastgen"] + sys.argv[1:]) if prov.get("command") is None else prov["command"])
    return jsonable({"format": FORMAT, "images": images, "provenance": prov})


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: folder {a!r}, this run {b!r}"]


def check_or_write(out: str, manifest: dict) -> str:
    """Make ``out`` a folder of ``manifest``'s images: write the manifest into a new or empty folder, accept
    a folder whose manifest has the same ``images`` part. Returns "new" or "resumed".

    Raises :class:`ManifestMismatch` (naming ``--out``) for a folder of another run (the differing
    fields listed), an unreadable manifest, or a non-empty folder without a manifest; nothing is
    written then.
    """
    path = os.path.join(out, MANIFEST_NAME)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ManifestMismatch(f"--out={out!r} exists and is not a folder")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as exc:
            raise ManifestMismatch(f"--out={out!r}: its {MANIFEST_NAME} is unreadable ({exc}); nothing was "
                                   "written") from exc
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise ManifestMismatch(f"--out={out!r}: its {MANIFEST_NAME} is not one of fastgen generate "
                                   f"(format {old.get('format') if isinstance(old, dict) else None!r})")
        diffs = _differences(old.get("images"), manifest["images"])
        if diffs:
            raise ManifestMismatch(f"--out={out!r} holds images of another run (its {MANIFEST_NAME} differs in "
                                   f"what the images depend on: {'; '.join(diffs[:6])}); nothing was written. "
                                   "Use another --out, or the settings of that run")
        return "resumed"
    if os.path.isdir(out):
        others = [n for n in os.listdir(out) if not is_temp_name(n)]
        if others:
            raise ManifestMismatch(f"--out={out!r} is not empty ({len(others)} entries, e.g. {sorted(others)[0]!r}) "
                                   f"and has no {MANIFEST_NAME}: not a folder of fastgen generate; nothing was "
                                   "written")
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return "new"
