"""fastgen.gan.losses and fastgen.gan.regularizers: every loss against its formula written out by hand,
dtypes, gradients and their signs, numerical stability, bad input; lazy regularization's numbers;
spectral norm's coverage of nested layers and the spectral norms it leaves."""
import math

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from fastgen.gan.losses import LOSS_KINDS, adversarial_reconstruction_loss, discriminator_loss, generator_loss
from fastgen.gan.regularizers import SPECTRAL_NORM_LAYERS, LazyRegularization, apply_spectral_norm
from helpers import assert_close

# A small fixed input; the batches differ in size on purpose (real 3, fake 4).
REAL = [2.0, -1.0, 0.5]
FAKE = [-3.0, 0.0, 1.5, 4.0]


def mean(values):
    return sum(values) / len(values)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# Each loss written out from its paper, in Python floats: nothing here calls fastgen or torch.
EXPECTED_D = {
    "ns": mean([-math.log(sigmoid(r)) for r in REAL]) + mean([-math.log(1 - sigmoid(f)) for f in FAKE]),
    "minimax": mean([-math.log(sigmoid(r)) for r in REAL]) + mean([-math.log(1 - sigmoid(f)) for f in FAKE]),
    "wgan": (-3.0 + 0.0 + 1.5 + 4.0) / 4 - (2.0 - 1.0 + 0.5) / 3,  # 0.125
    "lsgan": 0.5 * (1.0 + 4.0 + 0.25) / 3 + 0.5 * (9.0 + 0.0 + 2.25 + 16.0) / 4,  # 4.28125
    "hinge": (0.0 + 2.0 + 0.5) / 3 + (0.0 + 1.0 + 2.5 + 5.0) / 4,  # 2.958333...
}
EXPECTED_G = {
    "ns": mean([-math.log(sigmoid(f)) for f in FAKE]),
    "minimax": mean([math.log(1 - sigmoid(f)) for f in FAKE]),
    "wgan": -(-3.0 + 0.0 + 1.5 + 4.0) / 4,
    "lsgan": 0.5 * (16.0 + 1.0 + 0.25 + 9.0) / 4,  # 3.28125
    "hinge": -(-3.0 + 0.0 + 1.5 + 4.0) / 4,
}


def fixed(dtype=torch.float64):
    return torch.tensor(REAL, dtype=dtype), torch.tensor(FAKE, dtype=dtype)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_discriminator_loss_hand_computed(kind):
    real, fake = fixed()
    out = discriminator_loss(real, fake, kind)
    assert out.shape == () and out.dtype == torch.float64
    assert abs(out.item() - EXPECTED_D[kind]) < 1e-12, (out.item(), EXPECTED_D[kind])


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_generator_loss_hand_computed(kind):
    _, fake = fixed()
    out = generator_loss(fake, kind)
    assert out.shape == () and out.dtype == torch.float64
    assert abs(out.item() - EXPECTED_G[kind]) < 1e-12, (out.item(), EXPECTED_G[kind])


def test_literal_values():
    # the exact ones, as literals, so that a mistake shared by the formulas above and the code shows
    real, fake = fixed()
    assert discriminator_loss(real, fake, "wgan").item() == pytest.approx(0.125, abs=1e-15)
    assert discriminator_loss(real, fake, "lsgan").item() == pytest.approx(4.28125, abs=1e-15)
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(2.5 / 3 + 2.125, abs=1e-15)
    assert generator_loss(fake, "lsgan").item() == pytest.approx(3.28125, abs=1e-15)
    zero = torch.zeros(5, dtype=torch.float64)  # D undecided: both ns terms are log 2
    assert discriminator_loss(zero, zero, "ns").item() == pytest.approx(2 * math.log(2), abs=1e-15)
    assert generator_loss(zero, "ns").item() == pytest.approx(math.log(2), abs=1e-15)
    assert generator_loss(zero, "minimax").item() == pytest.approx(-math.log(2), abs=1e-15)


def test_hinge_and_lsgan_at_known_points():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    assert discriminator_loss(t(1.0, 3.0), t(-1.0, -7.0), "hinge").item() == 0.0  # margins met: no loss
    assert discriminator_loss(t(0.0), t(0.0), "hinge").item() == 2.0
    assert discriminator_loss(t(-1.0), t(2.0), "hinge").item() == 5.0  # 2 + 3
    assert discriminator_loss(t(1.0), t(0.0), "lsgan").item() == 0.0  # D at its targets b=1, a=0
    assert discriminator_loss(t(0.0), t(1.0), "lsgan").item() == 1.0  # both off by 1: 0.5 + 0.5
    assert generator_loss(t(1.0), "lsgan").item() == 0.0  # G's target c=1
    assert generator_loss(t(-1.0), "lsgan").item() == 2.0
    assert generator_loss(t(2.0, -4.0), "hinge").item() == 1.0  # -(2 - 4) / 2


