"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs").

The unbiased estimate of the squared MMD with the cubic polynomial kernel
k(x, y) = (x . y / D + 1)^3, averaged over random subsets of equal size drawn without replacement
from each set, as the paper's code and torch-fidelity compute it (100 subsets of 1000 by default);
the spread over subsets is reported as its standard deviation (numpy's ddof=0, as torch-fidelity).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .._validate import check_int

__all__ = ["KID", "kid", "mmd2_unbiased", "polynomial_kernel"]


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(x y^T / D + 1)^3 for x (n, D), y (m, D) -> (n, m), in their dtype."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 estimate between samples x (m, D) and y (m, D) (equal sizes, m >= 2), cubic
    polynomial kernel: mean of k(x_i, x_j) over i != j + the same for y - 2 mean of k(x_i, y_j)."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    same = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return same - 2.0 * k_xy.sum() / (m * m)


@dataclasses.dataclass(frozen=True)
class KID:
    """mean and std (ddof=0) of the subsets' MMD^2; subsets and subset_size as used."""
    mean: float
    std: float
    subsets: int
    subset_size: int


def _as_features(name: str, x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{name} must be an (N, D) tensor or array, got {getattr(x, 'shape', type(x).__name__)}")
    return x.detach()


def kid(features_a, features_b, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
        device: torch.device | str | None = None) -> KID:
    """KID between two feature sets.

    Args:
        features_a, features_b: (Na, D) and (Nb, D) tensors or arrays (any device; computed in float64).
        subsets: number of random subset pairs.
        subset_size: rows per subset; lowered to min(Na, Nb) when a set is smaller (as clean-fid does),
            the size used is in the result.
        seed: seed of the torch.Generator that draws the subsets (results are reproducible).
        device: where to compute (default: features_a's device).
    Returns:
        :class:`KID` (mean, std over subsets).
    """
    a, b = _as_features("features_a", features_a), _as_features("features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a and features_b must have the same feature dimension, "
                         f"got {a.shape[1]} and {b.shape[1]}")
    subsets = check_int("subsets", subsets, 1)
    subset_size = check_int("subset_size", subset_size, 2)
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 rows in each set, got {a.shape[0]} and {b.shape[0]}")
    device = torch.device(device) if device is not None else a.device
    a, b = a.to(device, torch.float64), b.to(device, torch.float64)
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        ia = torch.randperm(a.shape[0], generator=g)[:m].to(device)
        ib = torch.randperm(b.shape[0], generator=g)[:m].to(device)
        values.append(mmd2_unbiased(a[ia], b[ib]))
    v = torch.stack(values).cpu().numpy()
    return KID(float(v.mean()), float(v.std()), subsets, m)
