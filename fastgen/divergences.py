"""Divergences between distributions, in nats: closed forms where they exist, Monte Carlo where not.

    kl_normal(mu_q, logvar_q[, mu_p, logvar_p])   KL(q || p) between diagonal Gaussians; p = N(0, I)
                                                   when omitted (the VAE's KL term)
    kl_categorical(p, q, logits=False)             KL(p || q) between categoricals (probabilities or logits)
    js_categorical(p, q, logits=False)             Jensen-Shannon divergence between categoricals, exact
    kl_monte_carlo(p, q, num_samples)              KL(p || q) for any pair with log_prob and (r)sample,
                                                   with its standard error
    js_monte_carlo(p, q, num_samples)              Jensen-Shannon for any such pair, with its standard error

Every function returns one value per distribution of the batch and takes ``reduction`` as torch's
losses do: "none" (that tensor), "mean" or "sum" over it. The arithmetic runs in float32 at least
(float64 is kept, so ``torch.autograd.gradcheck`` works); every result is differentiable with
respect to the tensors (or the distributions' parameters) it was computed from.

Conventions for categoricals: 0 log 0 = 0, so an outcome that p never produces contributes nothing,
and KL(p || q) = +inf where q gives probability 0 to an outcome p does produce. JS is always finite
(it is at most log 2). scipy's ``scipy.spatial.distance.jensenshannon`` returns the square root of
this JS divergence (the Jensen-Shannon distance); ``scipy.stats.entropy(p, q)`` is KL(p || q).
"""
from __future__ import annotations

import math

import torch

from ._validate import check_floating, check_int

__all__ = ["REDUCTIONS", "kl_normal", "kl_categorical", "js_categorical", "kl_monte_carlo", "js_monte_carlo"]

REDUCTIONS = ("none", "mean", "sum")
_LOG2 = math.log(2.0)


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


def _check_reduction(reduction: object) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


# --- Gaussians ------------------------------------------------------------------------------------------

def kl_normal(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor | None = None,
              logvar_p: torch.Tensor | None = None, *, event_dims: int = 1, reduction: str = "none") -> torch.Tensor:
    """KL(q || p) between diagonal Gaussians q = N(mu_q, diag exp(logvar_q)), p = N(mu_p, diag exp(logvar_p)).

    Closed form, per coordinate, with d = logvar_q - logvar_p:

        0.5 * (expm1(d) - d + (mu_q - mu_p)^2 * exp(-logvar_p))

    (the usual 0.5 * (var_q / var_p - 1 - log(var_q / var_p) + (mu_q - mu_p)^2 / var_p), written with
    expm1 so that q close to p, where the terms cancel, keeps its relative precision), summed over the
    last ``event_dims`` dimensions. With p omitted, p = N(0, I): 0.5 * (mu^2 + expm1(logvar) - logvar),
    the KL term of a VAE (Kingma & Welling 2014, appendix B).

    Args:
        mu_q, logvar_q: q's means and log-variances, floating tensors of one shape (..., *event),
            e.g. (B, latent_dim) with event_dims=1 or (B, C, H, W) with event_dims=3.
        mu_p, logvar_p: p's, both None (the standard normal) or both tensors broadcastable to mu_q's shape.
        event_dims: how many trailing dimensions one distribution spans (summed over), an int >= 0
            and <= mu_q.dim().
        reduction: "none" (shape mu_q.shape[:-event_dims]), "mean" or "sum" over those.

    Returns float32 (float64 for float64 inputs).
    """
    mu_q = check_floating("mu_q", mu_q, min_dim=0)
    logvar_q = check_floating("logvar_q", logvar_q, min_dim=0)
    if logvar_q.shape != mu_q.shape:
        raise ValueError(f"logvar_q must have the shape of mu_q {tuple(mu_q.shape)}, got {tuple(logvar_q.shape)}")
    event_dims = check_int("event_dims", event_dims, 0)
    if event_dims > mu_q.dim():
        raise ValueError(f"event_dims must be <= mu_q.dim() = {mu_q.dim()}, got {event_dims}")
    reduction = _check_reduction(reduction)
    if (mu_p is None) != (logvar_p is None):
        raise ValueError("mu_p and logvar_p must both be given (p = N(mu_p, exp(logvar_p))) or both be None "
                         "(p = N(0, I))")
    mu_q, logvar_q = _upcast(mu_q), _upcast(logvar_q)
    if mu_p is None:
        kl = 0.5 * (mu_q.square() + torch.expm1(logvar_q) - logvar_q)
    else:
        mu_p = check_floating("mu_p", mu_p, min_dim=0)
        logvar_p = check_floating("logvar_p", logvar_p, min_dim=0)
        for name, t in (("mu_p", mu_p), ("logvar_p", logvar_p)):
            try:
                shape = torch.broadcast_shapes(t.shape, mu_q.shape)
            except RuntimeError:
                shape = None
            if shape != mu_q.shape:
                raise ValueError(f"{name} must broadcast to mu_q's shape {tuple(mu_q.shape)}, got {tuple(t.shape)}")
        mu_p, logvar_p = mu_p.to(mu_q.dtype), logvar_p.to(mu_q.dtype)
        d = logvar_q - logvar_p
        kl = 0.5 * (torch.expm1(d) - d + (mu_q - mu_p).square() * torch.exp(-logvar_p))
    if event_dims:
        kl = kl.sum(dim=tuple(range(-event_dims, 0)))
    return _reduce(kl, reduction)


