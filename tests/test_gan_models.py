"""fastgen.models: DCGAN, PatchGAN and MLP generators/discriminators: shapes and dtypes, the standard
architectures' parameter counts worked out by hand, DCGAN init, the PatchGAN receptive field (by
formula and by perturbing pixels), double backward through the discriminators (what WGAN-GP and R1
need) checked against finite differences, and bad arguments."""
import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from fastgen.models import (DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator,
                            PatchGANDiscriminator, receptive_field)


def numel(*shape):
    n = 1
    for s in shape:
        n *= s
    return n


# ---- DCGAN ----

@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [16, 32, 64])
def test_dcgan_shapes_and_range(size, batch):
    G = DCGANGenerator(latent_dim=12, channels=3, image_size=size, base_channels=8)
    D = DCGANDiscriminator(channels=3, image_size=size, base_channels=8)
    assert G.latent_dim == 12
    z = torch.randn(batch, 12)
    x = G(z)
    assert x.shape == (batch, 3, size, size) and x.dtype == torch.float32
    assert x.abs().max() <= 1  # tanh
    assert torch.equal(G(z[:, :, None, None]), x)  # (B, latent, 1, 1) is the same z
    logits = D(x)
    assert logits.shape == (batch,) and logits.dtype == torch.float32


def test_dcgan_grayscale_and_128():
    G = DCGANGenerator(latent_dim=4, channels=1, image_size=128, base_channels=2)
    D = DCGANDiscriminator(channels=1, image_size=128, base_channels=2, norm="instance")
    assert D(G(torch.randn(2, 4))).shape == (2,)
    # 5 upsamplings from 4x4, widths 32, 16, 8, 4, 2 (= base * 2^4 ... base)
    assert [m.out_channels for m in G.modules() if isinstance(m, nn.ConvTranspose2d)] == [32, 16, 8, 4, 2, 1]


def test_dcgan_64_parameter_counts_are_the_standard_architecture():
    """Radford et al. 2016 / pytorch/examples dcgan, nz=100, ngf=ndf=64, nc=3: bias-free 4x4 convs."""
    g_convs = [(100, 512, 4, 4), (512, 256, 4, 4), (256, 128, 4, 4), (128, 64, 4, 4), (64, 3, 4, 4)]
    g_bns = [512, 256, 128, 64]  # a scale and a shift each
    d_convs = [(64, 3, 4, 4), (128, 64, 4, 4), (256, 128, 4, 4), (512, 256, 4, 4), (1, 512, 4, 4)]
    d_bns = [128, 256, 512]  # none after the first conv
    g_expected = sum(numel(*s) for s in g_convs) + sum(2 * c for c in g_bns)
    d_expected = sum(numel(*s) for s in d_convs) + sum(2 * c for c in d_bns)
    assert (g_expected, d_expected) == (3_576_704, 2_765_568)  # the counts usually quoted for them
    G, D = DCGANGenerator(), DCGANDiscriminator()
    assert sum(p.numel() for p in G.parameters()) == g_expected
    assert sum(p.numel() for p in D.parameters()) == d_expected
    assert [tuple(m.weight.shape) for m in G.modules() if isinstance(m, nn.ConvTranspose2d)] == g_convs
    assert [tuple(m.weight.shape) for m in D.modules() if isinstance(m, nn.Conv2d)] == d_convs
    assert all(m.bias is None for m in D.modules() if isinstance(m, nn.Conv2d))


def test_dcgan_defaults_run():
    G, D = DCGANGenerator(), DCGANDiscriminator()
    x = G(torch.randn(2, 100))
    assert x.shape == (2, 3, 64, 64) and D(x).shape == (2,)