def test_ns_and_minimax_discriminators_agree():
    real, fake = torch.randn(7, dtype=torch.float64) * 3, torch.randn(5, dtype=torch.float64) * 3
    assert torch.equal(discriminator_loss(real, fake, "ns"), discriminator_loss(real, fake, "minimax"))


def test_patch_maps_reduce_over_every_element():
    real, fake = torch.randn(2, 1, 3, 3, dtype=torch.float64), torch.randn(4, 1, 3, 3, dtype=torch.float64)
    for kind in LOSS_KINDS:
        assert_close(discriminator_loss(real, fake, kind), discriminator_loss(real.flatten(), fake.flatten(), kind))
        assert_close(generator_loss(fake, kind), generator_loss(fake.flatten(), kind))
    expected = torch.log1p(torch.exp(-real)).mean() + torch.log1p(torch.exp(fake)).mean()
    assert_close(discriminator_loss(real, fake), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_low_precision_logits_give_float32(kind, dtype):
    real, fake = (torch.randn(64) * 4).to(dtype), (torch.randn(48) * 4).to(dtype)
    d, g = discriminator_loss(real, fake, kind), generator_loss(fake, kind)
    assert d.dtype == torch.float32 and g.dtype == torch.float32
    # the same rounded logits in float32: only the arithmetic's precision could differ, and it must not
    assert_close(d, discriminator_loss(real.float(), fake.float(), kind), torch.float32)
    assert_close(g, generator_loss(fake.float(), kind), torch.float32)
    assert discriminator_loss(real, fake.float(), kind).dtype == torch.float32  # mixed dtypes


def test_extreme_logits_stay_finite():
    big = torch.tensor([1000.0, -1000.0, 88.0, -104.0], requires_grad=True)  # exp overflows float32 past 88
    for kind in LOSS_KINDS:
        for loss in (discriminator_loss(big, big, kind), generator_loss(big, kind)):
            (grad,) = torch.autograd.grad(loss, big)
            assert loss.isfinite() and grad.isfinite().all(), kind
    confident = discriminator_loss(torch.tensor([1000.0]), torch.tensor([-1000.0]))
    wrong = discriminator_loss(torch.tensor([-1000.0]), torch.tensor([1000.0]))
    assert confident.item() == 0.0 and wrong.item() == 2000.0  # log(sigmoid) would give inf here
    assert generator_loss(torch.tensor([-1000.0]), "ns").item() == 1000.0


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_gradients_flow_and_point_the_right_way(kind):
    # Inside every loss's active region (real below the margin/target 1, fake above hinge's -1 and
    # lsgan's 0, and below G's lsgan target 1):
    # D lowers its loss by raising D(real) and lowering D(fake); G by raising D(fake).
    real = torch.tensor([0.5, -0.3], dtype=torch.float64, requires_grad=True)
    fake = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64, requires_grad=True)
    g_real, g_fake = torch.autograd.grad(discriminator_loss(real, fake, kind), (real, fake))
    assert (g_real < 0).all() and (g_fake > 0).all(), (g_real, g_fake)
    (g_gen,) = torch.autograd.grad(generator_loss(fake, kind), fake)
    assert (g_gen < 0).all(), g_gen


