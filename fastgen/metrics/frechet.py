"""The Fréchet distance between two Gaussians, as FID computes it (Heusel et al. 2017).

    d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))

computed as pytorch-fid's ``calculate_frechet_distance`` does, so numbers agree with it: float64,
``scipy.linalg.sqrtm`` of the product; where that product is singular enough for sqrtm to return
non-finite values (rank-deficient covariances, e.g. fewer samples than feature dimensions) both
covariances get ``eps`` added to their diagonals; an imaginary part from round-off is dropped when
its diagonal is within 1e-3 of zero, and is an error otherwise.
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["frechet_distance"]

# pytorch-fid's tolerance on the imaginary part of the diagonal of sqrtm(sigma1 sigma2)
IMAGINARY_ATOL = 1e-3


def _as_float64(name: str, x, ndim: int) -> np.ndarray:
    try:
        import torch
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a requirement
        pass
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return a


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: (D,) means (numpy arrays or tensors, any real dtype; computed in float64).
        sigma1, sigma2: (D, D) covariances (symmetric positive semi-definite).
        eps: added to both diagonals when sqrtm of the product is not finite (pytorch-fid's 1e-6).
    Returns:
        the distance as a Python float (FID when the statistics are Inception pool3 features).
    Raises:
        ValueError: shapes that disagree, non-finite input, or a square root whose imaginary part
            is not round-off (the covariances are then not valid covariances).
    """
    try:
        from scipy import linalg
    except ImportError as exc:
        raise ImportError("frechet_distance needs scipy (scipy.linalg.sqrtm, as pytorch-fid): "
                          "pip install 'fastgen[metrics]'") from exc

    mu1, mu2 = _as_float64("mu1", mu1, 1), _as_float64("mu2", mu2, 1)
    sigma1, sigma2 = _as_float64("sigma1", sigma1, 2), _as_float64("sigma2", sigma2, 2)
    d = mu1.shape[0]
    if mu2.shape != (d,):
        raise ValueError(f"mu1 and mu2 must have the same shape, got {mu1.shape} and {mu2.shape}")
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must be ({d}, {d}) to match the means, got {s.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"frechet_distance: sqrtm(sigma1 sigma2) is singular; adding {eps} to the diagonals")
        offset = np.eye(d) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAGINARY_ATOL):
            raise ValueError(f"frechet_distance: sqrtm(sigma1 sigma2) has an imaginary part of "
                             f"{np.max(np.abs(covmean.imag)):.3g}; are sigma1 and sigma2 covariance matrices?")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
