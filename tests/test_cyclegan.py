"""CycleGAN: the ResNet generator, the reflection-padded residual block, the image pool, the loss terms
against direct computations, the linear lr decay, training, exact resume and bad input."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fastgen.checkpoint import CheckpointError
from fastgen.gan.image_pool import ImagePool
from fastgen.gan.translation import CycleGANTrainer, linear_decay
from fastgen.models import CycleGANGenerator, PatchGANDiscriminator, ResnetBlock

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_nets(dtype=torch.float32, channels=(1, 1)):
    ca, cb = channels
    nets = [CycleGANGenerator(ca, cb, base_channels=4, n_blocks=1, n_downsampling=1),
            CycleGANGenerator(cb, ca, base_channels=4, n_blocks=1, n_downsampling=1),
            PatchGANDiscriminator(ca, 4, n_layers=1, norm="instance"),
            PatchGANDiscriminator(cb, 4, n_layers=1, norm="instance")]
    return [n.to(dtype) for n in nets]


def domains(n_batches: int, batch: int = 4, size: int = 8, seed: int = 0):
    """Unpaired batches: A = smooth random blobs (2x2 noise upsampled) in [-1, 1], dark at the top and
    brighter downwards; B = other such blobs inverted."""
    g = torch.Generator().manual_seed(seed)

    def blobs():
        low = torch.rand(n_batches * batch, 1, 2, 2, generator=g)
        x = F.interpolate(low, size=(size, size), mode="bilinear") * torch.linspace(0, 2, size)[:, None] - 1
        return x.view(n_batches, batch, 1, size, size)

    return list(zip(blobs(), -blobs()))


# --- networks -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,n_down", [((2, 3, 16, 16), 2), ((1, 3, 16, 32), 2), ((3, 3, 8, 12), 1),
                                          ((2, 3, 16, 16), 3)])
def test_generator_shapes(shape, n_down):
    G = CycleGANGenerator(3, 1, base_channels=4, n_blocks=2, n_downsampling=n_down)
    y = G(torch.randn(shape))
    assert y.shape == (shape[0], 1, *shape[2:])
    assert y.abs().max() <= 1  # tanh
    assert sum(isinstance(m, ResnetBlock) for m in G.modules()) == 2
    # c7s1-k: the first and last convs are 7x7 with reflection padding 3
    convs = [m for m in G.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].kernel_size == (7, 7) and convs[0].padding_mode == "reflect" and convs[0].padding == (3, 3)
    assert convs[-1].kernel_size == (7, 7) and convs[-1].out_channels == 1


def test_resnet_block_is_reflection_padded_residual():
    torch.manual_seed(1)
    block = ResnetBlock(3).double()
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    c1, c2 = block.block[0], block.block[3]

    def conv(h, c):  # explicit reflection pad, then a valid conv
        return F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), c.weight, c.bias)

    h = F.relu(F.instance_norm(conv(x, c1)))
    expected = x + F.instance_norm(conv(h, c2))
    torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)
    # not zero padding: the border differs
    zero = ResnetBlock(3, padding="zeros").double()
    zero.load_state_dict(block.state_dict())
    assert not torch.allclose(zero(x)[..., 0, :], expected[..., 0, :])


def test_generator_bad_input():
    G = CycleGANGenerator(1, 1, base_channels=4, n_blocks=1, n_downsampling=2)
    with pytest.raises(ValueError, match=r"x must have H and W divisible by 2\*\*n_downsampling = 4"):
        G(torch.randn(1, 1, 18, 16))
    with pytest.raises(ValueError, match="x must have H and W divisible"):
        G(torch.randn(1, 1, 4, 4))  # a 1x1 bottleneck cannot be reflection padded
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\)"):
        G(torch.randn(1, 3, 16, 16))
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        G(torch.zeros(1, 1, 16, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="n_blocks must be >= 1"):
        CycleGANGenerator(n_blocks=0)
    with pytest.raises(ValueError, match="padding must be one of"):
        ResnetBlock(4, padding="circular")


# --- the image pool -------------------------------------------------------------------------------------

def test_image_pool_fills_then_swaps_half_the_time():
    pool = ImagePool(50)
    g = torch.Generator().manual_seed(0)
    first = torch.randn(50, 1, 2, 2)
    for batch in first.split(10):  # filling: every image stored and returned as it is, no draws
        state = g.get_state()
        assert torch.equal(pool.query(batch, g), batch)
        assert torch.equal(g.get_state(), state)
    assert len(pool) == 50 and torch.equal(torch.stack(pool.images), first)

    new = torch.randn(400, 1, 2, 2)
    replay = torch.Generator().manual_seed(0)
    replay.set_state(g.get_state())
    coins, slots = torch.rand(400, generator=replay), torch.randint(50, (400,), generator=replay)
    stored = list(first)
    expected = []
    for image, coin, slot in zip(new, coins.tolist(), slots.tolist()):
        if coin > 0.5:
            expected.append(stored[slot])
            stored[slot] = image
        else:
            expected.append(image)
    out = pool.query(new, g)
    assert torch.equal(out, torch.stack(expected))
    assert torch.equal(torch.stack(pool.images), torch.stack(stored))
    from_pool = (coins > 0.5).float().mean().item()
    assert 0.4 < from_pool < 0.6  # binomial(400, 1/2): 5 standard deviations
    assert len(pool) == 50


def test_image_pool_partial_fill_within_a_batch_and_state():
    pool = ImagePool(3)
    g, replay = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x = torch.arange(5.0).view(5, 1, 1, 1)
    out = pool.query(x, g)
    assert torch.equal(out[:3], x[:3]) and len(pool) == 3  # the first 3 fill the pool
    coins, slots = torch.rand(5, generator=replay).tolist(), torch.randint(3, (5,), generator=replay).tolist()
    stored = [0.0, 1.0, 2.0]
    for i in (3, 4):  # the rest of the batch: the pool's rule, with the draws at their batch positions
        expected = float(i)
        if coins[i] > 0.5:
            expected, stored[slots[i]] = stored[slots[i]], float(i)
        assert out[i].item() == expected
    assert [p.item() for p in pool.images] == stored
    restored = ImagePool(3)
    restored.load_state_dict(pool.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(restored.images, pool.images))
    assert torch.equal(ImagePool(0).query(x, g), x)  # disabled
    with pytest.raises(ValueError, match="pool_size"):
        ImagePool(4).load_state_dict(pool.state_dict())
    with pytest.raises(ValueError, match=r"images must be a batch of \(1, 1, 1\)"):
        pool.query(torch.randn(2, 1, 2, 2), g)
    with pytest.raises(ValueError, match="pool_size must be >= 0"):
        ImagePool(-1)


# --- losses, schedule, training -------------------------------------------------------------------------

def test_one_step_matches_the_paper_losses():
    torch.manual_seed(0)
    nets = tiny_nets(torch.float64)
    before = copy.deepcopy(nets)
    trainer = CycleGANTrainer(*nets, lambda_cycle=10.0, lambda_identity=0.5, pool_size=4)
    (a, b), = domains(1)
    a, b = a.double(), b.double()
    out = trainer.train_step(a, b)
    G_AB, G_BA, D_A, D_B = before
    with torch.no_grad():
        fake_b, fake_a = G_AB(a), G_BA(b)
        g_adv = ((D_B(fake_b) - 1) ** 2).mean() + ((D_A(fake_a) - 1) ** 2).mean()
        cycle = 10 * ((G_BA(fake_b) - a).abs().mean() + (G_AB(fake_a) - b).abs().mean())
        identity = 5 * ((G_AB(b) - b).abs().mean() + (G_BA(a) - a).abs().mean())
        # the pools are filling: D sees this step's fakes, and D has not moved yet
        d_a = 0.5 * ((D_A(a) - 1) ** 2).mean() + 0.5 * (D_A(fake_a) ** 2).mean()
        d_b = 0.5 * ((D_B(b) - 1) ** 2).mean() + 0.5 * (D_B(fake_b) ** 2).mean()
    for name, value in dict(g_adv=g_adv, cycle=cycle, identity=identity, d_A=d_a, d_B=d_b).items():
        assert out[name] == pytest.approx(value.item(), rel=1e-6), name
    # every network moved; the generators with their own optimizer only
    for net, old in zip(nets, before):
        assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), old.parameters()))
    assert "identity" not in CycleGANTrainer(*tiny_nets(), lambda_identity=0).train_step(*domains(1)[0])


def test_linear_decay_schedule():
    assert [linear_decay(s, 3, 4) for s in range(9)] == pytest.approx([1, 1, 1, 0.8, 0.6, 0.4, 0.2, 0, 0])
    assert linear_decay(10**6, 0, 0) == 1.0  # no decay
    trainer = CycleGANTrainer(*tiny_nets(), lr=1e-3, constant_steps=1, decay_steps=3)
    lrs = [r["lr"] for r in trainer.fit(domains(4), 4, progress=False)]
    assert lrs == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
    assert trainer.g_optimizer.param_groups[0]["lr"] == pytest.approx(0.25e-3)
    with pytest.raises(ValueError, match="decay_steps must be >= 0"):
        linear_decay(0, 0, -1)


def test_training_reduces_the_cycle_loss():
    torch.manual_seed(0)
    trainer = CycleGANTrainer(*tiny_nets(), lr=2e-3, pool_size=8, seed=0)
    history = trainer.fit(domains(40), 40, progress=False)
    cycle = [h["cycle"] for h in history]
    assert all(torch.isfinite(torch.tensor([list(h.values()) for h in history])).flatten())
    assert sum(cycle[-5:]) / 5 < 0.7 * sum(cycle[:5]) / 5


def test_resume_is_exact(tmp_path):
    data = domains(8, seed=3)

    def build(model_seed, seed):
        torch.manual_seed(model_seed)
        return CycleGANTrainer(*tiny_nets(), pool_size=6, seed=seed, constant_steps=2, decay_steps=6)

    full = build(0, 1)
    history = full.fit(data, 8, progress=False)
    first = build(0, 1)
    path = str(tmp_path / "cyclegan.ckpt")
    first.fit(data[:4], 4, progress=False, checkpoint_path=path, checkpoint_every=3)
    resumed = build(5, 9)  # other weights and seed: all overwritten
    resumed.load_checkpoint(path)
    assert resumed.step == 4 and len(resumed.pool_A) == 6
    assert resumed.fit(data[4:], 4, progress=False) == history[4:]
    for name in ("G_AB", "G_BA", "D_A", "D_B"):
        for p, q in zip(getattr(full, name).parameters(), getattr(resumed, name).parameters()):
            assert torch.equal(p, q), name
    other = CycleGANTrainer(*tiny_nets(), pool_size=6, lambda_cycle=5.0)
    with pytest.raises(CheckpointError, match="lambda_cycle"):
        other.load_checkpoint(path)


def test_bad_input():
    trainer = CycleGANTrainer(*tiny_nets())
    a, b = domains(1)[0]
    with pytest.raises(ValueError, match="real_a and real_b must have the same batch size"):
        trainer.train_step(a, b[:2])
    with pytest.raises(ValueError, match=r"real_b must be a non-empty image batch \(B, C, H, W\)"):
        trainer.train_step(a, b[0])
    with pytest.raises(TypeError, match="real_a must be torch.float32"):
        trainer.train_step(a.double(), b)
    with pytest.raises(ValueError, match="x must have H and W divisible"):
        trainer.train_step(torch.randn(4, 1, 9, 9), torch.randn(4, 1, 9, 9))
    mismatched = CycleGANTrainer(*tiny_nets(channels=(1, 3)))  # G_AB makes 3 channels, B has 1
    with pytest.raises(ValueError, match="G_AB makes images of shape"):
        mismatched.train_step(a, b)
    with pytest.raises(ValueError, match="lambda_cycle must be a finite number >= 0"):
        CycleGANTrainer(*tiny_nets(), lambda_cycle=-1)
    with pytest.raises(TypeError, match="D_B must be a torch.nn.Module"):
        CycleGANTrainer(*tiny_nets()[:3], None)
    with pytest.raises(ValueError, match="batches must yield pairs"):
        trainer.fit([a], 1, progress=False)


def test_digits_benchmark_quick(tmp_path):
    import importlib.util
    import json
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "run_cyclegan_digits.py")
    spec = importlib.util.spec_from_file_location("run_cyclegan_digits", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # work sits under __main__: importing runs nothing
    assert script.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "cyclegan_digits_bold_cpu_quick.json").read_text())
    assert (tmp_path / result["translations_png"]).stat().st_size > 0
    assert {"class_accuracy_A_to_B", "class_accuracy_B_to_A", "cycle_l1_A", "cycle_l1_B"} <= result.keys()
