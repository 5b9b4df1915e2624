"""ProGAN (fastgen.models.progan): pixel norm and equalised lr against their formulas, the fade-in of G
and D at alpha 0 / 1 / between, the schedule and the real images of each stage, growing that keeps the
weights, exact resume mid-fade, the drift term, and bad input."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastgen.data import digit_batches
from fastgen.gan import GANTrainer, discriminator_objective
from fastgen.models.progan import (PixelNorm, ProGANDiscriminator, ProGANGenerator, ProGANTrainer,
                                   ProgressiveSchedule, progressive_reals)
from fastgen.models.stylegan2.layers import EqualizedConv2d
from helpers import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(resolution=16):
    kw = dict(channel_base=64, channel_max=8)
    return ProGANGenerator(resolution, 1, latent_dim=8, **kw), ProGANDiscriminator(resolution, 1, **kw)


@pytest.mark.parametrize("resolution,alpha", [(4, 1.0), (8, 0.0), (8, 0.3), (16, 1.0), (32, 0.5)])
def test_shapes_at_every_stage(resolution, alpha):
    G, D = tiny(32)
    G.set_stage(resolution, alpha)
    D.set_stage(resolution, alpha)
    img = G(torch.randn(4, 8))
    assert img.shape == (4, 1, resolution, resolution)
    assert D(img).shape == (4,)


def test_pixel_norm_formula():
    x = torch.randn(3, 5, 4, 2, dtype=torch.float64)
    want = x / torch.sqrt((x ** 2).sum(dim=1, keepdim=True) / 5 + 1e-8)
    out = PixelNorm()(x)
    assert_close(out, want, atol=0, rtol=1e-12)
    assert_close(out.pow(2).mean(dim=1), torch.ones(3, 4, 2, dtype=torch.float64), atol=1e-6, rtol=0)


def test_equalised_learning_rate_scales_at_run_time():
    conv = EqualizedConv2d(6, 4, 3, activation="lrelu")
    with torch.no_grad():
        conv.bias.normal_()
    assert abs(conv.weight.std().item() - 1) < 0.2  # stored N(0, 1): He's constant is applied in forward
    x = torch.randn(2, 6, 5, 5)
    he = 1 / math.sqrt(6 * 3 * 3)
    want = F.leaky_relu(F.conv2d(x, conv.weight * he, conv.bias, padding=1), 0.2) * math.sqrt(2)
    assert_close(conv(x), want, atol=1e-5, rtol=1e-5)


def test_generator_fade_in():
    G, _ = tiny(16)
    z = torch.randn(3, 8)
    G.set_stage(8, 1.0)
    low = G(z)
    G.set_stage(16, 0.0)
    assert torch.equal(G(z), low.repeat_interleave(2, 2).repeat_interleave(2, 3))  # nearest upsampling
    G.set_stage(16, 1.0)
    new = G(z)
    h = G.norm(G.input_conv(G.norm(G.input(z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()).view(3, -1, 4, 4))))
    assert_close(new, G.torgb[2](G.blocks[1](G.blocks[0](h))), atol=1e-5, rtol=1e-5)  # the new block's output
    G.set_stage(16, 0.25)
    assert_close(G(z), 0.75 * low.repeat_interleave(2, 2).repeat_interleave(2, 3) + 0.25 * new, atol=1e-5, rtol=1e-5)


def test_discriminator_fade_in():
    _, D = tiny(16)
    x = torch.randn(4, 1, 16, 16)
    D.set_stage(8, 1.0)
    low = D(F.avg_pool2d(x, 2))
    D.set_stage(16, 0.0)
    assert_close(D(x), low, atol=1e-6, rtol=1e-6)
    D.set_stage(16, 1.0)
    h_new = D.blocks[1](D.fromrgb[2](x))
    D.set_stage(16, 0.6)
    h = torch.lerp(D.fromrgb[1](F.avg_pool2d(x, 2)), h_new, 0.6)
    want = D.out(D.fc(D.conv(D.mbstd(D.blocks[0](h))).flatten(1))).squeeze(1)
    assert_close(D(x), want, atol=1e-5, rtol=1e-5)


def test_schedule_and_stage_reals():
    s = ProgressiveSchedule(16, stable_steps=3, fade_steps=2)
    stages = [s.stage(i) for i in range(s.total_steps + 2)]
    assert s.total_steps == 13 and s.resolutions == [4, 8, 16]
    assert stages == [(4, 1.0)] * 3 + [(8, 0.0), (8, 0.5)] + [(8, 1.0)] * 3 + [(16, 0.0), (16, 0.5)] + [(16, 1.0)] * 5
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(progressive_reals(x, 16), x)
    assert_close(progressive_reals(x, 4), x.reshape(2, 1, 4, 4, 4, 4).mean(dim=[3, 5]), atol=1e-6, rtol=1e-6)
    low = F.avg_pool2d(x, 2).repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert_close(progressive_reals(x, 16, 0.0), low, atol=1e-6, rtol=0)
    assert_close(progressive_reals(x, 16, 0.25), 0.75 * low + 0.25 * x, atol=1e-6, rtol=1e-6)


def _batches(seed=0):
    return digit_batches(8, size=8, epochs=None, generator=torch.Generator().manual_seed(seed))


def test_growing_keeps_earlier_weights_and_training_is_finite():
    torch.manual_seed(0)
    G, D = tiny(8)
    t = ProGANTrainer(G, D, ProgressiveSchedule(8, stable_steps=3, fade_steps=3))
    batches = _batches()
    first = t.fit(batches, 3, progress=False)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    record = t.train_step(next(batches)[0])  # the first fade-in step: G and D grow to 8x8
    assert (record["resolution"], record["alpha"]) == (8, 0.0) and G.resolution == D.resolution == 8
    for name, w in G.state_dict().items():  # one Adam step from where they were (lr 1e-3), not re-initialised
        assert (w - before[name]).abs().max() < 1e-2, name
    rest = t.fit(batches, progress=False)
    assert len(rest) == 5 and t.stage() == (8, 1.0)
    assert all(math.isfinite(v) for r in first + [record] + rest for v in r.values())
    assert t.sample(4).shape == (4, 1, 8, 8)


def test_resume_mid_fade_is_exact(tmp_path):
    def run():
        torch.manual_seed(0)
        G, D = tiny(8)
        return ProGANTrainer(G, D, ProgressiveSchedule(8, stable_steps=2, fade_steps=4))

    a = run()
    batches = list(zip(range(8), _batches()))
    for _, (x, _) in batches[:4]:
        a.train_step(x)
    a.save_checkpoint(str(tmp_path / "ckpt"))
    for _, (x, _) in batches[4:]:
        a.train_step(x)
    b = run()
    b.load_checkpoint(str(tmp_path / "ckpt"))
    assert b.stage() == (8, 0.5)
    for _, (x, _) in batches[4:]:
        b.train_step(x)
    for (name, p), q in zip(a.trainer.ema.named_parameters(), b.trainer.ema.parameters()):
        assert torch.equal(p, q), name


def test_drift_term():
    D = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1))
    real, fake = torch.randn(5, 12), torch.randn(5, 12)
    total, parts = discriminator_objective(D, real, fake, loss="wgan", penalty="wgan-gp", alpha=torch.rand(5),
                                           drift=1e-3)
    r = D(real)
    assert_close(parts["drift"], 1e-3 * r.square().mean().detach(), atol=1e-9, rtol=1e-6)
    assert_close(total, parts["loss"] + parts["penalty"] + parts["drift"], atol=1e-6, rtol=1e-6)
    no_penalty, _ = discriminator_objective(D, real, fake, loss="wgan", drift=0.5)
    assert_close(no_penalty, D(fake).mean() - r.mean() + 0.5 * r.square().mean(), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="drift"):
        discriminator_objective(D, real, fake, drift=-1.0)
    with pytest.raises(ValueError, match="drift_weight"):
        GANTrainer(*tiny(8), drift_weight=float("nan"))


def test_bad_input():
    with pytest.raises(ValueError, match="target_resolution must be start_resolution"):
        ProgressiveSchedule(12, stable_steps=1, fade_steps=1)
    with pytest.raises(ValueError, match="cannot reach 4"):
        ProgressiveSchedule(4, stable_steps=1, fade_steps=1, start_resolution=8)
    G, D = tiny(8)
    with pytest.raises(ValueError, match="schedule reaches resolutions \\[16\\]"):
        ProGANTrainer(G, D, ProgressiveSchedule(16, stable_steps=1, fade_steps=1))
    with pytest.raises(ValueError, match="discriminator takes images"):
        ProGANTrainer(G, tiny(16)[1], ProgressiveSchedule(8, stable_steps=1, fade_steps=1))
    with pytest.raises(ValueError, match="resolution must be one of"):
        G.set_stage(16)
    with pytest.raises(ValueError, match="alpha must be"):
        G.set_stage(8, 1.5)
    D.set_stage(4)
    with pytest.raises(ValueError, match=r"img must have shape \(B, 1, 4, 4\)"):
        D(torch.randn(2, 1, 8, 8))
    t = ProGANTrainer(G, D, ProgressiveSchedule(8, stable_steps=1, fade_steps=1))
    with pytest.raises(ValueError, match=r"real must be images \(B, C, 8, 8\)"):
        t.train_step(torch.randn(2, 1, 16, 16))
