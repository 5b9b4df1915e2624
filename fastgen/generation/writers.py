"""Outputs of ``fastgen generate``: one PNG per seed, or npz shards; each written whole or not at all.

Every file goes through :func:`fastgen._io.atomic_write` (temp file beside it, then rename), so an
output that exists is complete: resuming skips exactly the outputs that exist. Images are not
fsynced one by one (50k fsyncs would dominate a GPU run); the rename still makes them atomic
against a killed process, which is what resuming needs.

Images: uint8 (N, H, W, C), C = 1 or 3, from samples x in [-1, 1] exactly as diffusers' pipelines
convert them: ``round(clamp(x / 2 + 0.5, 0, 1) * 255)`` in float32 (:func:`to_uint8`).
"""
from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import torch

from .._io import atomic_write, remove_stale_temps

__all__ = ["to_uint8", "png_path", "PngWriter", "NpzWriter", "OUTPUT_FORMATS", "sweep_stale_temps"]

OUTPUT_FORMATS = ("png", "npz")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Samples (N, C, H, W) in [-1, 1], any float dtype and device -> uint8 (N, H, W, C) numpy.

    The pipeline's ``(x / 2 + 0.5).clamp(0, 1)``, ``* 255`` and round half to even (numpy's and
    torch's ``round``), in float32 as diffusers computes it for a float32 model.
    """
    x = (x.float() / 2 + 0.5).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def png_path(out: str, seed: int, subdirs: bool) -> str:
    """``out/{seed:06d}.png``, or with ``subdirs`` ``out/{seed // 1000 * 1000:06d}/{seed:06d}.png`` (EDM's layout)."""
    name = f"{seed:06d}.png"
    return os.path.join(out, f"{seed // 1000 * 1000:06d}", name) if subdirs else os.path.join(out, name)


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="png")
    return buffer.getvalue()


class PngWriter:
    """One PNG per seed. A unit is a list of one seed."""

    def __init__(self, out: str, subdirs: bool):
        self.out, self.subdirs = out, subdirs
        self._made: set[str] = set()

    def done(self, unit: list[int]) -> bool:
        return os.path.isfile(png_path(self.out, unit[0], self.subdirs))

    def folders(self, units: list[list[int]]) -> list[str]:
        """The folders ``units`` write into (for the one stale-temp sweep at start)."""
        return sorted({os.path.dirname(png_path(self.out, u[0], self.subdirs)) for u in units})

    def write(self, unit: list[int], images: np.ndarray) -> None:
        path = png_path(self.out, unit[0], self.subdirs)
        folder = os.path.dirname(path)
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        data = _png_bytes(images[0])
        atomic_write(path, lambda f: f.write(data), durable=False, clean_stale=False)


class NpzWriter:
    """npz shards ``out/samples_{first:06d}-{last:06d}.npz`` of the seed block
    ``[k * shard_size, (k + 1) * shard_size)``: ``images`` uint8 (N, H, W, C) and ``seeds`` int64 (N,),
    the seeds of that block in this run, ascending. A unit is one block's seeds.

    A shard that exists must hold exactly the unit's seeds (a run with another seed list in the same
    folder would otherwise mix): :meth:`done` raises ValueError naming ``--seeds`` if not.
    """

    def __init__(self, out: str, shard_size: int):
        self.out, self.shard_size = out, shard_size

    def path(self, unit: list[int]) -> str:
        first = unit[0] // self.shard_size * self.shard_size
        return os.path.join(self.out, f"samples_{first:06d}-{first + self.shard_size - 1:06d}.npz")

    def done(self, unit: list[int]) -> bool:
        path = self.path(unit)
        if not os.path.isfile(path):
            return False
        try:
            with np.load(path) as f:
                seeds = f["seeds"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ValueError(f"--out: {path} is not an npz shard of fastgen generate ({exc})") from exc
        if seeds.tolist() != list(unit):
            raise ValueError(f"--seeds: {path} exists with {len(seeds)} other seeds than this run's {len(unit)} "
                             "seeds of that block; use the seed list of the run that wrote it, or another --out")
        return True

    def folders(self, units: list[list[int]]) -> list[str]:
        return [self.out]

    def write(self, unit: list[int], images: np.ndarray) -> None:
        seeds = np.asarray(unit, dtype=np.int64)
        atomic_write(self.path(unit), lambda f: np.savez(f, images=images, seeds=seeds), durable=False,
                     clean_stale=False)


def sweep_stale_temps(folders: list[str]) -> int:
    """Remove temp files of writers killed long ago (:func:`fastgen._io.remove_stale_temps`) in ``folders``."""
    return sum(remove_stale_temps(f) for f in folders if os.path.isdir(f))
