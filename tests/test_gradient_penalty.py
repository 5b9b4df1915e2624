"""fastgen.ops.gradient_penalty and fastgen.gan.penalty: every implementation against the reference,
first and second order gradients, the textbook WGAN-GP / R1 / R2 (same alpha) for the value and D's
parameter gradients, opcheck, and bad input."""
import pytest
import torch
import torch.nn as nn

from fastgen.gan import penalty as gp
from fastgen.gan.losses import discriminator_loss
from fastgen.ops import gradient_penalty as ops
from helpers import KERNEL_DTYPES, assert_close

SHAPES = [
    ((1, 1, 1, 1), False),  # minimal
    ((2, 3, 5, 7), False),  # odd sizes
    ((3, 4, 8, 8), True),  # channels_last
    ((5, 2), False),  # 2-D toy data
    ((2, 3, 1100), False),  # a sample wider than one 1024 block
]


def impls():
    """The implementations that can run here: reference always, triton on CUDA or under the interpreter."""
    from fastgen import _impl

    out = [pytest.param("reference", id="reference")]
    reason = _impl.unavailable_reason("triton", torch.device("cpu"))
    out.append(pytest.param("triton", id="triton", marks=[pytest.mark.skip(reason=f"triton: {reason}")] if reason else []))
    return out


