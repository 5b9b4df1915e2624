"""Normalizing flows (fastgen.models.flows): every layer and both models are exact inverses, every
log-determinant equals the brute-force log|det| of the autograd Jacobian, densities integrate to one,
and bad input is refused with errors that name the argument."""
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from fastgen.models import Glow, RealNVP
from fastgen.models.flows import ActNorm, AffineCoupling, InvConv1x1, Squeeze, dequantize, quantize

pytestmark = pytest.mark.usefixtures("one_thread")

# (dtype, round-trip tolerance)
ROUND_TRIP = [(torch.float32, 1e-5), (torch.float64, 1e-10)]


def _perturb_(module: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Move every parameter off its initial value (the zero last layers make couplings the identity, which
    would make the tests pass for any log-determinant formula)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn_like(p))
    return module


def _layers(channels: int):
    """(id, layer) for every layer kind and option."""
    out = [("actnorm", ActNorm(channels)), ("invconv", InvConv1x1(channels)), ("squeeze", Squeeze())]
    for mask in ("channel", "checkerboard"):
        for flip in (False, True):
            for scale in ("sigmoid", "tanh"):
                out.append((f"coupling-{mask}-flip{int(flip)}-{scale}",
                            AffineCoupling(channels, 8, mask=mask, flip=flip, scale=scale)))
    return out


LAYER_IDS = [name for name, _ in _layers(3)]


def _layer(name: str, channels: int, dtype: torch.dtype) -> torch.nn.Module:
    layer = dict(_layers(channels))[name].to(dtype)
    if isinstance(layer, ActNorm):  # data-dependent init first, then move off it
        layer(torch.randn(2, channels, 4, 4, dtype=dtype) * 3 + 1)
    return _perturb_(layer)


@pytest.mark.parametrize("dtype,tol", ROUND_TRIP, ids=["float32", "float64"])
@pytest.mark.parametrize("name", LAYER_IDS)
@pytest.mark.parametrize("channels", [3, 4])  # odd: unequal channel halves
def test_layer_inverts(name, channels, dtype, tol):
    layer = _layer(name, channels, dtype)
    x = torch.randn(2, channels, 6, 4, dtype=dtype)
    y, logdet = layer(x)
    assert logdet.shape == (2,) and logdet.dtype == dtype
    assert name == "squeeze" or not torch.allclose(y, x)
    back = layer.inverse(y)
    torch.testing.assert_close(back, x, atol=tol, rtol=0)


