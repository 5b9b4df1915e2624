"""The one digits classifier of fastgen: a small CNN on the shipped 8x8 UCI digits, weights in the package.

It judges CPU-scale generative models trained on the digits:

* :func:`digits_features` - 64-d penultimate features (before the ReLU), for a Fréchet digits distance (:func:`digits_fd`);
* :func:`classify_digits` - class predictions, for class accuracy of conditional models and the
  class balance of unconditional ones (:func:`class_accuracy`, :func:`class_balance`).

Images: uint8 (N, H, W) or (N, H, W, C) NHWC in 0..255 (what image files and ``fastgen generate``
hold), or floating (N, C, H, W) in [-1, 1] (what fastgen's digits models output). RGB is averaged
to grey; sizes other than 8x8 are resized to 8x8 (area averaging when shrinking, which undoes the
16/32 upsampling of :func:`fastgen.data.load_digits` up to its blur; bilinear when enlarging).

Training (deterministic, fixed seed, half a minute on one CPU core)::

    python benchmarks/train_digits_classifier.py

writes ``digits_classifier.pt`` beside this file: the state_dict plus the split, the held-out
accuracy and the epochs, so the record travels with the weights. The split is the package's one
(:func:`fastgen.data.digits.split_indices`: every fifth image is test, 360 of them; 1,437 train), so
no model trained on the train split is judged on images the classifier learned.
"""
from __future__ import annotations

import functools
import hashlib
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.digits import TEST_EVERY, split_indices  # the package's one train / test split
from ..divergences import kl_categorical

__all__ = ["DigitsClassifier", "WEIGHTS_PATH", "load_digits_classifier", "split_indices", "digits_features",
           "classify_digits", "class_accuracy", "class_balance", "ClassBalance", "digits_fd",
           "DIGITS_FEATURE_DIM", "NUM_CLASSES", "train_digits_classifier"]

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_classifier.pt")
NUM_CLASSES = 10
DIGITS_FEATURE_DIM = 64