def make(shape, channels_last, dtype=torch.float32):
    x = torch.randn(shape).to(dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("impl", impls())
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("shape,channels_last", SHAPES)
def test_interpolate_matches_reference(impl, dtype, shape, channels_last):
    real, fake = make(shape, channels_last, dtype), make(shape, channels_last, dtype)
    alpha = torch.rand(shape[0])
    out = ops.interpolate(real, fake, alpha, impl=impl)
    assert out.dtype == dtype and out.stride() == real.stride()
    assert_close(out, ops.interpolate_ref(real, fake, alpha), dtype)
    # the textbook formula in float64, independent of the reference
    expected = alpha.double().view((-1,) + (1,) * (len(shape) - 1)) * real.double() + \
        (1 - alpha.double().view((-1,) + (1,) * (len(shape) - 1))) * fake.double()
    assert_close(out.double(), expected, dtype)


@pytest.mark.parametrize("impl", impls())
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("shape,channels_last", SHAPES)
def test_sum_of_squares_and_its_gradient_match_reference(impl, dtype, shape, channels_last):
    g = make(shape, channels_last, dtype).requires_grad_(True)
    n = ops.grad_sum_of_squares(g, impl=impl)
    expected = g.detach().double().flatten(1).pow(2).sum(1)
    assert n.dtype == torch.float32 and n.shape == (shape[0],)
    assert_close(n.double(), expected, torch.float32, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(shape[0])
    (grad,) = torch.autograd.grad(n, g, upstream)
    expected_grad = 2 * upstream.double().view((-1,) + (1,) * (len(shape) - 1)) * g.detach().double()
    assert grad.dtype == dtype
    assert_close(grad.double(), expected_grad, dtype)


@pytest.mark.parametrize("impl", impls())
def test_interpolate_gradients_reach_real_and_fake(impl):
    real, fake = torch.randn(3, 2, 5, requires_grad=True), torch.randn(3, 2, 5, requires_grad=True)
    alpha = torch.tensor([0.0, 0.3, 1.0])
    out = ops.interpolate(real, fake, alpha, impl=impl)
    upstream = torch.randn_like(out)
    d_real, d_fake = torch.autograd.grad(out, (real, fake), upstream)
    assert_close(d_real, alpha.view(3, 1, 1) * upstream, name="d real")
    assert_close(d_fake, (1 - alpha).view(3, 1, 1) * upstream, name="d fake")


# --- alpha drawn inside the kernel from a Philox seed ------------------------------------------------

def test_philox_uniform_is_the_box_muller_word_of_the_normal_stream_and_uniform():
    import math

    from fastgen import _rng

    state = torch.tensor([1234, 6], dtype=torch.int64)  # an even offset: pairs (k, k + 1) share one draw
    u = _rng.philox_uniform_ref(state, 200_000).double()
    z = _rng.philox_normal_ref(state, 200_000).double()
    assert 0.0 < float(u.min()) and float(u.max()) < 1.0
    # Box-Muller on each pair (z_k, z_k+1), k even: radius^2 = -2 log u_k, angle = 2 pi u_k+1
    assert_close(z[0::2] ** 2 + z[1::2] ** 2, -2.0 * u[0::2].log(), rtol=1e-5, atol=1e-5, name="radius")
    angle = torch.atan2(z[1::2], z[0::2]) % (2 * math.pi)
    wrapped = (angle - 2 * math.pi * u[1::2] + math.pi) % (2 * math.pi) - math.pi
    assert float(wrapped.abs().max()) < 1e-3
    # 10 equal bins of 200k uniforms: chi-square with 9 dof, 1e-4 tail at 33.7
    counts = torch.histc(u.float(), bins=10, min=0.0, max=1.0)
    chi2 = float(((counts - 20_000) ** 2 / 20_000).sum())
    assert chi2 < 33.7, chi2


@pytest.mark.parametrize("impl", impls())
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("shape,channels_last", SHAPES)
def test_interpolate_with_seed_draws_alpha_in_kernel(impl, dtype, shape, channels_last):
    real, fake = make(shape, channels_last, dtype), make(shape, channels_last, dtype)
    state = torch.tensor([987654321, 11], dtype=torch.int64)
    out, alpha = ops._interpolate_seeded_op(real, fake, state, impl)
    expected_alpha = ops.draw_alpha(shape[0], real.device, seed=state)
    assert alpha.dtype == torch.float32 and torch.equal(alpha, expected_alpha)  # exact: 24-bit uniforms
    assert out.dtype == dtype and out.stride() == real.stride()
    assert_close(out, ops.interpolate_ref(real, fake, expected_alpha), dtype)
    assert_close(ops.interpolate(real, fake, seed=state, impl=impl), out, dtype, rtol=0, atol=0)


@pytest.mark.parametrize("impl", impls())
def test_seeded_alpha_depends_on_seed_and_offset_and_gradients_use_it(impl):
    real, fake = torch.randn(6, 2, 5, requires_grad=True), torch.randn(6, 2, 5, requires_grad=True)
    a = ops.draw_alpha(6, real.device, seed=5)
    assert len(set(a.tolist())) == 6  # one weight per sample, not one per batch
    assert not torch.equal(a, ops.draw_alpha(6, real.device, seed=6))
    # offset o: alpha_b is stream position o + b
    shifted = ops.draw_alpha(6, real.device, seed=torch.tensor([5, 2], dtype=torch.int64))
    assert torch.equal(shifted[:4], a[2:])
    out = ops.interpolate(real, fake, seed=5, impl=impl)
    upstream = torch.randn_like(out)
    d_real, d_fake = torch.autograd.grad(out, (real, fake), upstream)
    assert_close(d_real, a.view(6, 1, 1) * upstream, name="d real")
    assert_close(d_fake, (1 - a).view(6, 1, 1) * upstream, name="d fake")


def test_seeded_interpolate_gradcheck_float64():
    real = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    fake = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r, f: ops.interpolate(r, f, seed=7), (real, fake))
    assert torch.autograd.gradgradcheck(lambda r, f: ops.interpolate(r, f, seed=7) ** 2, (real, fake))


@pytest.mark.parametrize("impl", impls())
def test_gradient_penalty_with_seed_equals_given_alpha(impl):
    D = make_critic().float()
    real, fake = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    alpha = ops.draw_alpha(4, real.device, seed=99)
    got = gp.gradient_penalty(D, real, fake, kind="wgan-gp", seed=99, impl=impl)
    expected = textbook_penalty(D, real, fake, "wgan-gp", 10.0, alpha)
    assert_close(got, expected, rtol=2e-4, atol=1e-5, name="penalty")
    for a, b in zip(param_grads(D, got), param_grads(D, expected)):
        assert_close(a, b, rtol=2e-4, atol=1e-5, name="D parameter gradient")
    total, parts = gp.discriminator_objective(D, real, fake, loss="wgan", penalty="wgan-gp", seed=99, impl=impl)
    assert_close(parts["penalty"], expected.detach(), rtol=2e-4, atol=1e-5, name="objective's penalty")


def test_gradcheck_and_gradgradcheck_float64():
    g = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    for kind in ops.PENALTY_KINDS:
        f = lambda x, kind=kind: ops.penalty_from_grad(x, kind, 3.0)  # noqa: E731
        assert torch.autograd.gradcheck(f, (g,))
        assert torch.autograd.gradgradcheck(f, (g,))
    real = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    fake = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    alpha = torch.rand(3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda r, f: ops.interpolate(r, f, alpha), (real, fake))
    assert torch.autograd.gradgradcheck(lambda r, f: ops.interpolate(r, f, alpha) ** 2, (real, fake))


@pytest.mark.parametrize("impl", impls())
def test_second_order_of_kernels_matches_reference(impl):
    """The penalty's gradient w.r.t. g, differentiated again (what a third-order use would need)."""
    g = torch.randn(4, 3, 6, requires_grad=True)
    v = torch.randn(4, 3, 6)
    results = []
    for which in ("reference", impl):
        p = ops.penalty_from_grad(g, "wgan-gp", 2.0, impl=which)
        (dg,) = torch.autograd.grad(p, g, create_graph=True)
        (hv,) = torch.autograd.grad((dg * v).sum(), g)
        results.append((p.detach(), dg.detach(), hv))
    for a, b, name in zip(results[0], results[1], ("penalty", "first", "second")):
        assert_close(b, a, rtol=1e-4, atol=1e-5, name=name)


def test_penalty_values_by_kind():
    g = torch.tensor([[3.0, 4.0], [0.0, 0.5], [0.6, 0.8]])  # norms 5, 0.5, 1
    norms = torch.tensor([5.0, 0.5, 1.0])
    assert_close(ops.penalty_from_grad(g, "wgan-gp", 10.0), 10 * ((norms - 1) ** 2).mean())
    assert_close(ops.penalty_from_grad(g, "wgan-gp-one-sided", 10.0), 10 * (torch.tensor([4.0, 0.0, 0.0]) ** 2).mean())
    for kind in ("r1", "r2"):
        assert_close(ops.penalty_from_grad(g, kind, 10.0), 5 * (norms ** 2).mean())
    # a zero gradient: the penalty is 1 (WGAN-GP) with a finite gradient, not NaN
    z = torch.zeros(2, 3, requires_grad=True)
    p = ops.penalty_from_grad(z, "wgan-gp", 1.0)
    (dz,) = torch.autograd.grad(p, z)
    assert p.item() == 1.0 and torch.isfinite(dz).all()


class Critic(nn.Module):
    """A small conv critic without batch statistics, smooth (softplus) so second derivatives are non-trivial."""

    def __init__(self, channels=3, batch_norm=False):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 8, 3, 2, 1), nn.BatchNorm2d(8) if batch_norm else nn.GroupNorm(2, 8), nn.Softplus(),
            nn.Conv2d(8, 8, 3, 2, 1), nn.Softplus(), nn.Flatten(), nn.LazyLinear(1))

    def forward(self, x):
        return self.body(x).squeeze(1)