def _brute_force_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det d fn(x) / dx| of one sample x (1, ...) from the full autograd Jacobian, float64."""
    jac = jacobian(lambda v: fn(v.view_as(x)).flatten(), x.flatten())
    return torch.linalg.slogdet(jac)[1]


@pytest.mark.parametrize("name", LAYER_IDS)
@pytest.mark.parametrize("channels,height,width", [(4, 4, 4), (3, 2, 4)])  # non-square: H * W, not H * H
def test_layer_logdet_is_the_jacobians(name, channels, height, width):
    layer = _layer(name, channels, torch.float64)
    x = torch.randn(1, channels, height, width, dtype=torch.float64)
    expected = _brute_force_logdet(lambda v: layer(v)[0], x)
    _, logdet = layer(x)
    torch.testing.assert_close(logdet, expected.view(1), atol=1e-10, rtol=1e-10)


def _models(dtype: torch.dtype):
    return {
        "glow": Glow(2, 2, 2, 8, image_size=(4, 8)),
        "glow-tanh": Glow(1, 2, 1, 8, image_size=4, scale="tanh"),
        "realnvp": RealNVP(1, 2, 2, 8, image_size=4),
        "realnvp-3ch-3levels": RealNVP(3, 3, 1, 8, image_size=8),
    }


def _model(name: str, dtype: torch.dtype):
    model = _models(dtype)[name].to(dtype)
    h, w = model.image_size
    model.log_prob(torch.rand(8, model.in_channels, h, w, dtype=dtype) - 0.5)  # ActNorm's init
    return _perturb_(model, 0.05)


MODEL_IDS = list(_models(torch.float32))


@pytest.mark.parametrize("dtype,tol", ROUND_TRIP, ids=["float32", "float64"])
@pytest.mark.parametrize("name", MODEL_IDS)
def test_model_round_trip(name, dtype, tol):
    model = _model(name, dtype)
    h, w = model.image_size
    x = torch.rand(3, model.in_channels, h, w, dtype=dtype) - 0.5
    z = model.to_latent(x)
    assert z.shape == (3, model.in_channels * h * w)
    torch.testing.assert_close(model.from_latent(z), x, atol=tol, rtol=0)
    z2 = torch.randn_like(z)
    torch.testing.assert_close(model.to_latent(model.from_latent(z2)), z2, atol=tol * 10, rtol=0)


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_log_prob_is_gaussian_plus_jacobian(name):
    """log_prob(x) = log N(z; 0, I) + log|det dz/dx| with the Jacobian of the whole to_latent by autograd."""
    model = _model(name, torch.float64)
    x = torch.rand(1, model.in_channels, *model.image_size, dtype=torch.float64) - 0.5
    z = model.to_latent(x)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum() + _brute_force_logdet(model.to_latent, x)
    torch.testing.assert_close(model.log_prob(x), expected.view(1), atol=1e-9, rtol=1e-10)


def test_log_prob_is_per_sample():
    model = _model("realnvp", torch.float64)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64) - 0.5
    each = torch.cat([model.log_prob(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(model.log_prob(x), each, atol=1e-12, rtol=0)


def test_fresh_glow_is_a_rotation_of_the_standard_normal():
    """With ActNorm left at the identity, a fresh Glow is orthogonal 1x1 convs (random rotations), squeezes
    (permutations) and identity couplings, so its density is the standard normal's exactly."""
    model = Glow(1, 2, 3, 8, image_size=8).double()
    for m in model.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x).flatten(1).sum(1)
    # the LU factors are stored in float32, so W is orthogonal only to ~1e-7 (log_prob ~ -90 here)
    torch.testing.assert_close(model.log_prob(x), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(model.to_latent(x), x.flatten(1))  # the rotation is not the identity


def test_density_integrates_to_one_on_the_plane():
    """A 2-D flow (points as (B, 2, 1, 1), no squeeze) moved off its identity init: the Riemann sum of
    exp(log_prob) over a fine grid is 1."""
    model = Glow(2, 1, 4, 8, squeeze=False).double()
    model.log_prob(torch.randn(256, 2, 1, 1, dtype=torch.float64) * 0.7 + 0.3)  # ActNorm's init
    _perturb_(model, 0.2)
    lo, hi, n = -8.0, 8.0, 241  # the mass outside this square is < 1e-5 for these seeds and scales
    axis = torch.linspace(lo, hi, n, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis).view(-1, 2, 1, 1)
    with torch.no_grad():
        density = model.log_prob(grid).exp()
    mass = density.sum() * ((hi - lo) / (n - 1)) ** 2
    assert abs(mass.item() - 1.0) < 1e-3, mass.item()
    # and it is not the standard normal: the test could fail for a wrong log-determinant
    assert (model.log_prob(grid[:10]) - torch.distributions.Normal(0.0, 1.0).log_prob(grid[:10]).sum((1, 2, 3))).abs().max() > 0.1


def test_actnorm_initialises_from_the_first_batch():
    x = torch.randn(16, 3, 5, 5, dtype=torch.float64) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1) \
        + torch.tensor([-1.0, 0.0, 4.0]).view(1, 3, 1, 1)
    layer = ActNorm(3).double()
    assert not layer.initialized
    y, _ = layer(x)
    assert layer.initialized
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.var((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    # the second batch does not re-initialise, and a state_dict round trip keeps the init
    before = [p.clone() for p in layer.parameters()]
    layer(x * 3 + 5)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))
    again = ActNorm(3).double()
    again.load_state_dict(layer.state_dict())
    assert again.initialized
    torch.testing.assert_close(again(x * 3 + 5)[0], layer(x * 3 + 5)[0], atol=0, rtol=0)
    # loading an uninitialised state into an initialised layer makes the next batch initialise it
    layer.load_state_dict(ActNorm(3).double().state_dict())
    y, _ = layer(x * 3 + 5)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_model_state_dict_round_trip():
    model = _model("glow", torch.float32)
    fresh = Glow(2, 2, 2, 8, image_size=(4, 8))
    fresh.load_state_dict(model.state_dict())
    x = torch.rand(5, 2, 4, 8) - 0.5
    torch.testing.assert_close(fresh.log_prob(x), model.log_prob(x), atol=0, rtol=0)