def test_dcgan_init():
    G = DCGANGenerator()
    D = DCGANDiscriminator(norm="none")
    w = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert abs(w.mean()) < 1e-4 and abs(w.std() - 0.02) < 1e-4  # 3.6M draws of N(0, 0.02)
    bn = torch.cat([m.weight for m in G.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(bn.mean() - 1) < 5e-3 and abs(bn.std() - 0.02) < 5e-3  # 960 draws of N(1, 0.02)
    assert all((m.bias == 0).all() for m in G.modules() if isinstance(m, nn.BatchNorm2d))
    biases = [m.bias for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert len(biases) == 5 and all((b == 0).all() for b in biases)  # norm="none": biases, zero


@pytest.mark.parametrize("norm,layer", [("batch", nn.BatchNorm2d), ("instance", nn.InstanceNorm2d),
                                        ("layer", nn.GroupNorm), ("none", None)])
def test_discriminator_norms(norm, layer):
    for D in (DCGANDiscriminator(image_size=32, base_channels=4, norm=norm),
              PatchGANDiscriminator(base_channels=4, n_layers=2, norm=norm)):
        norms = [m for m in D.modules() if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm))]
        convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
        assert len(norms) == (2 if layer else 0)  # DCGAN 32x32: convs 2 and 3; PatchGAN n_layers=2: 2 and 3
        assert all(type(m) is layer for m in norms)
        if norm == "layer":  # one group: statistics over (C, H, W) of each sample
            assert all(m.num_groups == 1 for m in norms)
        assert all(m.affine for m in norms if isinstance(m, nn.InstanceNorm2d))
        # a conv has a bias exactly when no norm follows it (PatchGAN) / with norm="none" (DCGAN)
        biased = sum(m.bias is not None for m in convs)
        if isinstance(D, PatchGANDiscriminator):
            assert biased == len(convs) - len(norms)
        else:
            assert biased == (len(convs) if norm == "none" else 0)


def test_spectral_norm_flag_wraps_every_layer_after_init():
    for D in (DCGANDiscriminator(image_size=16, base_channels=4, norm="none", spectral_norm=True),
              PatchGANDiscriminator(base_channels=4, n_layers=2, norm="layer", spectral_norm=True),
              MLPDiscriminator(hidden=8, depth=2, spectral_norm=True)):
        layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
        if not isinstance(D, MLPDiscriminator):  # the DCGAN init went to the unnormalised weight
            original = torch.cat([m.parametrizations.weight.original.flatten() for m in layers])
            assert abs(original.std() - 0.02) < 4e-3
        for m in layers:
            sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1).double(), 2).item()
            assert sigma == pytest.approx(1, abs=0.02)


# ---- PatchGAN ----

def patch_output_size(size, n_layers):
    """4x4 convs with padding 1: stride 2 maps h to h // 2, stride 1 maps h to h - 1."""
    for _ in range(n_layers):
        size //= 2
    return size - 2


@pytest.mark.parametrize("n_layers,size", [(3, 256), (3, 70), (3, 24), (2, 32), (1, 17), (4, 64)])
def test_patchgan_shapes(n_layers, size):
    D = PatchGANDiscriminator(in_channels=4, base_channels=4, n_layers=n_layers)
    out = D(torch.randn(2, 4, size, size + 8))
    assert out.shape == (2, 1, patch_output_size(size, n_layers), patch_output_size(size + 8, n_layers))
    assert out.dtype == torch.float32


def test_patchgan_parameter_count_is_pix2pix():
    """pix2pix's NLayerDiscriminator, n_layers=3, ndf=64, batch norm: biases only on the first and last conv."""
    convs = [(64, 3, 4, 4), (128, 64, 4, 4), (256, 128, 4, 4), (512, 256, 4, 4), (1, 512, 4, 4)]
    biases = [64, 1]
    bns = [128, 256, 512]
    expected = sum(numel(*s) for s in convs) + sum(biases) + sum(2 * c for c in bns)
    assert expected == 2_765_633
    D = PatchGANDiscriminator()
    assert sum(p.numel() for p in D.parameters()) == expected
    assert [tuple(m.weight.shape) for m in D.modules() if isinstance(m, nn.Conv2d)] == convs


