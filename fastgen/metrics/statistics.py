"""Streaming mean and covariance of features, mergeable across processes and storable as npz.

:class:`FeatureStatistics` keeps, in float64, the count n, the mean and M2 = sum_i (x_i - mean)(x_i - mean)^T.
Each batch is centred on its own mean (two-pass within the batch) and merged with Chan et al.'s
pairwise update, never E[x x^T] - mean mean^T, which loses the covariance to cancellation when the
mean is large next to the spread (Inception pool3 features are all positive).

npz layout (:meth:`save` / :meth:`load`): ``mu`` (D,) float64, ``sigma`` (D, D) float64 (unbiased,
as ``numpy.cov``), ``count`` int64, ``extractor`` (the feature extractor's name, a str), and
optionally ``features`` (n, D) float32 for KID / precision-recall against this reference.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .._io import atomic_write

__all__ = ["FeatureStatistics", "feature_statistics"]


def _features(name: str, x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of shape (N, D), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
    if not (x.dtype.is_floating_point or x.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{name} must be a real tensor, got {x.dtype}")
    return x.detach()


class FeatureStatistics:
    """Running mean / covariance of (N, D) feature batches.

    Args:
        extractor: name of the feature extractor that made the features; statistics of different
            extractors are never compared or merged.
        keep_features: also keep every feature row (float32, on the CPU) for KID and
            precision/recall, which need samples, not moments.
    """

    def __init__(self, extractor: str = "", keep_features: bool = False):
        if not isinstance(extractor, str):
            raise TypeError(f"extractor must be a str, got {type(extractor).__name__}")
        self.extractor = extractor
        self.count = 0
        self._mean: torch.Tensor | None = None  # (D,) float64, on the device of the first batch
        self._m2: torch.Tensor | None = None  # (D, D) float64
        self._kept: list[torch.Tensor] | None = [] if keep_features else None

    @property
    def dim(self) -> int | None:
        return None if self._mean is None else self._mean.shape[0]

    def _merge_moments(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        if self._mean is None:
            self.count, self._mean, self._m2 = n_b, mean_b, m2_b
            return
        if mean_b.shape != self._mean.shape:
            raise ValueError(f"features have {mean_b.shape[0]} dimensions, these statistics {self._mean.shape[0]}")
        mean_b, m2_b = mean_b.to(self._mean.device), m2_b.to(self._mean.device)
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def update(self, features) -> "FeatureStatistics":
        """Add a batch: ``features`` (N, D) tensor or array, any real dtype, any device (the sums
        stay on the device of the first batch, in float64)."""
        x = _features("features", features)
        if x.shape[0] == 0:
            return self
        if self._kept is not None:
            self._kept.append(x.to("cpu", torch.float32))
        x = x.to(torch.float64)
        if self._mean is not None:
            x = x.to(self._mean.device)
        mean = x.mean(0)
        centred = x - mean
        self._merge_moments(x.shape[0], mean, centred.T @ centred)
        return self

    def merge(self, other: "FeatureStatistics") -> "FeatureStatistics":
        """Fold in the statistics of another shard (e.g. another process); exact up to round-off."""
        if not isinstance(other, FeatureStatistics):
            raise TypeError(f"other must be a FeatureStatistics, got {type(other).__name__}")
        if other.extractor != self.extractor:
            raise ValueError(f"cannot merge statistics of extractor {other.extractor!r} into {self.extractor!r}")
        if other.count == 0:
            return self
        if (self._kept is None) != (other._kept is None):
            if self.count > 0:
                raise ValueError("cannot merge statistics that keep features with ones that do not")
            self._kept = None if other._kept is None else []  # empty: take the other's mode
        self._merge_moments(other.count, other._mean.clone(), other._m2.clone())
        if self._kept is not None:
            self._kept.extend(other._kept)
        return self

    def _require(self, what: str, minimum: int) -> None:
        if self.count < minimum:
            raise ValueError(f"{what} needs at least {minimum} feature rows, these statistics hold {self.count}")

    @property
    def mean(self) -> np.ndarray:
        """(D,) float64."""
        self._require("the mean", 1)
        return self._mean.cpu().numpy()

    @property
    def covariance(self) -> np.ndarray:
        """(D, D) float64, unbiased (divides by n - 1), as ``numpy.cov(features, rowvar=False)``."""
        self._require("the covariance", 2)
        m2 = self._m2.cpu().numpy() / (self.count - 1)
        return (m2 + m2.T) / 2  # exactly symmetric, as sqrtm prefers

    @property
    def features(self) -> np.ndarray | None:
        """(n, D) float32 rows in update order when kept, else None."""
        if self._kept is None:
            return None
        if not self._kept:
            return np.zeros((0, self.dim or 0), np.float32)
        if len(self._kept) > 1:  # concatenate once: KID and precision/recall each ask
            self._kept = [torch.cat(self._kept)]
        return self._kept[0].numpy()

    def save(self, path: str) -> None:
        """Write an npz (atomically: a reader sees the old file or the whole new one)."""
        self._require("saving statistics", 2)
        arrays = dict(mu=self.mean, sigma=self.covariance, count=np.int64(self.count), extractor=np.str_(self.extractor))
        if self._kept is not None:
            arrays["features"] = self.features

        atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str, extractor: str | None = None) -> "FeatureStatistics":
        """Read :meth:`save`'s npz. ``extractor``, when given, must equal the stored name (a reference
        computed with other features would give a meaningless distance)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no statistics file at {path!r}")
        with np.load(path, allow_pickle=False) as z:
            missing = {"mu", "sigma", "count", "extractor"} - set(z.files)
            if missing:
                raise ValueError(f"{path!r} is not a fastgen statistics file: it lacks {sorted(missing)}")
            mu, sigma, count, name = z["mu"], z["sigma"], int(z["count"]), str(z["extractor"])
            feats = z["features"] if "features" in z.files else None
        if extractor is not None and name != extractor:
            raise ValueError(f"{path!r} holds statistics of features {name!r}, but {extractor!r} was asked for; "
                             f"recompute the reference with the same extractor")
        d = mu.shape[0]
        if mu.ndim != 1 or sigma.shape != (d, d) or count < 2:
            raise ValueError(f"{path!r} is damaged: mu {mu.shape}, sigma {sigma.shape}, count {count}")
        stats = cls(name, keep_features=feats is not None)
        stats.count = count
        stats._mean = torch.from_numpy(mu.astype(np.float64))
        stats._m2 = torch.from_numpy(sigma.astype(np.float64) * (count - 1))
        if feats is not None:
            if feats.shape != (count, d):
                raise ValueError(f"{path!r} is damaged: features {feats.shape}, expected ({count}, {d})")
            stats._kept = [torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))]
        return stats


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), unbiased covariance (D, D)) in float64 of ``features`` (N, D), N >= 2."""
    stats = FeatureStatistics().update(features)
    return stats.mean, stats.covariance