@pytest.mark.parametrize("channels", [1, 2, 5])
def test_invconv_logdet_is_slogdet_of_the_weight(channels):
    layer = _perturb_(InvConv1x1(channels).double(), 0.3)
    weight = layer.weight()
    p, l = layer.perm, layer.lower * layer.lower_mask + torch.eye(channels, dtype=torch.float64)
    assert torch.equal(p @ p.T, torch.eye(channels, dtype=torch.float64))  # a permutation
    assert torch.equal(torch.diagonal(l), torch.ones(channels, dtype=torch.float64))  # unit lower
    sign, logabs = torch.linalg.slogdet(weight)
    x = torch.randn(2, channels, 3, 5, dtype=torch.float64)
    _, logdet = layer(x)
    torch.testing.assert_close(logdet, (15 * logabs).expand(2), atol=1e-10, rtol=1e-12)
    assert sign == torch.linalg.det(p) * torch.prod(layer.sign)
    torch.testing.assert_close(layer(x)[0], torch.einsum("oc,bchw->bohw", weight, x), atol=1e-12, rtol=0)


def test_fresh_invconv_is_orthogonal():
    w = InvConv1x1(6).double().weight()
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-6, rtol=0)


def test_couplings_start_as_the_identity():
    for scale in ("sigmoid", "tanh"):
        for mask in ("channel", "checkerboard"):
            layer = AffineCoupling(4, 8, mask=mask, scale=scale)
            x = torch.randn(2, 4, 4, 4)
            y, logdet = layer(x)
            assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(2)), (scale, mask)


def test_checkerboard_keeps_half_the_pixels():
    layer = _perturb_(AffineCoupling(2, 8, mask="checkerboard"))
    x = torch.randn(1, 2, 4, 4)
    y, _ = layer(x)
    i, j = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    keep = (i + j) % 2 == 0
    assert torch.equal(y[..., keep], x[..., keep]) and not torch.allclose(y[..., ~keep], x[..., ~keep])


def test_squeeze_is_space_to_depth():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    y, _ = Squeeze()(x)
    assert y.shape == (1, 8, 2, 2)
    # channel 4c + 2i + j holds pixel (2h + i, 2w + j) of channel c
    assert y[0, 4 * 1 + 2 * 1 + 0, 1, 0] == x[0, 1, 3, 0]


def test_sample_and_bits_per_dim():
    model = _model("glow", torch.float32)
    a = model.sample(3, generator=torch.Generator().manual_seed(1), temperature=0.7)
    b = model.sample(3, generator=torch.Generator().manual_seed(1), temperature=0.7)
    assert a.shape == (3, 2, 4, 8) and torch.equal(a, b)
    z = torch.randn(3, 64, generator=torch.Generator().manual_seed(1)) * 0.7
    torch.testing.assert_close(a, model.from_latent(z), atol=0, rtol=0)
    torch.testing.assert_close(model.sample(2, temperature=0.0), model.from_latent(torch.zeros(2, 64)), atol=0, rtol=0)

    x = torch.randint(0, 256, (4, 2, 4, 8), dtype=torch.uint8)
    bpd = model.bits_per_dim(x, generator=torch.Generator().manual_seed(2))
    y = dequantize(x, 256, generator=torch.Generator().manual_seed(2))
    expected = (-model.log_prob(y) + 64 * math.log(256)) / (64 * math.log(2))
    torch.testing.assert_close(bpd, expected, atol=1e-6, rtol=1e-6)


