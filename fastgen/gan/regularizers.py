"""Regularizers of GAN discriminators that are not gradient penalties: lazy regularization and spectral norm.

The gradient penalties (WGAN-GP, R1, R2) live in :mod:`fastgen.gan.penalty`; :class:`LazyRegularization`
says when to apply them and with which gain.
"""
from __future__ import annotations

import torch.nn as nn
from torch.nn.utils import parametrize

from .._validate import check_int
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["LazyRegularization", "apply_spectral_norm", "SPECTRAL_NORM_LAYERS"]

# Every layer whose weight is a linear map of its input. torch's spectral_norm reshapes the weight to
# (output channels, -1): dim 0 for these, dim 1 for the transposed convolutions, whose weight is
# (in, out, *kernel).
SPECTRAL_NORM_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                        nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class LazyRegularization:
    """When to apply a discriminator (or path-length) regularizer, and how to correct for applying it rarely.

    Karras et al. 2020 (StyleGAN2, "Analyzing and improving the image quality of StyleGAN",
    section 3.1): computing R1 only once every ``interval`` minibatches costs little
    quality and saves most of its (double backward) cost. The penalty is then multiplied by
    ``gain = interval`` so that its average strength is unchanged. StyleGAN2 takes a separate
    optimizer step on the penalty, so the regularised network takes interval + 1 steps where it
    took interval; :meth:`adjust_optimizer` corrects Adam for that. When ``gain * penalty`` is
    instead added to the loss of a regular step (as
    :func:`fastgen.gan.penalty.discriminator_objective` does), no step is added and the optimizer
    needs no correction.

    Args:
        interval: regularise every ``interval`` steps, an int >= 1 (1: every step, StyleGAN2 uses 16
            for R1 on D and 4 for path-length regularization on G).

    Example (StyleGAN2's schedule, the penalty in a step of its own)::

        lazy = LazyRegularization(16)
        lr, betas = lazy.adjust_optimizer(0.002, (0.0, 0.99))
        opt = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
        ...
        if lazy.due(step):
            opt.zero_grad()
            (lazy.gain * gradient_penalty(D, real, kind="r1")).backward()
            opt.step()
    """

    def __init__(self, interval: int):
        self.interval = check_int("interval", interval, 1, " (regularise every `interval` steps)")

    def __repr__(self) -> str:
        return f"LazyRegularization(interval={self.interval})"

    @property
    def gain(self) -> int:
        """The factor the penalty is multiplied by when it is applied every ``interval`` steps (= interval)."""
        return self.interval

    def due(self, step: int) -> bool:
        """True on the steps that regularise: step % interval == 0 (so step 0 does), step an int >= 0."""
        return check_int("step", step, 0) % self.interval == 0

    def adjust_optimizer(self, lr: float, betas: tuple[float, float]) -> tuple[float, tuple[float, float]]:
        """StyleGAN2's correction of Adam's hyper-parameters for regularization steps of their own.

        With c = interval / (interval + 1): returns (lr * c, (beta1 ** c, beta2 ** c)), so that
        interval + 1 optimizer steps move as far, and forget as fast, as interval steps would
        without lazy regularization (``mb_ratio`` in the official StyleGAN2 / StyleGAN2-ADA training loop).

        Args:
            lr: the learning rate, a number > 0.
            betas: Adam's (beta1, beta2), each in [0, 1).
        """
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be a number > 0, got {lr!r}")
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"betas must be a pair (beta1, beta2) of numbers in [0, 1), got {betas!r}")
        c = self.interval / (self.interval + 1)
        return lr * c, (betas[0] ** c, betas[1] ** c)


def apply_spectral_norm(module: nn.Module, n_power_iterations: int = 1, eps: float = 1e-12) -> nn.Module:
    """Spectral normalization of every linear and convolution layer in ``module``, in place.

    Miyato et al. 2018 ("Spectral normalization for generative adversarial networks"): each weight
    W is replaced by W / sigma(W), sigma the largest singular value of W reshaped to (output
    channels, -1), estimated by power iteration whose vector persists across calls. This registers
    torch's parametrization (``torch.nn.utils.parametrizations.spectral_norm``) on every layer of
    :data:`SPECTRAL_NORM_LAYERS` found recursively in ``module``, ``module`` itself included. In
    train mode each forward runs ``n_power_iterations`` iterations and updates the estimate; in eval
    mode the stored estimate is used. The original weight becomes
    ``layer.parametrizations.weight.original`` (state-dict keys change accordingly); its dtype and
    device are unchanged. Double backward works through it, so spectral norm combines with
    gradient penalties.

    Args:
        module: the network (typically a discriminator). Its weights should be initialised first:
            the parametrization runs 15 power iterations on the weight it finds.
        n_power_iterations: power iterations per training forward, an int >= 1 (the paper uses 1).
        eps: added to norms in the power iteration to avoid division by zero, a number > 0.

    Returns ``module``. Raises ValueError if it contains no such layer (to not silently do nothing)
    or if a layer's weight is already parametrized (e.g. spectral norm applied twice).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    n_power_iterations = check_int("n_power_iterations", n_power_iterations, 1)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}")
    # Collected before registering anything: a parametrization adds submodules of its own.
    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, SPECTRAL_NORM_LAYERS)]
    if not layers:
        kinds = ", ".join(t.__name__ for t in SPECTRAL_NORM_LAYERS)
        raise ValueError(f"module ({type(module).__name__}) contains no layer to normalise (none of {kinds})")
    for name, m in layers:
        if parametrize.is_parametrized(m, "weight"):
            raise ValueError(f"the weight of layer {name or '(module itself)'!r} is already parametrized "
                             "(spectral norm applied twice?)")
    for _, m in layers:
        spectral_norm(m, n_power_iterations=n_power_iterations, eps=eps)
    return module
