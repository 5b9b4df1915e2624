"""Feature statistics of image sources, streamed batch by batch, and the scores between two of them.

    make_extractor("inception" | "digits", device=..., weights=...)  ->  extractor(uint8 NHWC batch) -> (b, D)
    image_statistics(source, extractor, batch_size=256)              ->  FeatureStatistics
    load_reference(ref, extractor, ...)                              ->  FeatureStatistics (npz or images)
    score(stats, reference, kid=False, precision_recall=False)       ->  dict of numbers
"""
from __future__ import annotations

import zipfile
from typing import Callable

import numpy as np
import torch

from .frechet import frechet_distance
from .images import count_images, iter_image_batches
from .statistics import FeatureStatistics

__all__ = ["FEATURES", "DigitsFeatures", "make_extractor", "image_statistics", "is_statistics_file",
           "load_reference", "score"]

FEATURES = ("inception", "digits")


class DigitsFeatures:
    """Callable: uint8 images (N, H, W, C) -> (N, 64) penultimate features of the shipped digits classifier."""

    dim = 64

    def __init__(self):
        from .digits_classifier import _shipped

        self.name = _shipped()[1]["name"]

    def __call__(self, images) -> torch.Tensor:
        from .digits_classifier import digits_features

        return digits_features(images)


def make_extractor(features: str = "inception", device: torch.device | str = "cpu", weights: str | None = None):
    """The extractor called ``features``; ``weights`` is a TorchScript path for "inception" only."""
    if features == "inception":
        from .inception import InceptionFeatures

        return InceptionFeatures(weights, device)
    if features == "digits":
        if weights is not None:
            raise ValueError("weights applies to features='inception' only; the digits classifier ships its own")
        return DigitsFeatures()
    raise ValueError(f"features must be one of {FEATURES}, got {features!r}")


def image_statistics(source: str, extractor: Callable, batch_size: int = 256, keep_features: bool = False,
                     on_batch: Callable[[np.ndarray], None] | None = None, progress: bool = False) -> FeatureStatistics:
    """Stream ``source`` (see :mod:`fastgen.metrics.images`) through ``extractor`` into a FeatureStatistics.

    ``on_batch(images)`` is called with each uint8 batch (e.g. to classify it in the same pass)."""
    stats = FeatureStatistics(extractor.name, keep_features=keep_features)
    bar = None
    if progress:
        from .._io import progress_bar

        bar = progress_bar(True, count_images(source), f"features of {source}")
    for batch in iter_image_batches(source, batch_size):
        stats.update(extractor(batch))
        if on_batch is not None:
            on_batch(batch)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return stats


def is_statistics_file(path: str) -> bool:
    """True when ``path`` is an npz written by FeatureStatistics.save (not an npz of images)."""
    if not (isinstance(path, str) and path.endswith(".npz") and zipfile.is_zipfile(path)):
        return False
    with zipfile.ZipFile(path) as z:
        return "mu.npy" in z.namelist()


def load_reference(ref: str, extractor: Callable, batch_size: int = 256, keep_features: bool = False,
                   progress: bool = False) -> FeatureStatistics:
    """Reference statistics: a statistics npz (must be of ``extractor``'s features) or an image source."""
    if is_statistics_file(ref):
        stats = FeatureStatistics.load(ref, extractor=extractor.name)
        if keep_features and stats.features is None:
            raise ValueError(f"{ref!r} holds no features, which KID and precision/recall need; recompute it with "
                             f"`fastgen metrics stats ... --keep-features` or pass the reference images")
        return stats
    return image_statistics(ref, extractor, batch_size, keep_features, progress=progress)


def score(stats: FeatureStatistics, reference: FeatureStatistics, kid: bool = False, precision_recall: bool = False,
          k: int = 3, kid_subsets: int = 100, kid_subset_size: int = 1000, device=None) -> dict:
    """{"fid", "count", "reference_count", "extractor"[, "kid_mean", "kid_std", "kid_subset_size"]
    [, "precision", "recall", "k"]} between two statistics of the same extractor."""
    if stats.extractor != reference.extractor:
        raise ValueError(f"the statistics come from different feature extractors: {stats.extractor!r} and "
                         f"{reference.extractor!r}")
    out = {"fid": frechet_distance(stats.mean, stats.covariance, reference.mean, reference.covariance),
           "count": stats.count, "reference_count": reference.count, "extractor": stats.extractor}
    if kid or precision_recall:
        if stats.features is None or reference.features is None:
            raise ValueError("KID and precision/recall need the features of both sets (keep_features=True)")
    if kid:
        from .kid import kid as kid_fn

        r = kid_fn(stats.features, reference.features, kid_subsets, kid_subset_size, device=device)
        out.update(kid_mean=r.mean, kid_std=r.std, kid_subset_size=r.subset_size, kid_subsets=r.subsets)
    if precision_recall:
        from .precision_recall import precision_recall as pr_fn

        r = pr_fn(reference.features, stats.features, k=k, device=device)
        out.update(precision=r.precision, recall=r.recall, k=r.k)
    return out
