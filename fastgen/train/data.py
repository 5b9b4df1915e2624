"""Training images for ``fastgen train diffusion``, and the step-indexed, sharded batches it trains on.

Sources (``--data``), all loaded into memory as (N, C, H, W) float32 in [-1, 1]:

* ``digits``: the train split (:func:`fastgen.data.split_indices`, 1,437 images) of the shipped UCI
  digits at ``--size`` 8, 16 or 32 (1 channel); the test split is never trained on.
* a folder: every ``*.png`` below it (recursively, sorted by path, so ``fastgen generate``'s
  ``--subdirs`` layout works), read with Pillow; greyscale files give 1 channel, anything else
  is converted to RGB (3 channels). All must have one square size.
* a ``.npz`` file with ``images``: uint8 (N, H, W) or (N, H, W, C), C = 1 or 3, NHWC as
  ``fastgen generate --format npz`` writes (one shard; other keys are ignored).

Batches are a pure function of the step (:func:`global_batch_indices`), so a resumed run draws the
same batches as an uninterrupted one without saving any data-loader state, and every rank of a
distributed run derives the same global batch and takes its own slice of it.
"""
from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["load_training_images", "global_batch_indices", "step_batches"]

DIGIT_SIZES = (8, 16, 32)
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _from_uint8_nhwc(images: np.ndarray, where: str) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> (N, C, H, W) float32 in [-1, 1]."""
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(f"--data: {where} must hold uint8 images (N, H, W) or (N, H, W, C) with C = 1 or 3 and "
                         f"N >= 1, got {images.dtype} {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return (x / 127.5 - 1.0).contiguous()


def _load_folder(path: str) -> torch.Tensor:
    from PIL import Image

    files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                   if f.lower().endswith(".png"))
    if not files:
        raise ValueError(f"--data: the folder {path} holds no .png images")
    images, modes, first = [], set(), None
    for f in files:
        with Image.open(f) as im:
            im.load()
            grey = im.mode in _GREY_MODES
            arr = np.asarray(im.convert("L" if grey else "RGB"))
        if first is None:
            first = (f, arr.shape[:2])
        elif arr.shape[:2] != first[1]:
            raise ValueError(f"--data: every image must have one size; {first[0]} is {first[1][1]}x{first[1][0]} "
                             f"but {f} is {arr.shape[1]}x{arr.shape[0]} (W x H)")
        modes.add(grey)
        images.append(arr)
    if len(modes) > 1:  # a mixed folder: greyscale files become RGB with equal channels
        images = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in images]
    return _from_uint8_nhwc(np.stack(images), path)


def _load_npz(path: str) -> torch.Tensor:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f.files:
                raise ValueError(f"--data: {path} has no 'images' array (it holds {sorted(f.files)}); expected "
                                 "uint8 NHWC images as fastgen generate --format npz writes")
            images = f["images"]
    except (OSError, EOFError) as exc:  # np.load's errors for a file that is not an npz
        raise ValueError(f"--data: {path} is not a readable .npz file: {exc}") from exc
    return _from_uint8_nhwc(images, path)


def load_training_images(data: str, size: int | None = None) -> tuple[torch.Tensor, dict]:
    """The training images of ``--data`` (see the module docstring) and a description of them.

    Args:
        data: "digits", a folder of PNGs or an .npz file.
        size: the digits' resolution (8, 16 or 32; default 16); for files, None or their size (checked).
    Returns (images (N, C, S, S) float32 in [-1, 1] on the CPU, {"data", "num_images", "shape"}).
    Raises ValueError naming ``--data`` / ``--size`` for a missing path, an unknown format, images of
    mixed or non-square sizes.
    """
    if data == "digits":
        from ..data.digits import load_digits, split_indices

        size = 16 if size is None else size
        if size not in DIGIT_SIZES:
            raise ValueError(f"--size must be one of {DIGIT_SIZES} for --data digits, got {size}")
        images = load_digits(size)[0][torch.from_numpy(split_indices()["train"])]
        source = "digits (train split)"
    else:
        if not os.path.exists(data):
            raise ValueError(f"--data must be 'digits', a folder of PNG images or an .npz file; {data!r} does not "
                             "exist")
        if os.path.isdir(data):
            images = _load_folder(data)
        elif data.lower().endswith(".npz"):
            images = _load_npz(data)
        else:
            raise ValueError(f"--data: {data} is a file but not an .npz; pass 'digits', a folder of PNG images "
                             "or an .npz of uint8 NHWC images")
        source = os.path.abspath(data)
        h, w = images.shape[-2:]
        if h != w:
            raise ValueError(f"--data: the images must be square, got {w}x{h} (W x H) in {data}")
        if size is not None and size != h:
            raise ValueError(f"--size {size} does not match the images of {data}, which are {h}x{h}")
    return images.contiguous(), {"data": source, "num_images": images.shape[0], "shape": list(images.shape[1:])}


def global_batch_indices(num_images: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """The (batch_size,) int64 image indices of the global batch at training step ``step`` (0-based).

    Epochs visit every image once in an order drawn by ``torch.randperm`` from one CPU generator
    seeded with ``seed`` (the e-th permutation is epoch e's); each epoch holds
    ``num_images // batch_size`` batches (the remainder is left out, as with ``drop_last``).
    Recomputes the permutations up to the step's epoch, so any step is reachable from scratch.
    """
    if not 1 <= batch_size <= num_images:
        raise ValueError(f"--batch-size must lie in [1, {num_images}] (the number of training images), "
                         f"got {batch_size}")
    per_epoch = num_images // batch_size
    epoch, i = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epoch):
        torch.randperm(num_images, generator=generator)
    return torch.randperm(num_images, generator=generator)[i * batch_size:(i + 1) * batch_size]


def step_batches(images: torch.Tensor, batch_size: int, *, start: int, seed: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu"):
    """Endless iterator of this rank's batches from step ``start`` on: rank r gets samples
    r*b .. (r+1)*b - 1 of each global batch of :func:`global_batch_indices`, b = batch_size / world_size,
    as (b, C, H, W) float32 on ``device``."""
    if batch_size % world_size:
        raise ValueError(f"--batch-size {batch_size} (the global batch) must be divisible by the number of "
                         f"processes, {world_size}")
    global_batch_indices(images.shape[0], batch_size, 0, seed)  # the batch size's check
    return _step_batches(images, batch_size, start, seed, rank, batch_size // world_size, device)


def _step_batches(images, batch_size, start, seed, rank, b, device):
    n = images.shape[0]
    per_epoch = n // batch_size
    generator = torch.Generator().manual_seed(seed)
    epoch = start // per_epoch
    for _ in range(epoch):  # replay the permutations of the epochs before ``start``
        torch.randperm(n, generator=generator)
    step = start
    while True:
        order = torch.randperm(n, generator=generator)
        for i in range(step - epoch * per_epoch, per_epoch):
            idx = order[i * batch_size + rank * b:i * batch_size + (rank + 1) * b]
            yield images[idx].to(device, non_blocking=True)
        epoch += 1
        step = epoch * per_epoch
