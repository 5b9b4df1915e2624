"""Gradient penalties of GAN discriminators, and the regularised discriminator objective in one pass of D.

:func:`gradient_penalty` is the drop-in: the weighted penalty with a graph to D's parameters
(double backward), computed with the fused ops of :mod:`fastgen.ops.gradient_penalty`.

:func:`discriminator_objective` is the regularised D step's objective with the least work. The
textbook step runs D three times (real, fake, and again on the penalised points) and backpropagates
through three graphs. Here:

* R1 penalises D at the real samples themselves, so one D(real) serves both the loss and the
  penalty: two forwards instead of three, and one graph less to backpropagate (R2 likewise on the
  fakes). The penalised half keeps a forward of its own, so the gradient that
  ``autograd.grad(create_graph=True)`` builds (and the double backward through it) spans B
  samples, not the whole joined batch;
* the loss's real and fake samples go through D as one batch [real; fake] (WGAN-GP's interpolates
  keep their own forward, for the same reason).

Both give the textbook's loss, penalty and parameter gradients (the tests check it), as long as D
treats samples independently. A D with batch-statistics layers (BatchNorm) would see different
statistics in a joined batch; such a D gets separate forwards, as in the textbook (and a per-sample
gradient penalty is ill-defined for it anyway: Gulrajani et al. 2017, section 4).
"""
from __future__ import annotations

import torch

from .. import _validate
from ..ops import gradient_penalty as gp_ops
from . import losses

__all__ = ["gradient_penalty", "discriminator_objective", "PENALTY_KINDS"]

PENALTY_KINDS = gp_ops.PENALTY_KINDS


def _check_D(D) -> None:
    if not callable(D):
        raise TypeError(f"D must be a callable discriminator (an nn.Module), got {type(D).__name__}")


def _check_inputs(D, real, fake, kind: str, weight):
    kind, weight = gp_ops.check_kind(kind), gp_ops.check_weight(weight)
    _check_D(D)
    real = _validate.check_floating("real", real)
    if fake is None:
        if kind != "r1":
            raise ValueError(f"kind={kind!r} needs fake samples; only 'r1' works on real samples alone")
    else:
        fake = _validate.check_like("fake", fake, "real", real)
        if fake.dtype != real.dtype:
            raise TypeError(f"fake must have real's dtype {real.dtype}, got {fake.dtype}")
    return kind, weight, real, fake


def _per_sample_output(out: object, batch: int, name: str = "D") -> torch.Tensor:
    """D's output must be a floating tensor with one row per input sample (logits (B,), (B, 1) or a patch map)."""
    if not isinstance(out, torch.Tensor) or not out.dtype.is_floating_point:
        raise TypeError(f"{name} must return a floating tensor of logits, got "
                        f"{out.dtype if isinstance(out, torch.Tensor) else type(out).__name__}")
    if out.dim() == 0 or out.shape[0] != batch:
        raise ValueError(f"{name} must return one output per sample (batch {batch} first), got shape {tuple(out.shape)}")
    return out


def _penalised_points(kind: str, real, fake, alpha, generator, seed, impl):
    if kind in ("wgan-gp", "wgan-gp-one-sided"):
        return gp_ops.interpolate(real.detach(), fake.detach(), alpha, generator=generator, seed=seed, impl=impl)
    return (real if kind == "r1" else fake).detach()


def _penalty(kind: str, weight: float, out: torch.Tensor, points: torch.Tensor, impl: str) -> torch.Tensor:
    # The sum of D's outputs: d sum / d x_b is the gradient of sample b's output alone (a patch map
    # sums its patches, as the textbook implementations do).
    (grad,) = torch.autograd.grad(out.sum(), points, create_graph=True)
    return gp_ops.penalty_from_grad(grad, kind, weight, impl=impl)


def gradient_penalty(D, real: torch.Tensor, fake: torch.Tensor | None = None, kind: str = "wgan-gp",
                     weight: float = 10.0, alpha: torch.Tensor | None = None, *,
                     generator: torch.Generator | None = None, seed: int | torch.Tensor | None = None,
                     impl: str = "auto") -> torch.Tensor:
    """The weighted gradient penalty of discriminator ``D``, a float32 scalar with a graph to D's parameters.

    kind:
        "wgan-gp"            weight * mean (||grad D(x_hat)|| - 1)^2, x_hat = alpha real + (1 - alpha) fake
                             (Gulrajani et al. 2017);
        "wgan-gp-one-sided"  weight * mean max(||grad D(x_hat)|| - 1, 0)^2 (ibid., the one-sided variant);
        "r1"                 weight / 2 * mean ||grad D(real)||^2 (Mescheder et al. 2018);
        "r2"                 weight / 2 * mean ||grad D(fake)||^2.

    Args:
        D: the discriminator, ``D(x) -> logits`` with one row per sample ((B,), (B, 1) or a patch map).
        real, fake: (B, ...) samples of one shape, dtype and device (fake may be None for "r1").
            Both are detached: the penalty's gradient goes to D only.
        alpha: per-sample interpolation weights (B,) in [0, 1] for the WGAN-GP kinds; None draws
            them: inside the interpolation kernel from ``seed`` (an int or an int64 Philox state
            [seed, offset]; see :func:`fastgen.ops.interpolate`) when a seed is given, else with
            ``torch.rand`` from ``generator``. At most one of alpha, generator and seed.
        impl: implementation of the fused ops ("auto", "triton", "reference").
    """
    kind, weight, real, fake = _check_inputs(D, real, fake, kind, weight)
    points = _penalised_points(kind, real, fake, alpha, generator, seed, impl).requires_grad_(True)
    out = _per_sample_output(D(points), points.shape[0])
    return _penalty(kind, weight, out, points, impl)


