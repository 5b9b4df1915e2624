"""Reading images to score, in batches, so that 50k of them never sit in memory at once.

Sources (the formats ``fastgen generate`` writes, issue 9):

* a folder of images (``DIR/{seed:06d}.png``, optionally in subfolders; also .jpg/.jpeg/.bmp/.webp),
  read in sorted path order; names starting with "." (temp files of an atomic write) are skipped;
* an ``.npz`` file, or a folder of ``.npz`` shards, each with an ``images`` array of uint8 NHWC
  (other arrays, e.g. ``seeds``, are ignored). The array is streamed out of the zip member in
  slices, so a shard larger than memory still works;
* ``digits``, ``digits:train``, ``digits:test``: the shipped UCI digits (all 1,797, or the split of
  :mod:`fastgen.metrics.digits_classifier`), as uint8 8x8 greyscale (count * 255 / 16, rounded).

Every batch is a uint8 numpy array (b, H, W, C) with C = 1 (greyscale) or 3 (RGB; RGBA and palette
images are converted to RGB).
"""
from __future__ import annotations

import os
import zipfile
from typing import Iterator

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "DIGITS_SOURCES", "iter_image_batches", "count_images", "digits_uint8"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DIGITS_SOURCES = ("digits", "digits:train", "digits:test")


def digits_uint8(split: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """The shipped digits as (images (N, 8, 8, 1) uint8, labels (N,) int64); split "all" | "train" | "test"."""
    from ..data.digits import load_digits
    from .digits_classifier import split_indices

    images, labels = load_digits(8, as_tensor=False, normalize=None)
    images = np.round(images[:, 0, :, :, None] * (255.0 / 16.0)).astype(np.uint8)
    if split == "all":
        return images, labels
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    idx = split_indices()[split]
    return images[idx], labels[idx]


def _walk(folder: str, extensions: tuple[str, ...]) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(root, f) for f in files if not f.startswith(".") and f.lower().endswith(extensions)]
    return sorted(found)


def _resolve(source: str) -> tuple[str, list[str]]:
    """("digits" | "images" | "npz", paths) of a source; clear errors for anything else."""
    if source in DIGITS_SOURCES:
        return "digits", [source]
    if os.path.isfile(source):
        if not source.endswith(".npz"):
            raise ValueError(f"{source!r} is a file but not an .npz of images; pass a folder of images, an npz "
                             f"with an 'images' array, or one of {DIGITS_SOURCES}")
        return "npz", [source]
    if not os.path.isdir(source):
        raise FileNotFoundError(f"no folder or .npz file at {source!r}")
    images, shards = _walk(source, IMAGE_EXTENSIONS), _walk(source, (".npz",))
    if images and shards:
        raise ValueError(f"{source!r} holds both image files ({len(images)}) and npz shards ({len(shards)}); "
                         f"point at one kind")
    if not images and not shards:
        raise ValueError(f"{source!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}) and no .npz shards")
    return ("images", images) if images else ("npz", shards)


def _npz_header(z: zipfile.ZipFile, path: str):
    if "images.npy" not in z.namelist():
        raise ValueError(f"{path!r} has no 'images' array (found {[n[:-4] for n in z.namelist()]})")
    f = z.open("images.npy")
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if dtype != np.uint8 or len(shape) != 4 or shape[3] not in (1, 3):
        f.close()
        raise ValueError(f"{path!r}: 'images' must be uint8 (N, H, W, C) with C = 1 or 3, got {dtype} {shape}")
    return f, shape, fortran


def _npz_batches(path: str, batch_size: int) -> Iterator[np.ndarray]:
    with zipfile.ZipFile(path) as z:
        f, shape, fortran = _npz_header(z, path)
        with f:
            if fortran:  # column-major: rows are not contiguous in the file; read it whole
                images = np.load(path)["images"]
                for s in range(0, shape[0], batch_size):
                    yield np.ascontiguousarray(images[s:s + batch_size])
                return
            row = int(np.prod(shape[1:]))
            for s in range(0, shape[0], batch_size):
                b = min(batch_size, shape[0] - s)
                data = f.read(b * row)
                if len(data) != b * row:
                    raise ValueError(f"{path!r} is truncated: 'images' ends after {s + len(data) // row} "
                                     f"of {shape[0]} images")
                yield np.frombuffer(data, np.uint8).reshape(b, *shape[1:]).copy()  # writable, as torch wants


def _read_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        a = np.asarray(im, dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


def _image_batches(paths: list[str], batch_size: int) -> Iterator[np.ndarray]:
    for s in range(0, len(paths), batch_size):
        chunk = [_read_image(p) for p in paths[s:s + batch_size]]
        for p, a in zip(paths[s:s + batch_size], chunk):
            if a.shape != chunk[0].shape:
                raise ValueError(f"images differ in size or channels: {p!r} is {a.shape}, "
                                 f"{paths[s]!r} is {chunk[0].shape}")
        yield np.stack(chunk)


def iter_image_batches(source: str, batch_size: int = 256) -> Iterator[np.ndarray]:
    """uint8 (b, H, W, C) batches of ``source`` (see the module docstring), b <= batch_size."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    kind, paths = _resolve(source)
    if kind == "digits":
        images = digits_uint8("all" if source == "digits" else source.split(":")[1])[0]
        for s in range(0, len(images), batch_size):
            yield images[s:s + batch_size]
    elif kind == "images":
        yield from _image_batches(paths, batch_size)
    else:
        for p in paths:
            yield from _npz_batches(p, batch_size)


def count_images(source: str) -> int:
    """Number of images in ``source`` without decoding them (for progress bars)."""
    kind, paths = _resolve(source)
    if kind == "digits":
        return len(digits_uint8("all" if source == "digits" else source.split(":")[1])[0])
    if kind == "images":
        return len(paths)
    total = 0
    for p in paths:
        with zipfile.ZipFile(p) as z:
            f, shape, _ = _npz_header(z, p)
            f.close()
            total += shape[0]
    return total
