"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric
for Assessing Generative Models").

Each set's manifold is the union of balls around its samples, the radius of a ball being the
distance to the sample's k-th nearest neighbour in its own set (the sample itself not counted).
Precision = fraction of fake samples inside the real manifold; recall = fraction of real samples
inside the fake manifold. "Inside" is ``distance <= radius``, as in the paper's code.

Distances come from ``torch.cdist`` in row blocks, so memory is (block rows x N), never N x N
(50k x 50k float32 would be 10 GB).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .._validate import check_int

__all__ = ["PrecisionRecall", "precision_recall", "knn_radii", "in_manifold"]

BLOCK_ELEMENTS = 1 << 24  # distance entries per block: 64 MB in float32


@dataclasses.dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    k: int


def _rows_per_block(n_cols: int, block_elements: int) -> int:
    return max(1, block_elements // max(n_cols, 1))


def knn_radii(features: torch.Tensor, k: int, block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """(N,) distance of each row of ``features`` (N, D) to its k-th nearest other row (k < N)."""
    n = features.shape[0]
    radii = []
    step = _rows_per_block(n, block_elements)
    for start in range(0, n, step):
        d = torch.cdist(features[start:start + step], features)
        # k + 1 smallest: the row's distance to itself (0, or round-off) is the first of them
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def in_manifold(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor,
                block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """(Q,) bool: is each query (Q, D) within ``radii[i]`` of some support row i ((S, D), radii (S,))?"""
    out = []
    step = _rows_per_block(support.shape[0], block_elements)
    for start in range(0, queries.shape[0], step):
        d = torch.cdist(queries[start:start + step], support)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real_features, fake_features, k: int = 3, device: torch.device | str | None = None,
                     block_elements: int = BLOCK_ELEMENTS) -> PrecisionRecall:
    """Precision and recall of ``fake_features`` (Nf, D) against ``real_features`` (Nr, D).

    Tensors or arrays, computed in float32 on ``device`` (default: real_features' device); the
    paper uses k = 3. Both sets need more than k rows.
    """
    k = check_int("k", k, 1)
    sets = []
    for name, x in (("real_features", real_features), ("fake_features", fake_features)):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            raise ValueError(f"{name} must be an (N, D) tensor or array, got {getattr(x, 'shape', type(x).__name__)}")
        if x.shape[0] <= k:
            raise ValueError(f"{name} needs more than k={k} rows for k-NN radii, got {x.shape[0]}")
        sets.append(x.detach())
    real, fake = sets
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real_features and fake_features must have the same dimension, "
                         f"got {real.shape[1]} and {fake.shape[1]}")
    device = torch.device(device) if device is not None else real.device
    real, fake = real.to(device, torch.float32), fake.to(device, torch.float32)
    real_radii, fake_radii = knn_radii(real, k, block_elements), knn_radii(fake, k, block_elements)
    precision = in_manifold(fake, real, real_radii, block_elements).sum().item() / fake.shape[0]
    recall = in_manifold(real, fake, fake_radii, block_elements).sum().item() / real.shape[0]
    return PrecisionRecall(precision, recall, k)
