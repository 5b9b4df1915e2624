"""The 8x8 handwritten digits of the UCI collection, shipped with fastgen (nothing is downloaded).

Source: UCI Machine Learning Repository, "Optical Recognition of Handwritten Digits"
(E. Alpaydin and C. Kaynak, 1998), https://doi.org/10.24432/C50P49 -- its test set of 1,797
images by 13 writers, 10 classes, as scikit-learn ships it (``sklearn/datasets/data/digits.csv.gz``,
copied unchanged from the scikit-learn 1.9.1 wheel; SHA-256 09f66e6d...1e23aa22). Each image is a
32x32 NIST bitmap whose 4x4 blocks were counted, so pixels are integers 0..16 (16 = all ink).
Licence: Creative Commons Attribution 4.0 International (CC BY 4.0); see DIGITS_LICENSE.txt
beside this file.

File format: gzip'd CSV, one image per line, 64 pixel values (row-major) then the label.

    load_digits(size=8 | 16 | 32)   all 1,797 images (N, 1, size, size) float32, labels (N,) int64
    digit_batches(batch_size)       minibatches, reshuffled every epoch from a torch.Generator
    split_indices()                 THE train / test split (1,437 / 360) every model, metric and the
                                    digits classifier of the package uses: image i is test when i % 5 == 0

A small, real image data set for smoke tests and tiny diffusion / GAN runs on a CPU.
"""
from __future__ import annotations

import functools
import gzip
import os
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["load_digits", "digit_batches", "split_indices", "DIGITS_PATH", "NUM_DIGITS", "TEST_EVERY"]

DIGITS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.csv.gz")
NUM_DIGITS = 1797
SIZES = (8, 16, 32)
NORMALIZATIONS = ("[-1,1]", "[0,1]", None)
TEST_EVERY = 5  # image i is in the test split when i % TEST_EVERY == 0: 360 test, 1,437 train


def split_indices() -> dict[str, np.ndarray]:
    """{"train": (1437,), "test": (360,)} sorted int64 indices into the 1,797 digits.

    The one split of the package: the digits classifier (fastgen.metrics) never trains on a test
    image, so its Fréchet digits distance and class accuracy on the test split are held out for every
    generative model trained on the train split (VAE, flows, VQ-VAE, GANs). Every fifth image: no
    random draw, so the split cannot depend on a generator's implementation.
    """
    index = np.arange(NUM_DIGITS, dtype=np.int64)
    test = index % TEST_EVERY == 0
    return {"train": index[~test], "test": index[test]}


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    """(pixels (N, 64) uint8 in 0..16, labels (N,) int64), read once; callers must not modify them."""
    if not os.path.exists(DIGITS_PATH):
        raise FileNotFoundError(f"the digits data file is missing from the installed package: {DIGITS_PATH} "
                                f"(setup.py's package_data must include fastgen/data/digits.csv.gz)")
    with gzip.open(DIGITS_PATH, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (NUM_DIGITS, 65):
        raise ValueError(f"{DIGITS_PATH} is damaged: expected {NUM_DIGITS} rows of 65 values, got {table.shape}")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{DIGITS_PATH} is damaged: pixels must lie in 0..16 and labels in 0..9")
    pixels, labels = pixels.astype(np.uint8), labels.copy()
    pixels.setflags(write=False)  # the cache hands out these very arrays: make a stray write fail loudly
    labels.setflags(write=False)
    return pixels, labels


def load_digits(size: int = 8, *, as_tensor: bool = True, normalize: str | None = "[-1,1]"):
    """All 1,797 digits as ``(images, labels)``.

    Args:
        size: 8 (the data as stored), 16 or 32 (bilinear upsampling, ``align_corners=False``, of the
            0..16 counts, antialiased in the sense of torch's ``antialias=True``, which only changes
            anything when shrinking).
        as_tensor: torch tensors if True, else numpy arrays (same shapes and dtypes).
        normalize: ``"[-1,1]"`` (x / 8 - 1, what diffusion models train on), ``"[0,1]"`` (x / 16) or
            None (the raw counts 0..16, as float32).
    Returns:
        images (N, 1, size, size) float32, labels (N,) int64 in 0..9; N = 1797.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    pixels, labels = _raw()
    images = torch.from_numpy(pixels.astype(np.float32)).reshape(-1, 1, 8, 8)
    if size != 8:
        # bilinear is a convex combination of neighbours, so the range stays [0, 16] before scaling
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if normalize == "[-1,1]":
        images = images / 8.0 - 1.0
    elif normalize == "[0,1]":
        images = images / 16.0
    labels = torch.from_numpy(labels.copy())
    if as_tensor:
        return images.contiguous(), labels
    return images.numpy(), labels.numpy()


def digit_batches(batch_size: int, *, size: int = 8, normalize: str | None = "[-1,1]", epochs: int | None = 1,
                  shuffle: bool = True, drop_last: bool = False, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches ``(images (b, 1, size, size) float32, labels (b,) int64)`` on ``device``.

    Each epoch visits every image once, in an order drawn with ``torch.randperm`` from ``generator``
    (a CPU generator; torch's default one when None) if ``shuffle``, else in file order. ``epochs=None``
    repeats forever. The last, smaller batch of an epoch is kept unless ``drop_last``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= NUM_DIGITS:
        raise ValueError(f"batch_size must be an int in [1, {NUM_DIGITS}], got {batch_size!r}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be None (endless) or a positive int, got {epochs!r}")
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
        raise TypeError(f"generator must be None or a CPU torch.Generator, got {generator!r}")
    images, labels = load_digits(size, normalize=normalize)
    images, labels = images.to(device), labels.to(device)

    def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = 0
        while epochs is None or epoch < epochs:
            order = torch.randperm(NUM_DIGITS, generator=generator) if shuffle else torch.arange(NUM_DIGITS)
            order = order.to(images.device)
            stop = NUM_DIGITS - NUM_DIGITS % batch_size if drop_last else NUM_DIGITS
            for start in range(0, stop, batch_size):
                idx = order[start:start + batch_size]
                yield images[idx], labels[idx]
            epoch += 1

    return stream()