def test_gradients_match_the_derivatives():
    real, fake = fixed()
    real.requires_grad_(True)
    fake.requires_grad_(True)
    g_real, g_fake = torch.autograd.grad(discriminator_loss(real, fake, "ns"), (real, fake))
    # d softplus(-r)/dr = -sigmoid(-r) = -1 / (1 + e^r); d softplus(f)/df = 1 / (1 + e^-f); each / batch
    assert_close(g_real, torch.tensor([-1 / (1 + math.exp(r)) / 3 for r in REAL], dtype=torch.float64))
    assert_close(g_fake, torch.tensor([1 / (1 + math.exp(-f)) / 4 for f in FAKE], dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda r, f: discriminator_loss(r, f, "ns"), (real, fake))
    assert torch.autograd.gradgradcheck(lambda f: generator_loss(f, "ns"), (fake,))


def test_minimax_saturates_where_ns_does_not():
    # Goodfellow et al. 2014, section 3: early on D rejects fakes confidently (D(G(z)) -> 0) and
    # log(1 - D(G(z))) has almost no gradient; -log D(G(z)) has the same fixed point and a strong one.
    fake = torch.full((4,), -10.0, dtype=torch.float64, requires_grad=True)
    (g_minimax,) = torch.autograd.grad(generator_loss(fake, "minimax"), fake)
    (g_ns,) = torch.autograd.grad(generator_loss(fake, "ns"), fake)
    assert_close(g_minimax, torch.full((4,), -1 / (1 + math.exp(10)) / 4, dtype=torch.float64))
    assert_close(g_ns, torch.full((4,), -1 / (1 + math.exp(-10)) / 4, dtype=torch.float64))
    assert (g_ns / g_minimax).min() > 1e4


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_adversarial_reconstruction_loss(kind):
    decoder = nn.Linear(3, 4).double()
    D = nn.Linear(4, 1).double()
    x_hat = decoder(torch.randn(5, 3, dtype=torch.float64))
    loss = adversarial_reconstruction_loss(D, x_hat, kind)
    assert_close(loss, generator_loss(D(x_hat), kind))
    loss.backward()
    assert decoder.weight.grad is not None and decoder.weight.grad.abs().sum() > 0  # reaches the autoencoder


def test_adversarial_reconstruction_loss_ns_by_hand():
    D = nn.Linear(4, 1, bias=False).double()
    x_hat = torch.randn(6, 4, dtype=torch.float64)
    logits = x_hat @ D.weight.detach().T
    assert_close(adversarial_reconstruction_loss(D, x_hat), torch.log1p(torch.exp(-logits)).mean())


@pytest.mark.parametrize("call,error,match", [
    (lambda r, f: discriminator_loss(r, f, "bce"), ValueError,
     r"kind must be one of \('ns', 'minimax', 'wgan', 'lsgan', 'hinge'\), got 'bce'"),
    (lambda r, f: generator_loss(f, "NS"), ValueError, "kind must be one of"),
    (lambda r, f: generator_loss(f, None), ValueError, "kind must be one of"),
    (lambda r, f: discriminator_loss(r.long(), f), TypeError, "real_logits must be a floating tensor"),
    (lambda r, f: discriminator_loss(r, [0.0, 1.0]), TypeError, "fake_logits must be a torch.Tensor, got list"),
    (lambda r, f: generator_loss(f.to(torch.int32)), TypeError, "fake_logits must be a floating tensor"),
    (lambda r, f: generator_loss(f.to(torch.complex64)), TypeError, "fake_logits must be a floating tensor"),
    (lambda r, f: discriminator_loss(r, torch.randn(4, device="meta")), ValueError,
     "fake_logits is on meta but real_logits is on cpu"),
    (lambda r, f: discriminator_loss(r[:0], f), ValueError, "real_logits must not be empty"),
    (lambda r, f: generator_loss(torch.empty(0, 1)), ValueError, "fake_logits must not be empty"),
    (lambda r, f: adversarial_reconstruction_loss("D", f), TypeError, "discriminator must be callable"),
    (lambda r, f: adversarial_reconstruction_loss(nn.Identity(), f.long()), TypeError,
     "reconstruction must be a floating tensor"),
    (lambda r, f: adversarial_reconstruction_loss(lambda x: x.tolist(), f), TypeError,
     r"discriminator\(reconstruction\) must be a torch.Tensor"),
    (lambda r, f: adversarial_reconstruction_loss(nn.Identity(), f, "w"), ValueError, "kind must be one of"),
])
def test_bad_input(call, error, match):
    real, fake = fixed(torch.float32)
    with pytest.raises(error, match=match):
        call(real, fake)


# ---- lazy regularization (Karras et al. 2020) ----

def test_lazy_regularization_schedule_and_gain():
    lazy = LazyRegularization(4)
    assert [s for s in range(13) if lazy.due(s)] == [0, 4, 8, 12]
    assert lazy.gain == 4 and lazy.interval == 4
    every = LazyRegularization(1)
    assert all(every.due(s) for s in range(5)) and every.gain == 1
    assert repr(lazy) == "LazyRegularization(interval=4)"


def test_lazy_regularization_adjusts_adam_as_stylegan2():
    # StyleGAN2's D: lr 0.002, betas (0, 0.99), R1 every 16 steps: c = 16/17.
    lr, betas = LazyRegularization(16).adjust_optimizer(0.002, (0.0, 0.99))
    assert lr == pytest.approx(0.0018823529411764706, rel=1e-15)
    assert betas == (0.0, pytest.approx(0.9905854573074332, rel=1e-15))
    # interval + 1 steps with the adjusted values = interval steps with the original ones
    lr, (b1, b2) = LazyRegularization(4).adjust_optimizer(1e-3, (0.5, 0.9))
    assert lr * 5 == pytest.approx(1e-3 * 4, rel=1e-14)
    assert b1 ** 5 == pytest.approx(0.5 ** 4, rel=1e-14) and b2 ** 5 == pytest.approx(0.9 ** 4, rel=1e-14)
    assert LazyRegularization(1).adjust_optimizer(1.0, [0.25, 0.81]) == (0.5, (0.5, 0.9))


@pytest.mark.parametrize("call,error,match", [
    (lambda: LazyRegularization(0), ValueError, r"interval must be >= 1"),
    (lambda: LazyRegularization(-3), ValueError, r"interval must be >= 1 .*, got -3"),
    (lambda: LazyRegularization(2.0), TypeError, "interval must be an int, got float"),
    (lambda: LazyRegularization(True), TypeError, "interval must be an int, got bool"),
    (lambda: LazyRegularization(4).due(-1), ValueError, "step must be >= 0"),
    (lambda: LazyRegularization(4).due(1.5), TypeError, "step must be an int"),
    (lambda: LazyRegularization(4).adjust_optimizer(0.0, (0.0, 0.99)), ValueError, "lr must be a number > 0"),
    (lambda: LazyRegularization(4).adjust_optimizer(1e-3, (0.0, 1.0)), ValueError, r"betas must be a pair"),
    (lambda: LazyRegularization(4).adjust_optimizer(1e-3, (0.9,)), ValueError, r"betas must be a pair"),
])
def test_lazy_regularization_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- spectral norm (Miyato et al. 2018) ----

def top_singular_value(layer: nn.Module) -> float:
    """sigma of the weight as torch's spectral_norm reshapes it: output channels first (dim 1 of a
    transposed convolution's (in, out, *k) weight), everything else flattened."""
    w = layer.weight.detach()
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        w = w.transpose(0, 1)
    return torch.linalg.matrix_norm(w.flatten(1).double(), 2).item()


class Nested(nn.Module):
    """Layers at several depths, in a Sequential, a ModuleDict and as plain attributes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Sequential(nn.LeakyReLU(0.2), nn.ConvTranspose2d(8, 4, 4, 2, 1), nn.BatchNorm2d(4)),
        )
        self.heads = nn.ModuleDict({"logit": nn.Sequential(nn.Linear(4 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 1))})
        self.norm = nn.LayerNorm(16)  # not a linear map of its input: left alone

    def forward(self, x):
        return self.heads["logit"](self.features(x).flatten(1))


def test_spectral_norm_covers_nested_layers_and_normalises():
    net = Nested()
    wrapped = [net.features[0], net.features[1][1], net.heads["logit"][0], net.heads["logit"][2]]
    for m in wrapped:
        nn.init.normal_(m.weight)
        assert top_singular_value(m) > 2  # far from normalised to begin with
    assert apply_spectral_norm(net) is net
    parametrized = [m for m in net.modules() if parametrize.is_parametrized(m)]
    assert {id(m) for m in parametrized} == {id(m) for m in wrapped}  # BatchNorm, LayerNorm left alone
    net.train()
    x = torch.randn(2, 3, 4, 4)
    for _ in range(10):  # each training forward runs one power iteration per layer
        net(x)
    for m in wrapped:
        # power iteration approaches sigma from below (u^T W v <= sigma), so W / estimate is >= 1
        assert 1 - 1e-6 < top_singular_value(m) < 1.01, (type(m).__name__, top_singular_value(m))


@pytest.mark.parametrize("layer,shape", [
    (nn.Linear(7, 5), (3, 7)),
    (nn.Conv1d(3, 6, 3), (2, 3, 9)),
    (nn.Conv2d(3, 6, 3), (2, 3, 6, 6)),
    (nn.Conv3d(2, 4, 3), (1, 2, 5, 5, 5)),
    (nn.ConvTranspose1d(3, 6, 4), (2, 3, 5)),
    (nn.ConvTranspose2d(6, 3, 4, 2, 1), (2, 6, 4, 4)),
    (nn.ConvTranspose3d(2, 3, 3), (1, 2, 3, 3, 3)),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_spectral_norm_on_the_layer_itself(layer, shape):
    assert isinstance(layer, SPECTRAL_NORM_LAYERS)
    nn.init.normal_(layer.weight, 0.0, 3.0)  # far from 1
    out = apply_spectral_norm(layer, n_power_iterations=3)
    assert out is layer and parametrize.is_parametrized(layer, "weight")
    x = torch.randn(shape)
    for _ in range(5):
        layer(x)
    assert 1 - 1e-6 < top_singular_value(layer) < 1.01, top_singular_value(layer)


def test_spectral_norm_bad_input():
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got function"):
        apply_spectral_norm(lambda x: x)
    with pytest.raises(ValueError, match=r"contains no layer to normalise \(none of Linear, Conv1d"):
        apply_spectral_norm(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match="n_power_iterations must be >= 1"):
        apply_spectral_norm(nn.Linear(2, 2), n_power_iterations=0)
    with pytest.raises(ValueError, match="eps must be a number > 0"):
        apply_spectral_norm(nn.Linear(2, 2), eps=0.0)
    net = apply_spectral_norm(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)))
    with pytest.raises(ValueError, match=r"layer '0' is already parametrized"):
        apply_spectral_norm(net)