class DigitsClassifier(nn.Module):
    """(N, 1, 8, 8) float in [0, 1] -> logits (N, 10); ``features`` gives the (N, 64) penultimate layer
    (pre-activation)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)  # then 2x2 max-pool: 4x4
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)  # then 2x2 max-pool: 2x2
        self.fc = nn.Linear(64 * 2 * 2, DIGITS_FEATURE_DIM)
        self.head = nn.Linear(DIGITS_FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer before its ReLU: after it, 27 of the 64 units of the shipped weights are
        zero on every digit, which would leave the covariance of a Fréchet distance singular."""
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.fc(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


def preprocess(images) -> torch.Tensor:
    """Images (see the module docstring) -> (N, 1, 8, 8) float32 in [0, 1] on the CPU."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a numpy array or torch.Tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        if images.dim() == 3:
            images = images[..., None]
        if images.dim() != 4 or images.shape[3] not in (1, 3):
            raise ValueError(f"uint8 images must be (N, H, W) or (N, H, W, C) with C = 1 or 3, got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float() / 255.0
    elif images.dtype.is_floating_point:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"floating images must be (N, C, H, W) in [-1, 1] with C = 1 or 3, got {tuple(images.shape)}")
        x = (images.detach().float() + 1.0) / 2.0
    else:
        raise TypeError(f"images must be uint8 (0..255) or floating ([-1, 1]), got {images.dtype}")
    x = x.cpu().mean(1, keepdim=True).clamp(0.0, 1.0)
    if x.shape[-2:] != (8, 8):
        if x.shape[-2] >= 8 and x.shape[-1] >= 8:
            x = F.interpolate(x, size=(8, 8), mode="area")
        else:
            x = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
    return x.contiguous()


@functools.lru_cache(maxsize=1)
def _weights_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_digits_classifier(path: str = WEIGHTS_PATH) -> tuple[DigitsClassifier, dict]:
    """(model in eval mode on the CPU, record {test_accuracy, ..., name}) from the shipped weights."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the digits classifier weights are missing: {path} (setup.py's package_data must "
                                f"include fastgen/metrics/digits_classifier.pt; retrain with "
                                f"python benchmarks/train_digits_classifier.py)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = DigitsClassifier()
    model.load_state_dict(blob["state_dict"])
    model.eval()
    record = {k: v for k, v in blob.items() if k != "state_dict"}
    # the weights' hash in the name: statistics computed with other weights are refused, not compared
    record["name"] = f"fastgen-digits-cnn-fc-{_weights_sha256(path)[:12]}"
    return model, record


@functools.lru_cache(maxsize=1)
def _shipped() -> tuple[DigitsClassifier, dict]:
    return load_digits_classifier()


def _batched(fn, images, batch_size: int = 4096) -> torch.Tensor:
    x = preprocess(images)
    with torch.no_grad():
        return torch.cat([fn(x[s:s + batch_size]) for s in range(0, len(x), batch_size)]) if len(x) else fn(x)


def digits_features(images) -> torch.Tensor:
    """(N, 64) float32 penultimate features of the shipped classifier."""
    return _batched(_shipped()[0].features, images)


def classify_digits(images) -> torch.Tensor:
    """(N,) int64 predicted classes 0..9."""
    return _batched(_shipped()[0], images).argmax(1)


def class_accuracy(images, labels) -> float:
    """Fraction of ``images`` the classifier assigns to ``labels`` ((N,) ints: the classes asked for)."""
    labels = torch.as_tensor(labels).cpu()
    pred = classify_digits(images)
    if labels.shape != pred.shape:
        raise ValueError(f"labels must have shape ({len(pred)},), one per image, got {tuple(labels.shape)}")
    return (pred == labels).float().mean().item()


class ClassBalance:
    """counts (10,) int, fractions (10,), kl_uniform = KL(fractions || uniform) = sum p log(10 p) in nats
    (0 for a perfectly balanced set, log 10 = 2.30 when every sample is one class)."""

    def __init__(self, predictions: torch.Tensor):
        self.counts = torch.bincount(predictions, minlength=NUM_CLASSES).numpy()
        self.fractions = self.counts / max(1, self.counts.sum())
        if self.counts.sum() == 0:
            self.kl_uniform = float("nan")
        else:
            p = torch.from_numpy(self.fractions)
            self.kl_uniform = float(kl_categorical(p, torch.full_like(p, 1.0 / NUM_CLASSES)))

    def __repr__(self):
        return f"ClassBalance(counts={self.counts.tolist()}, kl_uniform={self.kl_uniform:.4f})"


def class_balance(images) -> ClassBalance:
    """How the classifier's predictions of ``images`` spread over the 10 classes."""
    return ClassBalance(classify_digits(images))


def digits_fd(images, reference="digits") -> float:
    """Fréchet digits distance: the Fréchet distance between the classifier's penultimate features of
    ``images`` and of ``reference`` (images in the same formats, or an image source such as "digits",
    "digits:test", or a FeatureStatistics). Needs at least 2 images."""
    from .frechet import frechet_distance
    from .images import DIGITS_SOURCES, digits_uint8
    from .statistics import FeatureStatistics

    if isinstance(reference, str):
        if reference not in DIGITS_SOURCES:
            raise ValueError(f"reference must be images, a FeatureStatistics or one of {DIGITS_SOURCES}, got {reference!r}")
        reference = digits_uint8("all" if reference == "digits" else reference.split(":")[1])[0]
    name = _shipped()[1]["name"]
    if not isinstance(reference, FeatureStatistics):
        reference = FeatureStatistics(name).update(digits_features(reference))
    elif reference.extractor != name:
        raise ValueError(f"reference statistics were made with {reference.extractor!r}, not {name!r}")
    stats = FeatureStatistics(name).update(digits_features(images))
    return frechet_distance(stats.mean, stats.covariance, reference.mean, reference.covariance)


def _shift_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixels in each direction (zero fill): writers do not centre digits."""
    padded = F.pad(x, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2, x.shape[0]), generator=g)
    rows = (dy[:, None] + torch.arange(8))[:, None, :, None].expand(-1, 1, 8, 10)
    cols = (dx[:, None] + torch.arange(8))[:, None, None, :].expand(-1, 1, 8, 8)
    return padded.gather(2, rows).gather(3, cols)


def train_digits_classifier(epochs: int = 60, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                            log=print) -> tuple[DigitsClassifier, dict]:
    """Train on the train split (Adam, cosine decay, shift augmentation) and measure the test split."""
    from .images import digits_uint8

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    (xtr, ytr), (xte, yte) = digits_uint8("train"), digits_uint8("test")
    xtr, xte = preprocess(xtr), preprocess(xte)
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (len(xtr) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=g)
        for s in range(0, len(xtr), batch_size):
            idx = order[s:s + batch_size]
            loss = F.cross_entropy(model(_shift_augment(xtr[idx], g)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            model.eval()
            with torch.no_grad():
                acc = (model(xte).argmax(1) == yte).float().mean().item()
            log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, test accuracy {acc:.4f}")
    model.eval()
    with torch.no_grad():
        correct = int((model(xte).argmax(1) == yte).sum())
    record = dict(test_accuracy=correct / len(yte), test_correct=correct, test_size=len(yte),
                  split=f"fastgen.data.digits.split_indices: i % {TEST_EVERY} == 0 is test",
                  seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, torch_version=str(torch.__version__))
    return model, record