def make_critic(batch_norm=False):
    torch.manual_seed(3)
    D = Critic(batch_norm=batch_norm)
    D(torch.zeros(2, 3, 8, 8))  # materialise the lazy layer
    return D.double()


def textbook_penalty(D, real, fake, kind, weight, alpha):
    """The usual implementation, written out: autograd.grad(create_graph=True) and a norm."""
    if kind.startswith("wgan-gp"):
        a = alpha.view(-1, 1, 1, 1)
        x = (a * real + (1 - a) * fake).detach().requires_grad_(True)
    else:
        x = (real if kind == "r1" else fake).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    norm = g.flatten(1).norm(2, dim=1)
    if kind == "wgan-gp":
        return weight * ((norm - 1) ** 2).mean()
    if kind == "wgan-gp-one-sided":
        return weight * (torch.relu(norm - 1) ** 2).mean()
    return weight / 2 * (norm ** 2).mean()


def param_grads(D, loss):
    """d loss / d D's parameters, zeros for a parameter the loss does not reach (the last bias never
    affects grad_x D, so no penalty reaches it)."""
    params = list(D.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("impl", impls())
@pytest.mark.parametrize("kind", ops.PENALTY_KINDS)
def test_gradient_penalty_matches_textbook(impl, kind):
    D = make_critic()
    real, fake = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 8, 8, dtype=torch.float64)
    alpha = torch.rand(4, dtype=torch.float64)
    if impl == "triton":  # the kernels take float32 / 16 / bf16: compare there
        D, real, fake, alpha = D.float(), real.float(), fake.float(), alpha.float()
    with torch.no_grad():  # gradient norms well above 1, so the one-sided penalty is not 0 either
        D.body[-1].weight.mul_(30.0)
    expected = textbook_penalty(D, real, fake, kind, 10.0, alpha)
    got = gp.gradient_penalty(D, real, fake, kind=kind, weight=10.0, alpha=alpha, impl=impl)
    tol = dict(rtol=1e-9, atol=1e-10) if real.dtype == torch.float64 else dict(rtol=2e-4, atol=1e-5)
    assert_close(got, expected.to(got.dtype), **tol, name="penalty")
    assert got.item() > 0
    got_grads, expected_grads = param_grads(D, got), param_grads(D, expected)
    assert sum(int(g.abs().max() > 0) for g in expected_grads) >= 5  # the penalty reaches D's parameters
    for a, b in zip(got_grads, expected_grads):
        assert_close(a, b, **tol, name="D parameter gradient")