def _has_batch_statistics(D) -> bool:
    """D mixes samples of a batch: batch norm, or a layer that says so (``uses_batch_statistics =
    True``, e.g. minibatch standard deviation): real and fake then need forwards of their own."""
    return isinstance(D, torch.nn.Module) and any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or getattr(m, "uses_batch_statistics", False)
        for m in D.modules())


def _real_fake_outputs(D, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """D(real), D(fake): one forward over [real; fake] unless D has batch statistics."""
    batch = real.shape[0]
    if _has_batch_statistics(D):
        return _per_sample_output(D(real.detach()), batch), _per_sample_output(D(fake.detach()), batch)
    joined = _per_sample_output(D(torch.cat([real.detach(), fake.detach()])), 2 * batch)
    return joined[:batch], joined[batch:]


def discriminator_objective(D, real: torch.Tensor, fake: torch.Tensor, *, loss: str = "ns",
                            penalty: str | None = None, weight: float = 10.0, gain: float = 1.0,
                            alpha: torch.Tensor | None = None, generator: torch.Generator | None = None,
                            seed: int | torch.Tensor | None = None, impl: str = "auto",
                            drift: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The discriminator's loss plus its penalty, with D run once over the joined batch.

    Returns ``(total, parts)``: total = discriminator_loss(D(real), D(fake), loss) + gain * penalty
    [+ drift * mean(D(real)^2)], parts = {"loss": ..., "penalty": ..., "drift": ...} (detached
    float32 scalars; "penalty" only with a penalty, "drift" only with drift > 0).
    ``gain`` is the lazy-regularisation factor (StyleGAN2: apply every k steps with gain k).
    ``drift`` is ProGAN's drift term weight (Karras et al. 2018, epsilon = 0.001: keeps a WGAN
    critic's outputs near 0), a number >= 0, applied on every call.
    ``fake`` should come from G under no_grad or be detached: D's step never trains G.
    Same arguments as :func:`gradient_penalty` otherwise; penalty None is the plain loss.
    """
    if isinstance(drift, bool) or not isinstance(drift, (int, float)) or not 0 <= drift < float("inf"):
        raise ValueError(f"drift must be a finite number >= 0, got {drift!r}")
    if penalty is None:
        _check_D(D)
        real = _validate.check_floating("real", real)
        fake = _validate.check_like("fake", fake, "real", real)
        real_out, fake_out = _real_fake_outputs(D, real, fake)
        d_loss = losses.discriminator_loss(real_out, fake_out, loss)
        return _with_drift(d_loss, {"loss": d_loss.detach()}, real_out, drift)
    kind, weight, real, fake = _check_inputs(D, real, fake, penalty, weight)
    if fake is None:
        raise ValueError("discriminator_objective needs fake samples for the loss")
    if not isinstance(gain, (int, float)) or isinstance(gain, bool) or gain < 0:
        raise ValueError(f"gain must be a number >= 0, got {gain!r}")
    batch = real.shape[0]
    points = _penalised_points(kind, real, fake, alpha, generator, seed, impl).requires_grad_(True)
    penalised = _per_sample_output(D(points), batch)
    if kind == "r1":
        real_out, fake_out = penalised, _per_sample_output(D(fake.detach()), batch)
    elif kind == "r2":
        real_out, fake_out = _per_sample_output(D(real.detach()), batch), penalised
    else:
        real_out, fake_out = _real_fake_outputs(D, real, fake)
    pen = _penalty(kind, weight, penalised, points, impl)
    d_loss = losses.discriminator_loss(real_out, fake_out, loss)
    total = d_loss + gain * pen
    return _with_drift(total, {"loss": d_loss.detach(), "penalty": pen.detach()}, real_out, drift)


def _with_drift(total: torch.Tensor, parts: dict, real_out: torch.Tensor, drift: float):
    if not drift:
        return total, parts
    term = drift * real_out.to(torch.promote_types(real_out.dtype, torch.float32)).square().mean()
    parts["drift"] = term.detach()
    return total + term, parts
