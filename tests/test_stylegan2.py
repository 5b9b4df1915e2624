"""StyleGAN2 (fastgen.models.stylegan2): the layers against independent per-sample math, the
mapping network's truncation and w_avg, style mixing, minibatch std, the path-length regulariser
(a second derivative through bias_act and upfirdn2d), conditioning, the Triton ops path, and a few
training steps on the digits."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastgen import _impl
from fastgen.models.stylegan2 import (EqualizedLinear, MinibatchStd, ModulatedConv2d, StyleGAN2Discriminator,
                                      StyleGAN2Generator)
from helpers import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_g(**kw):
    args = dict(z_dim=16, w_dim=16, img_resolution=8, img_channels=1, channel_base=128, channel_max=16,
                mapping_layers=2)
    args.update(kw)
    return StyleGAN2Generator(**args)


def tiny_d(**kw):
    args = dict(img_resolution=8, img_channels=1, channel_base=128, channel_max=16)
    args.update(kw)
    return StyleGAN2Discriminator(**args)


@pytest.mark.parametrize("resolution,num_ws", [(4, 2), (8, 4), (16, 6)])
def test_shapes_and_num_ws(resolution, num_ws):
    G, D = tiny_g(img_resolution=resolution, img_channels=3), tiny_d(img_resolution=resolution, img_channels=3)
    assert G.num_ws == num_ws == 2 * int(math.log2(resolution)) - 2  # StyleGAN2: 18 at 1024
    img = G(torch.randn(4, 16))
    assert img.shape == (4, 3, resolution, resolution)
    assert D(img).shape == (4,)


def test_equalized_linear_scales_at_run_time():
    layer = EqualizedLinear(8, 5, bias_init=0.5, lr_multiplier=0.1)
    x = torch.randn(3, 8)
    want = x @ (layer.weight * 0.1 / math.sqrt(8)).t() + layer.bias * 0.1
    assert_close(layer(x), want, atol=1e-6, rtol=1e-6)
    assert torch.allclose(layer.bias, torch.full((5,), 0.5))


def per_sample_modconv(conv: ModulatedConv2d, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The paper's equations one sample at a time: w' = w * s_i, w'' = w' / sqrt(sum w'^2 + 1e-8)."""
    out = []
    styles = conv.affine(w)
    k = conv.weight.shape[-1]
    for b in range(x.shape[0]):
        wb = conv.weight / math.sqrt(conv.weight[0].numel()) * styles[b].view(1, -1, 1, 1)
        if conv.demodulate:
            wb = wb / (wb.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        out.append(F.conv2d(x[b:b + 1], wb, padding=k // 2))
    return torch.cat(out)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv_matches_per_sample_math(demodulate, fused):
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, 7, demodulate=demodulate, fused=fused).double()
    x, w = torch.randn(3, 6, 5, 5, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    assert_close(conv(x, w), per_sample_modconv(conv, x, w), atol=1e-12, rtol=1e-12)


def test_demodulation_gives_unit_variance_outputs():
    """The point of demodulation: unit-variance inputs give unit-variance outputs for any style."""
    conv = ModulatedConv2d(256, 64, 3, 8)
    with torch.no_grad():
        conv.affine.bias.mul_(7.0)  # large styles: without demodulation the variance would be ~49x
        y = conv(torch.randn(16, 256, 16, 16), torch.randn(16, 8))
    interior = y[:, :, 1:-1, 1:-1]  # the zero padding lowers the border's variance
    assert interior.var().item() == pytest.approx(1.0, rel=0.1)


def test_truncation_and_w_avg():
    G = tiny_g()
    z = torch.randn(64, 16)
    G.train()
    G.mapping(z)  # training mode updates w_avg
    assert G.mapping.w_avg.abs().sum() > 0
    G.eval()
    avg = G.mapping.w_avg.clone()
    ws = G.mapping(z, truncation_psi=0.0)
    assert torch.allclose(ws, avg.expand_as(ws))
    full, half = G.mapping(z), G.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    assert_close(half[:, :2], avg + 0.5 * (full[:, :2] - avg), atol=1e-6, rtol=1e-6)
    assert torch.equal(half[:, 2:], full[:, 2:])
    assert torch.equal(G.mapping.w_avg, avg)  # eval mode leaves it alone


def test_style_mixing_only_in_training():
    G = tiny_g(style_mixing_prob=1.0)
    z = torch.randn(8, 16)
    G.train()
    ws = G.styles(z, generator=torch.Generator().manual_seed(0))
    changes = (ws[:, 1:] != ws[:, :-1]).any(dim=2).sum(dim=1)
    assert (changes == 1).all()  # every sample switches to the second w exactly once
    G.eval()
    ws = G.styles(z)
    assert (ws == ws[:, :1]).all()


def test_noise_modes_and_generator_reproducibility():
    G = tiny_g().eval()
    with torch.no_grad():
        for p in G.parameters():
            if p.dim() == 0:
                p.fill_(0.5)  # nonzero noise strengths
        z = torch.randn(2, 16)
        a = G(z, noise_mode="random", generator=torch.Generator().manual_seed(1))
        b = G(z, noise_mode="random", generator=torch.Generator().manual_seed(1))
        c = G(z, noise_mode="random", generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert torch.equal(G(z, noise_mode="none"), G(z, noise_mode="none"))


def test_minibatch_std_matches_independent_math():
    x = torch.randn(8, 6, 3, 3, dtype=torch.float64)
    out = MinibatchStd(group_size=4, num_channels=2)(x)
    assert out.shape == (8, 8, 3, 3) and torch.equal(out[:, :6], x)
    for n in range(8):
        group = [m for m in range(8) if m % 2 == n % 2]  # samples n, n +- 2, ... share a group of 4
        for f in range(2):
            feats = x[group][:, 3 * f:3 * f + 3]
            want = feats.std(dim=0, unbiased=False).mean()  # the 1e-8 inside the sqrt is negligible here
            assert out[n, 6 + f].allclose(want.expand(3, 3), atol=1e-6)


def test_minibatch_std_uses_a_divisor_of_the_batch():
    assert MinibatchStd(4)(torch.randn(6, 4, 2, 2)).shape == (6, 5, 2, 2)  # groups of 3


def test_path_length_penalty_is_differentiable_and_tracks_its_mean():
    G = tiny_g().train()
    z = torch.randn(4, 16)
    pen = G.path_length_penalty(z, generator=torch.Generator().manual_seed(0))
    assert pen.dim() == 0 and pen.item() >= 0 and G.pl_mean.item() > 0
    pen.backward()
    # every weight of the synthesis network moves the Jacobian (the biases do not: they only shift)
    grads = {n: p.grad for n, p in G.synthesis.named_parameters() if n.endswith("weight")}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_conditional_generator_and_projection_discriminator():
    G, D = tiny_g(c_dim=3), tiny_d(c_dim=3)
    z, c = torch.randn(4, 16), F.one_hot(torch.tensor([0, 1, 2, 0]), 3).float()
    img = G(z, c)
    out = D(img, c)
    assert out.shape == (4,)
    assert not torch.allclose(D(img, c.roll(1, dims=1)), out)
    with pytest.raises(ValueError, match="c must be given"):
        G(z)
    with pytest.raises(ValueError, match="c must be given"):
        D(img)


@pytest.mark.skipif(_impl.unavailable_reason("triton", torch.device("cpu")) is not None
                    and not torch.cuda.is_available(), reason="triton needs CUDA or TRITON_INTERPRET=1")
def test_triton_ops_path_matches_reference_path():
    """The whole G and D with bias_act / upfirdn2d on their kernels vs on the references."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    G, D = tiny_g(img_resolution=8, channel_max=8).to(device).eval(), tiny_d(channel_max=8).to(device)
    z = torch.randn(2, 16, device=device)
    outs = {}
    for impl in ("reference", "triton"):
        _impl.set_impl(impl)
        try:
            img = G(z, noise_mode="none")
            logits = D(img)
            weights = [p for n, p in G.synthesis.named_parameters() if n.endswith("weight")]
            grads = torch.autograd.grad(logits.sum(), weights)
        finally:
            _impl.set_impl("auto")
        outs[impl] = (img, logits, grads)
    assert_close(outs["triton"][0], outs["reference"][0], atol=1e-4, rtol=1e-4)
    assert_close(outs["triton"][1], outs["reference"][1], atol=1e-4, rtol=1e-4)
    for g, r in zip(outs["triton"][2], outs["reference"][2]):
        assert_close(g, r, atol=1e-4, rtol=1e-3)


def test_trains_on_the_digits_with_lazy_r1_and_path_length():
    from fastgen.data.digits import load_digits
    from fastgen.gan import GANTrainer

    images, _ = load_digits(8)
    G, D = tiny_g(), tiny_d()
    trainer = GANTrainer(G, D, loss="ns", penalty="r1", penalty_weight=1.0, lazy_interval=2, lr=2e-3,
                         betas=(0.0, 0.99), ema_decay=0.9, g_regularizer=G.path_length_penalty,
                         g_regularizer_weight=2.0, g_lazy_interval=2, seed=0)
    history = [trainer.train_step(images[i * 16:(i + 1) * 16]) for i in range(4)]
    assert all(math.isfinite(v) for h in history for v in h.values())
    assert "g_regularizer" in history[0] and "g_regularizer" not in history[1]
    assert trainer.sample(3).shape == (3, 1, 8, 8)


def test_class_conditional_training_and_label_errors():
    from fastgen.data.digits import load_digits
    from fastgen.gan import GANTrainer

    images, labels = load_digits(8)
    G, D = tiny_g(c_dim=10), tiny_d(c_dim=10)
    trainer = GANTrainer(G, D, loss="hinge", penalty="r1", penalty_weight=1.0, lr=2e-3, betas=(0.0, 0.99), seed=0)
    batches = ((images[i:i + 16], labels[i:i + 16]) for i in range(0, 64, 16))
    history = trainer.fit(batches, 4, progress=False)
    assert len(history) == 4 and all(math.isfinite(h["d_loss"]) for h in history)
    out = trainer.sample(5, labels=torch.tensor([3, 3, 1, 0, 9]))
    assert out.shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match="labels must be given"):
        trainer.train_step(images[:4])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        trainer.train_step(images[:4], torch.tensor([0, 1, 2, 10]))
    with pytest.raises(TypeError, match=r"labels must be an int64 tensor of shape \(4,\)"):
        trainer.train_step(images[:4], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="must agree"):
        GANTrainer(tiny_g(c_dim=10), tiny_d(c_dim=3))
    plain = GANTrainer(tiny_g(), tiny_d())
    with pytest.raises(ValueError, match="the generator is unconditional"):
        plain.train_step(images[:4], labels[:4])


@pytest.mark.parametrize("call, error, match", [
    (lambda: tiny_g(img_resolution=12), ValueError, "power of two >= 4"),
    (lambda: tiny_d(img_resolution=2), ValueError, "power of two >= 4"),
    (lambda: tiny_g(style_mixing_prob=1.5), ValueError, "style_mixing_prob"),
    (lambda: tiny_g()(torch.randn(2, 5)), ValueError, r"z must have shape \(B, z_dim=16\)"),
    (lambda: tiny_g()(torch.randn(2, 16), noise_mode="const"), ValueError, "noise_mode"),
    (lambda: tiny_d()(torch.randn(2, 3, 8, 8)), ValueError, r"img must have shape \(B, 1, 8, 8\)"),
    (lambda: tiny_d(mbstd_num_channels=3), ValueError, "mbstd_num_channels"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
