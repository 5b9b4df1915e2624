"""Invertible 1x1 convolution with an LU-decomposed weight (Kingma & Dhariwal 2018, Glow, section 3.2)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import check_flow_input

__all__ = ["InvConv1x1"]


class InvConv1x1(nn.Module):
    """y[:, :, i, j] = W @ x[:, :, i, j] with W = P @ L @ (U + diag(sign * exp(log_s))).

    P is a fixed permutation (a buffer), L unit lower triangular and U strictly upper triangular
    (parameters masked to their triangles), ``sign`` fixed (a buffer) and ``log_s`` a parameter, so
    log|det W| = sum(log_s) and the layer's log-determinant, H * W * sum(log_s), costs O(C) instead
    of the O(C^3) of ``slogdet``. Initialised from the LU factors of a random orthogonal matrix
    (QR of a Gaussian one, drawn from torch's global generator), as in Glow.

    Args:
        channels: C.
    forward(x): x (B, C, H, W) floating -> (y, logdet (B,)) in x's dtype.
    inverse(y): x = W^{-1} y, with W^{-1} = U'^{-1} L^{-1} P^T from two triangular solves.
    weight(): the assembled (C, C) matrix W.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign", torch.sign(diag).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(diag.abs()).float())

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, U') with L unit lower and U' = U + diag(sign * exp(log_s)) upper triangular."""
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * torch.exp(self.log_s))
        return lower, upper

    def weight(self) -> torch.Tensor:
        """The (C, C) matrix W = P L U'."""
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = check_flow_input("x", x, self.channels)
        y = F.conv2d(x, self.weight().to(x.dtype).view(self.channels, self.channels, 1, 1))
        logdet = (x.shape[2] * x.shape[3]) * self.log_s.sum().to(x.dtype)
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = check_flow_input("y", y, self.channels)
        lower, upper = self._factors()
        # W^{-1} = U'^{-1} L^{-1} P^T: triangular solves, better conditioned than inverting W itself
        lower_inv = torch.linalg.solve_triangular(lower, torch.eye(self.channels, dtype=lower.dtype, device=lower.device),
                                                  upper=False, unitriangular=True)
        w_inv = torch.linalg.solve_triangular(upper, lower_inv, upper=True) @ self.perm.T
        return F.conv2d(y, w_inv.to(y.dtype).view(self.channels, self.channels, 1, 1))

    def extra_repr(self) -> str:
        return f"{self.channels}"