def test_receptive_field_values():
    # by hand, from the output back: a k=4 conv of stride s widens r to (r - 1) * s + 4;
    # the two stride-1 convs give 4 then 7, each stride-2 conv then r -> 2r + 2: 7 -> 16 -> 34 -> 70 -> 142
    assert [receptive_field(n) for n in (1, 2, 3, 4)] == [16, 34, 70, 142]
    assert patch_output_size(256, 3) == 30  # pix2pix's 70x70 PatchGAN gives a 30x30 map on 256x256


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_receptive_field_by_perturbing_pixels(n_layers):
    """Copy k of the input has pixel k of one line perturbed; the copies that change an interior
    output are exactly its receptive field along that line: rf consecutive pixels."""
    rf = receptive_field(n_layers)
    size = 2 * rf  # room for a centre output's whole field
    D = PatchGANDiscriminator(in_channels=1, base_channels=2, n_layers=n_layers, norm="none").double().eval()
    for m in D.modules():
        if isinstance(m, nn.Conv2d):  # large weights, so that every path changes the output clearly
            nn.init.normal_(m.weight)
    x = torch.randn(1, 1, size, size, dtype=torch.float64)
    k = torch.arange(size)
    rows, cols = x.repeat(size, 1, 1, 1), x.repeat(size, 1, 1, 1)
    rows[k, 0, k, size // 2] += 1.0  # copy k: pixel (k, centre) perturbed
    cols[k, 0, size // 2, k] += 1.0  # copy k: pixel (centre, k) perturbed
    with torch.no_grad():
        base, out_rows, out_cols = D(x), D(rows), D(cols)
    changed_rows = (out_rows - base).abs() > 1e-9 * base.abs().max()  # (size, 1, H', W')
    changed_cols = (out_cols - base).abs() > 1e-9 * base.abs().max()
    centre = base.shape[-1] // 2
    # outputs in the centre row whose field holds the centre column, and vice versa
    j = changed_rows[:, 0, centre].any(0).nonzero().flatten()
    i = changed_cols[:, 0, :, centre].any(0).nonzero().flatten()
    assert len(j) and len(i)
    for field in (changed_rows[:, 0, centre, j[0]], changed_cols[:, 0, i[0], centre]):
        hit = field.nonzero().flatten()
        assert len(hit) == rf and hit[-1] - hit[0] == rf - 1, hit.tolist()  # rf pixels, consecutive


# ---- MLP ----

def test_mlp_shapes_and_depth():
    G = MLPGenerator(latent_dim=3, data_dim=2, hidden=16, depth=4)
    D = MLPDiscriminator(data_dim=2, hidden=16, depth=1)
    assert G.latent_dim == 3
    x = G(torch.randn(5, 3))
    assert x.shape == (5, 2) and x.dtype == torch.float32
    assert D(x).shape == (5,) and D(x).dtype == torch.float32
    assert D(x[:1]).shape == (1,)
    assert sum(isinstance(m, nn.Linear) for m in G.modules()) == 5  # depth hidden + output
    assert sum(isinstance(m, nn.ReLU) for m in G.modules()) == 4
    assert [type(m) for m in D.net] == [nn.Linear, nn.LeakyReLU, nn.Linear]
    assert D.net[1].negative_slope == 0.2
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in (*G.modules(), *D.modules()))
    defaults = MLPGenerator()
    assert sum(p.numel() for p in defaults.parameters()) == (2 * 256 + 256) + 2 * (256 * 256 + 256) + (256 * 2 + 2)


# ---- double backward: the gradient penalty's path ----

def penalty(D, x):
    """sum over samples of ||d D(x) / d x||^2 with a graph to D's parameters (R1 / WGAN-GP's core)."""
    (grad,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    return grad.square().sum()


DISCRIMINATORS = [
    pytest.param(lambda sn: DCGANDiscriminator(image_size=16, base_channels=4, norm="none", spectral_norm=sn),
                 (2, 3, 16, 16), id="dcgan-none"),
    pytest.param(lambda sn: DCGANDiscriminator(image_size=16, base_channels=4, norm="layer", spectral_norm=sn),
                 (2, 3, 16, 16), id="dcgan-layer"),
    pytest.param(lambda sn: DCGANDiscriminator(image_size=16, base_channels=4, norm="instance", spectral_norm=sn),
                 (2, 3, 16, 16), id="dcgan-instance"),
    pytest.param(lambda sn: PatchGANDiscriminator(base_channels=4, n_layers=2, norm="none", spectral_norm=sn),
                 (2, 3, 20, 20), id="patchgan-none"),
    pytest.param(lambda sn: PatchGANDiscriminator(base_channels=4, n_layers=2, norm="layer", spectral_norm=sn),
                 (2, 3, 20, 20), id="patchgan-layer"),
    pytest.param(lambda sn: MLPDiscriminator(hidden=16, depth=2, spectral_norm=sn), (4, 2), id="mlp"),
]


@pytest.mark.parametrize("spectral_norm", [False, True], ids=["plain", "sn"])
@pytest.mark.parametrize("make,shape", DISCRIMINATORS)
def test_double_backward_reaches_parameters(make, shape, spectral_norm):
    D = make(spectral_norm).train()
    x = torch.randn(shape, requires_grad=True)
    penalty(D, x).backward()
    for name, p in D.named_parameters():
        if name.endswith(("weight", "weight.original")):
            assert p.grad is not None and p.grad.isfinite().all() and p.grad.abs().sum() > 0, name
        else:
            # a bias shifts D without changing its slopes when no norm follows: D's last bias is not
            # even in the input gradient's graph (grad None), the others' gradients are 0
            assert p.grad is None or p.grad.isfinite().all(), name


@pytest.mark.parametrize("spectral_norm", [False, True], ids=["plain", "sn"])
@pytest.mark.parametrize("make,shape", DISCRIMINATORS)
def test_double_backward_matches_finite_differences(make, shape, spectral_norm):
    D = make(spectral_norm).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    # Pre-activations of order 1: with DCGAN's N(0, 0.02) they shrink layer by layer until a step
    # of h moves many units across LeakyReLU's kink, and finite differences mean nothing.
    with torch.no_grad():
        for name, p in D.named_parameters():
            if p.dim() > 1:
                p.normal_(0, p[0].numel() ** -0.5)
            else:
                p.normal_(0 if name.endswith("bias") else 1, 0.1)
        for _ in range(10):  # spectral norm's power iteration catches up with the new weights
            D(x)
    D.eval()  # from here on the power-iteration vectors stay fixed between evaluations
    params = list(D.parameters())
    grads = torch.autograd.grad(penalty(D, x), params, allow_unused=True)  # None: a bias outside the graph
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((g * v).sum() for g, v in zip(grads, direction) if g is not None)
    h = 1e-7  # small: a unit within h of the LeakyReLU kink would make the difference quotient jump

    def shifted(sign):
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(sign * h * v)
        value = penalty(D, x).item()
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.sub_(sign * h * v)
        return value

    numeric = (shifted(1) - shifted(-1)) / (2 * h)
    assert numeric == pytest.approx(analytic.item(), rel=1e-5, abs=1e-9), (numeric, analytic.item())


# ---- bad arguments ----

@pytest.mark.parametrize("call,error,match", [
    (lambda: DCGANGenerator(image_size=48), ValueError, "image_size must be a power of two >= 16, got 48"),
    (lambda: DCGANGenerator(image_size=8), ValueError, "image_size must be a power of two >= 16, got 8"),
    (lambda: DCGANDiscriminator(image_size=64.0), TypeError, "image_size must be an int, got float"),
    (lambda: DCGANDiscriminator(norm="group"), ValueError,
     r"norm must be one of \('batch', 'instance', 'layer', 'none'\), got 'group'"),
    (lambda: PatchGANDiscriminator(norm=None), ValueError, "norm must be one of"),
    (lambda: PatchGANDiscriminator(n_layers=0), ValueError, "n_layers must be >= 1, got 0"),
    (lambda: receptive_field(0), ValueError, "n_layers must be >= 1"),
    (lambda: DCGANGenerator(latent_dim=0), ValueError, "latent_dim must be >= 1"),
    (lambda: DCGANDiscriminator(base_channels=True), TypeError, "base_channels must be an int, got bool"),
    (lambda: MLPGenerator(depth=0), ValueError, "depth must be >= 1"),
    (lambda: MLPDiscriminator(hidden=2.5), TypeError, "hidden must be an int"),
    (lambda: DCGANGenerator(latent_dim=8, image_size=16, base_channels=2)(torch.randn(2, 9)), ValueError,
     r"z must have shape \(B, 8\) or \(B, 8, 1, 1\), got \(2, 9\)"),
    (lambda: DCGANGenerator(latent_dim=8, image_size=16, base_channels=2)(torch.ones(2, 8, dtype=torch.long)),
     TypeError, "z must be a floating tensor"),
    (lambda: DCGANDiscriminator(image_size=32, base_channels=2)(torch.randn(2, 3, 64, 64)), ValueError,
     r"x must have shape \(B, 3, 32, 32\), got \(2, 3, 64, 64\)"),
    (lambda: PatchGANDiscriminator(in_channels=6, base_channels=2)(torch.randn(2, 3, 64, 64)), ValueError,
     r"x must have shape \(B, 6, H, W\)"),
    (lambda: MLPDiscriminator(data_dim=2)(torch.randn(4, 3)), ValueError, r"x must have shape \(B, 2\), got \(4, 3\)"),
    (lambda: MLPGenerator(latent_dim=2)(torch.randn(4)), ValueError, r"z must have shape \(B, 2\)"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
