"""fastgen.divergences against scipy and torch.distributions, with float64 gradchecks."""
import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, kl_divergence

from fastgen import divergences as dv


def _normal(mu, logvar, event_dims=1):
    return Independent(Normal(mu, torch.exp(0.5 * logvar)), event_dims)


def _probs(*shape, zeros=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64) * 2, dim=-1)
    for idx in zeros:
        p[idx] = 0
    return p / p.sum(-1, keepdim=True)


# --- Gaussians ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,event_dims", [((5, 3), 1), ((1, 1), 1), ((2, 3, 4, 5), 3), ((7,), 0)])
def test_kl_normal_matches_torch_distributions(shape, event_dims):
    g = torch.Generator().manual_seed(1)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(4))
    ours = dv.kl_normal(mu_q, lv_q, mu_p, lv_p, event_dims=event_dims)
    ref = kl_divergence(_normal(mu_q, lv_q, event_dims), _normal(mu_p, lv_p, event_dims))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    std = kl_divergence(_normal(mu_q, lv_q, event_dims),
                        _normal(torch.zeros_like(mu_q), torch.zeros_like(lv_q), event_dims))
    torch.testing.assert_close(dv.kl_normal(mu_q, lv_q, event_dims=event_dims), std, rtol=1e-12, atol=1e-12)


def test_kl_normal_reductions_broadcast_and_precision():
    mu, lv = torch.randn(6, 4), torch.randn(6, 4)
    per = dv.kl_normal(mu, lv)
    torch.testing.assert_close(dv.kl_normal(mu, lv, reduction="mean"), per.mean())
    torch.testing.assert_close(dv.kl_normal(mu, lv, reduction="sum"), per.sum())
    # p broadcast from (4,): the same as expanded
    mp, lp = torch.randn(4), torch.randn(4)
    torch.testing.assert_close(dv.kl_normal(mu, lv, mp, lp), dv.kl_normal(mu, lv, mp.expand(6, 4), lp.expand(6, 4)))
    # q next to p: expm1 keeps the relative precision that var_q/var_p - 1 - log(..) loses in float32
    tiny = torch.full((1, 1), 1e-4)
    exact = 0.5 * (math.expm1(1e-4) - 1e-4)
    assert abs(float(dv.kl_normal(torch.zeros(1, 1), tiny)) - exact) / exact < 1e-3
    assert dv.kl_normal(torch.zeros(3, 2, dtype=torch.float16), torch.zeros(3, 2, dtype=torch.float16)).dtype \
        == torch.float32


def test_kl_normal_gradcheck():
    g = torch.Generator().manual_seed(2)
    args = [torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(lambda a, b, c, d: dv.kl_normal(a, b, c, d), args)
    assert torch.autograd.gradcheck(lambda a, b: dv.kl_normal(a, b, reduction="sum"), args[:2])


def test_kl_normal_bad_input():
    mu = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="logvar_q"):
        dv.kl_normal(mu, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="mu_p and logvar_p"):
        dv.kl_normal(mu, mu, mu_p=mu)
    with pytest.raises(ValueError, match="mu_p"):
        dv.kl_normal(mu, mu, torch.zeros(5), torch.zeros(3))
    with pytest.raises(ValueError, match="event_dims"):
        dv.kl_normal(mu, mu, event_dims=3)
    with pytest.raises(ValueError, match="reduction"):
        dv.kl_normal(mu, mu, reduction="batchmean")
    with pytest.raises(TypeError, match="mu_q"):
        dv.kl_normal(torch.zeros(2, 3, dtype=torch.int64), mu)