def test_bits_per_dim_of_the_standard_normal():
    """The dequantisation term checked on a density known independently: a fresh Glow (ActNorm left at the
    identity) is N(0, I), so bits/dim = (-log N(y; 0, I) + D log K) / (D ln 2) with y the dequantised x."""
    model = Glow(1, 1, 1, 4, image_size=2).double()
    for m in model.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    x = torch.randint(0, 17, (5, 1, 2, 2))
    bpd = model.bits_per_dim(x, 17, generator=torch.Generator().manual_seed(3))
    y = dequantize(x, 17, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    nll = -torch.distributions.Normal(0.0, 1.0).log_prob(y).flatten(1).sum(1)
    # W orthogonal to ~1e-7 (float32 LU factors)
    torch.testing.assert_close(bpd, (nll / 4 + math.log(17)) / math.log(2), atol=1e-6, rtol=0)


def test_dequantize_and_quantize():
    x = torch.tensor([[0, 1, 16]])
    y = dequantize(x, 17)
    assert y.min() >= -0.5 and y.max() < 0.5
    assert torch.equal(quantize(y, 17), x)
    lo = dequantize(torch.zeros(1000, dtype=torch.uint8), 256)
    assert lo.min() >= -0.5 and lo.max() < -0.5 + 1 / 256


@pytest.mark.parametrize("make,error,match", [
    (lambda: Glow(1, 0, 1, 8), ValueError, "levels must be >= 1"),
    (lambda: Glow(1, 2, 0, 8), ValueError, "depth must be >= 1"),
    (lambda: Glow(0, 2, 1, 8), ValueError, "in_channels must be >= 1"),
    (lambda: Glow(1, 2, 1, 8, image_size="8"), TypeError, "image_size"),
    (lambda: Glow(1, 1, 1, 8, squeeze=False), ValueError, "coupling needs >= 2"),
    (lambda: RealNVP(1, 2, 1, 8, scale="exp"), ValueError, "scale must be one of"),
    (lambda: AffineCoupling(4, 8, mask="stripes"), ValueError, "mask must be one of"),
    (lambda: AffineCoupling(1, 8, mask="channel"), ValueError, "channels >= 2"),
])
def test_bad_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_input():
    model = Glow(1, 2, 1, 8, image_size=8)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\)"):
        model.log_prob(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"levels=2 .* divisible by 4"):
        Glow(1, 2, 1, 8).to_latent(torch.zeros(2, 1, 6, 6))
    with pytest.raises(ValueError, match="image_size"):
        model.log_prob(torch.zeros(2, 1, 16, 16))
    with pytest.raises(TypeError, match="floating"):
        model.log_prob(torch.zeros(2, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="z must have 64 columns"):
        model.from_latent(torch.zeros(2, 63))
    with pytest.raises(ValueError, match="pass image_size"):
        Glow(1, 2, 1, 8).from_latent(torch.zeros(2, 63))
    with pytest.raises(ValueError, match="sample needs the image size"):
        Glow(1, 2, 1, 8).sample(2)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)
    with pytest.raises(TypeError, match="integer pixel values"):
        model.bits_per_dim(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"in \[0, 16\]"):
        model.bits_per_dim(torch.full((2, 1, 8, 8), 17), 17)
    with pytest.raises(ValueError, match="squeeze needs an even"):
        Squeeze()(torch.zeros(1, 1, 3, 4))
    with pytest.raises(ValueError, match="at least 2 pixels"):
        RealNVP(1, 3, 1, 8).log_prob(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"y must have shape \(B, 4, H, W\)"):
        InvConv1x1(4).inverse(torch.zeros(1, 3, 2, 2))


def _benchmark_script(name: str):
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_digits_benchmark_quick(tmp_path):
    import json

    assert _benchmark_script("run_flows_digits").main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "flows_digits_cpu_quick.json").read_text())
    for name in ("glow", "realnvp"):
        test = result["runs"][name]["results"]["test"]
        assert math.isclose(test["nll_nats"], test["bits_per_dim"] * 64 * math.log(2), rel_tol=1e-9)
        assert (tmp_path / f"flows_digits_samples_{name}_quick.png").stat().st_size > 0


def test_toy_benchmark_quick(tmp_path):
    import json

    assert _benchmark_script("run_flows_toy").main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "flows_toy_cpu_quick.json").read_text())
    ring = result["runs"]["ring"]
    assert 0.5 < ring["grid_mass"] <= 1.0 + 1e-3 and ring["true_nll_nats"] < ring["nll_nats"]
    assert (tmp_path / "flows_toy_density_quick.png").stat().st_size > 0