@pytest.mark.parametrize("batch_norm", [False, True], ids=["joined", "batchnorm-separate"])
@pytest.mark.parametrize("kind", [None, "wgan-gp", "r1", "r2"])
def test_discriminator_objective_matches_textbook(kind, batch_norm):
    D = make_critic(batch_norm)
    real, fake = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 8, 8, dtype=torch.float64)
    alpha = torch.rand(4, dtype=torch.float64)
    loss_kind = "wgan" if kind == "wgan-gp" else "ns"
    total, parts = gp.discriminator_objective(D, real, fake, loss=loss_kind, penalty=kind, weight=5.0, gain=3.0,
                                              alpha=alpha)
    expected = discriminator_loss(D(real), D(fake), loss_kind)
    if kind is not None:
        pen = textbook_penalty(D, real, fake, kind, 5.0, alpha)
        assert_close(parts["penalty"], pen.detach(), rtol=1e-9, atol=1e-12, name="penalty")
        expected = expected + 3.0 * pen
    assert_close(total, expected, rtol=1e-9, atol=1e-12, name="total")
    for a, b in zip(param_grads(D, total), param_grads(D, expected)):
        assert_close(a, b, rtol=1e-8, atol=1e-10, name="D parameter gradient")


def test_a_layer_flagged_as_using_batch_statistics_gets_separate_forwards():
    """Minibatch std (StyleGAN2) mixes the samples of a batch as batch norm does: real and fake
    must not share a forward, or its groups would mix them."""
    from fastgen.models.stylegan2 import MinibatchStd

    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x.shape[0])
            return x.flatten(1).sum(1)

    D = nn.Sequential(MinibatchStd(2), Recorder())
    real, fake = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    gp.discriminator_objective(D, real, fake, loss="ns")
    assert seen == [4, 4]
    seen.clear()
    gp.discriminator_objective(nn.Sequential(Recorder()), real, fake, loss="ns")
    assert seen == [8]