# --- categoricals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 7, 33])
def test_kl_categorical_matches_scipy_and_torch(k):
    p, q = _probs(4, k, seed=3), _probs(4, k, seed=4)
    ref = scipy.stats.entropy(p.numpy(), q.numpy(), axis=-1)
    np.testing.assert_allclose(dv.kl_categorical(p, q).numpy(), ref, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(dv.kl_categorical(p, q), kl_divergence(Categorical(p), Categorical(q)))
    logit_p, logit_q = torch.log(p) + 3.0, torch.log(q) - 1.0   # unnormalised logits
    np.testing.assert_allclose(dv.kl_categorical(logit_p, logit_q, logits=True).numpy(), ref, rtol=1e-10, atol=1e-13)


def test_kl_categorical_zeros():
    p = _probs(3, 5, zeros=[(0, 1), (1, 1), (2, 0)], seed=5)
    q = _probs(3, 5, zeros=[(1, 1), (2, 3)], seed=6)
    ours = dv.kl_categorical(p, q)
    # row 0: p = 0 where q > 0 -> finite; row 1: both 0 -> 0 log 0 = 0; row 2: q = 0 < p -> +inf
    ref = scipy.stats.entropy(p.numpy(), q.numpy(), axis=-1)
    assert math.isinf(ref[2]) and math.isinf(float(ours[2])) and float(ours[2]) > 0
    np.testing.assert_allclose(ours[:2].numpy(), ref[:2], rtol=1e-10)
    logits = dv.kl_categorical(torch.log(p), torch.log(q), logits=True)
    np.testing.assert_allclose(logits[:2].numpy(), ref[:2], rtol=1e-10)
    assert math.isinf(float(logits[2]))
    # the gradient where p = 0 stays finite (no 0 * NaN leaking through the unused branch)
    lp = torch.log(p[:2]).requires_grad_(True)
    dv.kl_categorical(lp, torch.log(q[:2]), logits=True).sum().backward()
    assert torch.isfinite(lp.grad).all()
    # and from probabilities: a zero-probability category gets gradient 0, never NaN
    pp, qq = p[:2].clone().requires_grad_(True), q[:2].clone().requires_grad_(True)
    for f in (dv.kl_categorical, dv.js_categorical):
        dp, dq = torch.autograd.grad(f(pp, qq).sum(), (pp, qq))
        assert torch.isfinite(dp).all() and torch.isfinite(dq).all()
        assert (dp[pp == 0] == 0).all()


def test_kl_categorical_dim_and_reduction():
    p, q = _probs(2, 4, 3, seed=7), _probs(2, 4, 3, seed=8)
    pt, qt = p.transpose(1, 2), q.transpose(1, 2)    # categories along dim 1
    torch.testing.assert_close(dv.kl_categorical(pt, qt, dim=1), dv.kl_categorical(p, q))
    torch.testing.assert_close(dv.kl_categorical(p, q, reduction="mean"), dv.kl_categorical(p, q).mean())


def test_js_categorical_matches_scipy():
    p = _probs(5, 6, zeros=[(0, 2), (3, 0)], seed=9)
    q = _probs(5, 6, zeros=[(0, 2), (1, 4)], seed=10)
    ref = scipy.spatial.distance.jensenshannon(p.numpy(), q.numpy(), axis=-1) ** 2   # scipy returns sqrt(JS), nats
    np.testing.assert_allclose(dv.js_categorical(p, q).numpy(), ref, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(dv.js_categorical(torch.log(p), torch.log(q), logits=True).numpy(), ref,
                               rtol=1e-9, atol=1e-14)
    # disjoint supports: exactly log 2
    a, b = torch.tensor([[0.5, 0.5, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.25, 0.75]])
    torch.testing.assert_close(dv.js_categorical(a, b), torch.tensor([math.log(2)]))
    torch.testing.assert_close(dv.js_categorical(p, q), dv.js_categorical(q, p))


def test_categorical_gradcheck():
    g = torch.Generator().manual_seed(11)
    a, b = (torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda x, y: dv.kl_categorical(x, y, logits=True), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: dv.js_categorical(x, y, logits=True), (a, b))
    # probabilities: perturbations leave the simplex, which the functions do not require of gradients
    p = _probs(2, 4, seed=12).requires_grad_(True)
    q = _probs(2, 4, seed=13).requires_grad_(True)
    f = lambda x, y: dv.kl_categorical(x / x.sum(-1, keepdim=True), y / y.sum(-1, keepdim=True))
    assert torch.autograd.gradcheck(f, (p, q))


def test_categorical_bad_input():
    p = _probs(2, 3)
    with pytest.raises(ValueError, match="p and q must have the same shape"):
        dv.kl_categorical(p, _probs(2, 4))
    with pytest.raises(ValueError, match="q must hold probabilities >= 0"):
        dv.kl_categorical(p, p - 0.5)
    with pytest.raises(ValueError, match="p must sum to 1"):
        dv.js_categorical(p * 2, p)
    with pytest.raises(ValueError, match="logits"):
        dv.kl_categorical(torch.full((1, 3), math.nan), p[:1], logits=True)
    with pytest.raises(ValueError, match="reduction"):
        dv.js_categorical(p, p, reduction="avg")


# --- Monte Carlo ----------------------------------------------------------------------------------------

def test_kl_monte_carlo_matches_closed_form_within_its_error():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(14)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in range(4))
    q, p = _normal(mu_q, lv_q), _normal(mu_p, lv_p)
    exact = kl_divergence(q, p)
    est, se = dv.kl_monte_carlo(q, p, 4000, chunk_size=1500)
    assert est.shape == se.shape == (6,) and bool((se > 0).all())
    assert float(((est - exact) / se).abs().max()) < 4.5
    est_m, se_m = dv.kl_monte_carlo(q, p, 4000, reduction="mean")
    assert abs(float(est_m - exact.mean())) < 4.5 * float(se_m)
    # the standard error shrinks as 1 / sqrt(n)
    _, se_small = dv.kl_monte_carlo(q, p, 400)
    ratio = float((se_small / se).mean())
    assert 2.5 < ratio < 4.0, ratio


def test_kl_monte_carlo_no_closed_form_and_gradcheck():
    """A mixture (torch has no closed-form KL for it) against a brute-force quadrature."""
    torch.manual_seed(1)
    mix = MixtureSameFamily(Categorical(torch.tensor([0.3, 0.7], dtype=torch.float64)),
                            Normal(torch.tensor([-1.0, 2.0], dtype=torch.float64), torch.tensor([0.5, 1.0], dtype=torch.float64)))
    ref_dist = Normal(torch.tensor(0.5, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64))
    grid = torch.linspace(-12, 14, 200001, dtype=torch.float64)
    dens = mix.log_prob(grid).exp()
    exact = torch.trapezoid(dens * (mix.log_prob(grid) - ref_dist.log_prob(grid)), grid)
    est, se = dv.kl_monte_carlo(mix, ref_dist, 20000)   # the mixture has no rsample: plain samples
    assert abs(float(est - exact)) < 4.5 * float(se)

    def f(mu, log_sigma):
        torch.manual_seed(2)   # the same draws on every call of gradcheck
        return dv.kl_monte_carlo(Normal(mu, log_sigma.exp()), Normal(0.0, 1.0), 50)[0]

    args = (torch.randn(3, dtype=torch.float64, requires_grad=True), torch.randn(3, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(f, args)


def test_js_monte_carlo():
    torch.manual_seed(3)
    # two Gaussians: no closed form; compare with quadrature of the exact mixture density
    p = Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    q = Normal(torch.tensor(1.5, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64))
    grid = torch.linspace(-15, 15, 200001, dtype=torch.float64)
    lp, lq = p.log_prob(grid), q.log_prob(grid)
    lm = torch.logaddexp(lp, lq) - math.log(2)
    exact = 0.5 * torch.trapezoid(lp.exp() * (lp - lm) + lq.exp() * (lq - lm), grid)
    est, se = dv.js_monte_carlo(p, q, 20000, chunk_size=7000)
    assert abs(float(est - exact)) < 4.5 * float(se)
    assert 0 < float(est) < math.log(2)
    # categoricals through the Monte Carlo path agree with the exact one
    pc, qc = Categorical(_probs(4, seed=15)), Categorical(_probs(4, seed=16))
    est_c, se_c = dv.js_monte_carlo(pc, qc, 20000)
    assert abs(float(est_c - dv.js_categorical(pc.probs, qc.probs))) < 4.5 * float(se_c)


def test_monte_carlo_bad_input():
    p = Normal(0.0, 1.0)
    with pytest.raises(ValueError, match="num_samples"):
        dv.kl_monte_carlo(p, p, 1)
    with pytest.raises(ValueError, match="chunk_size"):
        dv.js_monte_carlo(p, p, 10, chunk_size=0)
    with pytest.raises(TypeError, match="q must have a log_prob"):
        dv.kl_monte_carlo(p, object(), 10)