# --- categoricals ---------------------------------------------------------------------------------------

def _log_probs(name: str, x: object, logits: bool, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, log-probabilities) of a categorical given by probabilities or logits along ``dim``."""
    x = _upcast(check_floating(name, x, min_dim=1))
    if x.shape[dim] == 0:
        raise ValueError(f"{name} must have at least one category along dim={dim}, got shape {tuple(x.shape)}")
    if logits:
        if bool(torch.isnan(x).any()) or bool((x == math.inf).any()):
            raise ValueError(f"{name} (logits) must not hold NaN or +inf (-inf marks a category of probability 0)")
        logp = torch.log_softmax(x, dim=dim)
        return logp.exp(), logp
    if bool(torch.isnan(x).any()) or bool((x < 0).any()):
        raise ValueError(f"{name} must hold probabilities >= 0 (pass logits=True for logits)")
    total = x.sum(dim=dim)
    tol = 1e-10 if x.dtype == torch.float64 else 1e-4
    if x.numel() and not bool(((total - 1).abs() <= tol * x.shape[dim]).all()):
        worst = float((total - 1).abs().max())
        raise ValueError(f"{name} must sum to 1 along dim={dim} (probabilities; pass logits=True for logits), "
                         f"off by up to {worst:.3g}")
    # log of the positive entries only: torch.log(0) = -inf would send 0 / 0 = NaN into the gradient
    # of a zero-probability category (whose term is 0 whatever p does there)
    positive = x > 0
    logp = torch.where(positive, torch.log(torch.where(positive, x, torch.ones_like(x))),
                       torch.full_like(x, -math.inf))
    return x, logp


def _kl_terms(p: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """p * (log p - log q) with 0 log 0 = 0 and +inf where q = 0 < p. The difference is zeroed (not the
    product) where p = 0, so the unused -inf - -inf = NaN cannot reach a gradient through 0 * NaN."""
    diff = torch.where(p > 0, logp - logq, torch.zeros((), dtype=p.dtype, device=p.device))
    return p * diff


def _check_pair(p: torch.Tensor, q: torch.Tensor) -> None:
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    if p.device != q.device:
        raise ValueError(f"p is on {p.device} but q is on {q.device}; they must share a device")


def kl_categorical(p: torch.Tensor, q: torch.Tensor, *, logits: bool = False, dim: int = -1,
                   reduction: str = "none") -> torch.Tensor:
    """KL(p || q) = sum_i p_i (log p_i - log q_i) between categoricals along ``dim``, in nats.

    Args:
        p, q: floating tensors of one shape (..., K, ...): probabilities (>= 0, summing to 1 along
            ``dim``, checked) or, with ``logits=True``, unnormalised log-probabilities (-inf allowed:
            probability 0). Zeros are exact: 0 log 0 = 0, and the result is +inf where q_i = 0 < p_i.
        dim: the categories' dimension.
        reduction: "none" (p's shape without ``dim``), "mean" or "sum".

    Equals ``scipy.stats.entropy(p, q)`` and ``torch.distributions.kl_divergence(Categorical(p),
    Categorical(q))``. Returns float32 (float64 for float64 inputs).
    """
    reduction = _check_reduction(reduction)
    _check_pair(check_floating("p", p), check_floating("q", q))
    p, logp = _log_probs("p", p, logits, dim)
    _, logq = _log_probs("q", q, logits, dim)
    return _reduce(_kl_terms(p, logp, logq.to(logp.dtype)).sum(dim=dim), reduction)


def js_categorical(p: torch.Tensor, q: torch.Tensor, *, logits: bool = False, dim: int = -1,
                   reduction: str = "none") -> torch.Tensor:
    """The Jensen-Shannon divergence JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2, m = (p + q) / 2, in nats.

    Exact, symmetric, in [0, log 2], finite even where p and q have disjoint supports. Arguments
    as :func:`kl_categorical`. ``scipy.spatial.distance.jensenshannon(p, q)`` is its square root.
    Returns float32 (float64 for float64 inputs).
    """
    reduction = _check_reduction(reduction)
    _check_pair(check_floating("p", p), check_floating("q", q))
    p, logp = _log_probs("p", p, logits, dim)
    q, logq = _log_probs("q", q, logits, dim)
    logq = logq.to(logp.dtype)
    # log m = logaddexp(log p, log q) - log 2: exact where one of them underflows in probability space
    logm = torch.logaddexp(logp, logq) - _LOG2
    js = 0.5 * (_kl_terms(p, logp, logm) + _kl_terms(q.to(p.dtype), logq, logm)).sum(dim=dim)
    return _reduce(js, reduction)


# --- Monte Carlo ----------------------------------------------------------------------------------------

def _draw(dist, n: int, name: str) -> torch.Tensor:
    """n samples (n, *batch, *event) of ``dist``, reparameterised where it can be (gradients reach its
    parameters), else plain ``sample`` (no gradient through the samples)."""
    if getattr(dist, "has_rsample", hasattr(dist, "rsample")):
        return dist.rsample((n,))
    if hasattr(dist, "sample"):
        return dist.sample((n,))
    raise TypeError(f"{name} must have rsample or sample (a torch.distributions.Distribution), got {type(dist).__name__}")


def _check_dist(name: str, dist: object) -> None:
    if not callable(getattr(dist, "log_prob", None)):
        raise TypeError(f"{name} must have a log_prob method (a torch.distributions.Distribution), "
                        f"got {type(dist).__name__}")


class _Moments:
    """Running mean and sum of squared deviations of per-sample values along dim 0, merged chunk by chunk
    with Chan et al.'s pairwise update (never E[x^2] - E[x]^2, which cancels catastrophically)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, values: torch.Tensor) -> None:
        k = values.shape[0]
        mean = values.mean(dim=0)
        m2 = (values - mean).square().sum(dim=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = k, mean, m2
            return
        n = self.n + k
        delta = mean - self.mean
        self.mean = self.mean + delta * (k / n)
        self.m2 = self.m2 + m2 + delta.square() * (self.n * k / n)
        self.n = n

    def variance_of_mean(self) -> torch.Tensor:
        return self.m2 / ((self.n - 1) * self.n)


def _monte_carlo(terms, num_samples: int, chunk_size: int | None) -> _Moments:
    moments = _Moments()
    chunk = num_samples if chunk_size is None else chunk_size
    done = 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        moments.add(_upcast(terms(k)))
        done += k
    return moments


def _finish(estimate: torch.Tensor, var: torch.Tensor, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(estimate, standard error) after ``reduction``, from per-distribution estimates and the variances
    of those estimates; the errors of independent estimates add in quadrature in a sum or mean."""
    if reduction == "sum":
        return estimate.sum(), var.sum().sqrt()
    if reduction == "mean":
        return estimate.mean(), var.sum().sqrt() / max(var.numel(), 1)
    return estimate, var.sqrt()


def _check_mc_args(num_samples: object, chunk_size: object, reduction: object) -> tuple[int, int | None, str]:
    num_samples = check_int("num_samples", num_samples, 2, " (a standard error needs two samples)")
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, 1)
    return num_samples, chunk_size, _check_reduction(reduction)


def kl_monte_carlo(p, q, num_samples: int = 1000, *, chunk_size: int | None = None,
                   reduction: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """A Monte Carlo estimate of KL(p || q) = E_{x~p}[log p(x) - log q(x)], with its standard error.

    For any pair of objects with ``log_prob(x)`` and ``rsample(shape)`` (or ``sample``) of matching
    batch and event shapes, e.g. ``torch.distributions`` ones without a registered closed form
    (mixtures, transformed distributions). Samples are drawn with ``rsample`` where ``p`` has it,
    so the estimate is differentiable with respect to both distributions' parameters; from torch's
    default generator (seed it with ``torch.manual_seed`` for a repeatable estimate).

    Args:
        p, q: the distributions; q must give finite log-probabilities on p's samples.
        num_samples: samples per distribution of the batch, an int >= 2.
        chunk_size: draw and evaluate at most this many samples at a time (memory: chunk_size x batch
            values); None draws all at once. The result does not depend on it beyond the RNG stream.
        reduction: "none" (p's batch shape), "mean" or "sum" over the batch.

    Returns (estimate, standard error), float32 (float64 for float64 parameters): the error is the
    sample standard deviation of log p - log q over sqrt(num_samples), combined in quadrature
    over the batch for "mean" / "sum".
    """
    _check_dist("p", p)
    _check_dist("q", q)
    num_samples, chunk_size, reduction = _check_mc_args(num_samples, chunk_size, reduction)

    def terms(k: int) -> torch.Tensor:
        x = _draw(p, k, "p")
        return p.log_prob(x) - q.log_prob(x)

    moments = _monte_carlo(terms, num_samples, chunk_size)
    return _finish(moments.mean, moments.variance_of_mean(), reduction)


def js_monte_carlo(p, q, num_samples: int = 1000, *, chunk_size: int | None = None,
                   reduction: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """A Monte Carlo estimate of the Jensen-Shannon divergence, with its standard error, in nats.

    JS(p, q) = E_p[log p - log m] / 2 + E_q[log q - log m] / 2 with m = (p + q) / 2, log m(x) =
    logaddexp(log p(x), log q(x)) - log 2; each expectation over ``num_samples`` samples of its own
    distribution (independent, so the two errors add in quadrature). There is no closed form for
    JS between continuous distributions, not even between two Gaussians (their mixture m is not
    Gaussian): estimate it here; for categoricals use the exact :func:`js_categorical`.

    Arguments and returns as :func:`kl_monte_carlo`; both distributions need (r)sample.
    """
    _check_dist("p", p)
    _check_dist("q", q)
    num_samples, chunk_size, reduction = _check_mc_args(num_samples, chunk_size, reduction)

    def half(a, b, name):
        def terms(k: int) -> torch.Tensor:
            x = _draw(a, k, name)
            la, lb = a.log_prob(x), b.log_prob(x)
            return la - (torch.logaddexp(la, lb) - _LOG2)
        return _monte_carlo(terms, num_samples, chunk_size)

    mp, mq = half(p, q, "p"), half(q, p, "q")
    estimate = 0.5 * (mp.mean + mq.mean)
    return _finish(estimate, 0.25 * (mp.variance_of_mean() + mq.variance_of_mean()), reduction)