def test_patch_map_discriminator():
    D = nn.Conv2d(3, 1, 3).double()  # (B, 1, 6, 6) patch logits
    real, fake = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    got = gp.gradient_penalty(D, real, kind="r1", weight=1.0)
    assert_close(got, textbook_penalty(D, real, fake, "r1", 1.0, None), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("impl", impls())
def test_opcheck(impl):
    x, y = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    alpha = torch.rand(3)
    torch.library.opcheck(ops._interpolate_op, (x, y, alpha, impl))
    torch.library.opcheck(ops._interpolate_seeded_op, (x, y, torch.tensor([3, 1], dtype=torch.int64), impl))
    torch.library.opcheck(ops._sum_of_squares_op, (x.clone().requires_grad_(True), impl))
    torch.library.opcheck(ops._scale_op, (x, alpha, impl))


def test_compile_fullgraph_forward_ops():
    @torch.compile(fullgraph=True, backend="eager")
    def f(real, fake, alpha):
        return ops.grad_sum_of_squares(ops.interpolate(real, fake, alpha))

    real, fake, alpha = torch.randn(3, 4), torch.randn(3, 4), torch.rand(3)
    assert_close(f(real, fake, alpha), ops.grad_sum_of_squares_ref(ops.interpolate_ref(real, fake, alpha)))


def test_nan_gradient_gives_nan_penalty_without_crash():
    g = torch.randn(3, 4)
    g[1, 2] = float("nan")
    assert torch.isnan(ops.penalty_from_grad(g, "wgan-gp", 1.0))


def test_empty_batch():
    assert ops.grad_sum_of_squares(torch.zeros(0, 3)).shape == (0,)
    assert ops.interpolate(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0)).shape == (0, 3)


def bad_D(x):
    return x.sum()  # a 0-d output: not one logit per sample


@pytest.mark.parametrize("call,error,match", [
    (lambda: gp.gradient_penalty(make_critic(), torch.randn(2, 3, 8, 8), torch.randn(3, 3, 8, 8)), ValueError, "shape"),
    (lambda: gp.gradient_penalty(make_critic(), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8).half()), TypeError, "dtype"),
    (lambda: gp.gradient_penalty(make_critic(), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), weight=-1.0), ValueError, "weight"),
    (lambda: gp.gradient_penalty(make_critic(), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), kind="gp"), ValueError, "kind"),
    (lambda: gp.gradient_penalty(make_critic(), torch.ones(2, 3, 8, 8, dtype=torch.int64), None, kind="r1"), TypeError, "floating"),
    (lambda: gp.gradient_penalty(bad_D, torch.randn(2, 3), torch.randn(2, 3)), ValueError, "one output per sample"),
    (lambda: gp.gradient_penalty(lambda x: x.long(), torch.randn(2, 3), torch.randn(2, 3)), TypeError, "floating tensor of logits"),
    (lambda: gp.gradient_penalty(make_critic(), torch.randn(2, 3, 8, 8), None, kind="wgan-gp"), ValueError, "needs fake"),
    (lambda: gp.gradient_penalty("D", torch.randn(2, 3), torch.randn(2, 3)), TypeError, "callable"),
    (lambda: ops.interpolate(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0.5, 1.5])), ValueError, r"\[0, 1\]"),
    (lambda: ops.interpolate(torch.randn(2, 3), torch.randn(2, 3), torch.rand(3)), ValueError, "one weight per sample"),
    (lambda: ops.interpolate(torch.randn(2, 3), torch.randn(2, 3), [0.5, 0.5]), TypeError, "alpha"),
    (lambda: ops.interpolate(torch.randn(2, 3), torch.randn(2, 3), torch.rand(2), seed=1), ValueError, "at most one"),
    (lambda: ops.interpolate(torch.randn(2, 3), torch.randn(2, 3), seed=1, generator=torch.Generator()), ValueError, "at most one"),
    (lambda: ops.interpolate(torch.randn(2, 3), torch.randn(2, 3), seed=-1), ValueError, "seed"),
    (lambda: ops.interpolate(torch.randn(2, 3), torch.randn(2, 3), seed=1.5), TypeError, "seed"),
    (lambda: ops.interpolate(torch.randn(2, 3), torch.randn(2, 3), seed=torch.tensor([1, 2, 3])), ValueError, "seed"),
    (lambda: ops.draw_alpha(2, torch.device("cpu"), torch.Generator(), seed=1), ValueError, "generator"),
    (lambda: gp.discriminator_objective(make_critic(), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), penalty="r1", gain=-1), ValueError, "gain"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for the cross-device check")
def test_devices_must_match():
    with pytest.raises(ValueError, match="device"):
        gp.gradient_penalty(make_critic(), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8, device="cuda"))
