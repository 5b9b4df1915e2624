"""StarGAN: label-channel conditioning, the two heads of D, the loss terms against direct computations
(WGAN-GP through the fused penalty), training, exact resume and bad input."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fastgen.checkpoint import CheckpointError
from fastgen.gan.translation import StarGANTrainer
from fastgen.models import StarGANDiscriminator, StarGANGenerator
from fastgen.models.stargan import domain_planes

pytestmark = pytest.mark.usefixtures("one_thread")

K = 3  # domains


def tiny(dtype=torch.float32, size=8):
    G = StarGANGenerator(K, 1, base_channels=4, n_blocks=1, n_downsampling=1)
    D = StarGANDiscriminator(K, size, 1, base_channels=4, n_layers=2)
    return G.to(dtype), D.to(dtype)


def data(n_batches: int, batch: int = 6, seed: int = 0):
    """Smooth blobs, dark at the top and brighter downwards, in three domains: as they are, inverted,
    flipped upside down."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n_batches * batch, 1, 2, 2, generator=g)
    x = F.interpolate(low, size=(8, 8), mode="bilinear") * torch.linspace(0, 2, 8)[:, None] - 1
    labels = torch.randint(K, (len(x),), generator=g)
    x = torch.where((labels == 1)[:, None, None, None], -x, x)
    x = torch.where((labels == 2)[:, None, None, None], x.flip(2), x)
    return list(zip(x.view(n_batches, batch, 1, 8, 8), labels.view(n_batches, batch)))


# --- networks -------------------------------------------------------------------------------------------

def test_generator_concatenates_label_planes():
    torch.manual_seed(0)
    G = StarGANGenerator(K, 3, base_channels=4, n_blocks=2, n_downsampling=2)
    x, labels = torch.randn(4, 3, 16, 12), torch.tensor([0, 2, 1, 2])
    y = G(x, labels)
    assert y.shape == x.shape and y.abs().max() <= 1
    assert G.net[0].in_channels == 3 + K
    planes = domain_planes(labels, K, 16, 12, x.dtype)
    assert planes.shape == (4, K, 16, 12)
    assert torch.equal(planes[:, :, 5, 7], F.one_hot(labels, K).float())  # constant planes, one per domain
    torch.testing.assert_close(y, G.net(torch.cat([x, planes], 1)), rtol=0, atol=0)
    # the label steers the output: another target, another image; the same target, the same image
    other = G(x, (labels + 1) % K)
    assert (other - y).abs().amax((1, 2, 3)).min() > 1e-4
    torch.testing.assert_close(G(x[:1], labels[:1]), y[:1], rtol=1e-5, atol=1e-6)


def test_discriminator_has_two_heads():
    torch.manual_seed(0)
    D = StarGANDiscriminator(K, 16, 1, base_channels=4, n_layers=3)
    x = torch.randn(5, 1, 16, 16)
    src, cls = D(x)
    assert src.shape == (5, 1, 2, 2) and cls.shape == (5, K)
    assert torch.equal(D.source(x), src)
    assert D.cls.kernel_size == (2, 2)  # covers the whole last feature map
    h = D.trunk(x)  # both heads read one trunk
    assert torch.equal(cls, D.cls(h).flatten(1)) and torch.equal(src, D.src(h))
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in D.modules())


def test_network_bad_input():
    G, D = tiny()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        G(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        G(x, torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match=r"labels must be an int64 tensor of shape \(2,\)"):
        G(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match=r"labels must be an int64 tensor of shape \(2,\)"):
        G(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"x must have H and W divisible by 2\*\*n_downsampling = 2"):
        G(torch.randn(2, 1, 9, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        D(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="image_size must be a multiple of 2\\*\\*n_layers = 8"):
        StarGANDiscriminator(K, 12, n_layers=3)
    with pytest.raises(ValueError, match="c_dim must be >= 2"):
        StarGANGenerator(1)


# --- the trainer ----------------------------------------------------------------------------------------

def test_one_step_matches_the_paper_losses():
    torch.manual_seed(0)
    G, D = tiny(torch.float64)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    trainer = StarGANTrainer(G, D, n_critic=1, lambda_cls=1.0, lambda_rec=10.0, lambda_gp=10.0, seed=4)
    (x, labels), = data(1)
    x = x.double()
    out = trainer.train_step(x, labels)

    rng = torch.Generator().manual_seed(4)  # the trainer's draws, in its order: targets, then alpha
    target = labels[torch.randperm(len(x), generator=rng)]
    alpha = torch.rand(len(x), generator=rng).double()
    with torch.no_grad():
        fake = G0(x, target)
        (src_r, cls_r), (src_f, _) = D0(x), D0(fake)
    hat = (alpha[:, None, None, None] * x + (1 - alpha[:, None, None, None]) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D0(hat)[0].sum(), hat)
    gp = 10 * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert out["d_adv"] == pytest.approx((src_f.mean() - src_r.mean()).item(), rel=1e-6, abs=1e-9)
    assert out["d_cls"] == pytest.approx(F.cross_entropy(cls_r, labels).item(), rel=1e-6)
    assert out["gp"] == pytest.approx(gp.item(), rel=1e-5)
    with torch.no_grad():  # G's terms: G before its step, D after its own
        fake = G0(x, target)
        src, cls = trainer.D(fake)
        rec = 10 * (G0(fake, labels) - x).abs().mean()
    assert out["g_adv"] == pytest.approx(-src.mean().item(), rel=1e-6, abs=1e-9)
    assert out["g_cls"] == pytest.approx(F.cross_entropy(cls, target).item(), rel=1e-6)
    assert out["rec"] == pytest.approx(rec.item(), rel=1e-6)
    for net, old in ((G, G0), (D, D0)):
        assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), old.parameters()))


def test_n_critic_schedule_and_lr():
    trainer = StarGANTrainer(*tiny(), n_critic=3, lr=1e-3, constant_steps=2, decay_steps=4)
    history = trainer.fit(data(6), 6, progress=False)
    assert ["g_adv" in h for h in history] == [False, False, True, False, False, True]
    assert [h["lr"] for h in history] == pytest.approx([1e-3, 1e-3, 0.8e-3, 0.6e-3, 0.4e-3, 0.2e-3])


def test_training_learns_the_domains():
    torch.manual_seed(0)
    G = StarGANGenerator(K, 1, base_channels=4, n_blocks=1, n_downsampling=1)
    trainer = StarGANTrainer(G, StarGANDiscriminator(K, 8, 1, base_channels=8, n_layers=2), n_critic=1, lr=5e-3)
    history = trainer.fit(data(30), 30, progress=False)
    assert all(torch.isfinite(torch.tensor(v)) for h in history for v in h.values())
    mean = lambda key, part: sum(h[key] for h in part) / len(part)  # noqa: E731
    assert mean("d_cls", history[-5:]) < 0.5 * mean("d_cls", history[:5])  # D's domain head learns
    assert mean("rec", history[-5:]) < 0.7 * mean("rec", history[:5])


def test_resume_is_exact(tmp_path):
    batches = data(8, seed=2)

    def build(model_seed, seed):
        torch.manual_seed(model_seed)
        return StarGANTrainer(*tiny(), n_critic=2, seed=seed, decay_steps=8)

    full = build(0, 1)
    history = full.fit(batches, 8, progress=False)
    first = build(0, 1)
    path = str(tmp_path / "stargan.ckpt")
    first.fit(batches[:3], 3, progress=False, checkpoint_path=path)
    resumed = build(3, 7)
    resumed.load_checkpoint(path)
    assert resumed.step == 3
    assert resumed.fit(batches[3:], 5, progress=False) == history[3:]
    for name in ("G", "D"):
        for p, q in zip(getattr(full, name).parameters(), getattr(resumed, name).parameters()):
            assert torch.equal(p, q), name
    with pytest.raises(CheckpointError, match="n_critic"):
        StarGANTrainer(*tiny(), n_critic=5).load_checkpoint(path)


def test_trainer_bad_input():
    trainer = StarGANTrainer(*tiny())
    x, labels = data(1)[0]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        trainer.train_step(x, torch.full_like(labels, 3))
    with pytest.raises(TypeError, match=r"labels must be an int64 tensor of shape \(6,\)"):
        trainer.train_step(x, labels[:4])
    with pytest.raises(ValueError, match=r"real must be a non-empty image batch"):
        trainer.train_step(x[0], labels)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        trainer.train_step(torch.randn(6, 1, 16, 16), labels)  # G takes it, D's domain head cannot
    G, _ = tiny()
    with pytest.raises(ValueError, match=r"G.c_dim \(3\) and D.c_dim \(4\) must agree"):
        StarGANTrainer(G, StarGANDiscriminator(4, 8, 1, base_channels=4, n_layers=2))
    with pytest.raises(TypeError, match="G must have an int attribute c_dim"):
        StarGANTrainer(torch.nn.Conv2d(1, 1, 1), tiny()[1])
    with pytest.raises(ValueError, match="lambda_rec must be a finite number >= 0"):
        StarGANTrainer(*tiny(), lambda_rec=float("nan"))
    with pytest.raises(ValueError, match="n_critic must be >= 1"):
        StarGANTrainer(*tiny(), n_critic=0)


def test_digits_benchmark_quick(tmp_path):
    import importlib.util
    import json
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "run_stargan_digits.py")
    spec = importlib.util.spec_from_file_location("run_stargan_digits", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # work sits under __main__: importing runs nothing
    assert script.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "stargan_digits_cpu_quick.json").read_text())
    assert (tmp_path / result["translations_png"]).stat().st_size > 0
    assert {"class_accuracy", "domain_accuracy_D", "domain_accuracy_nearest_truth", "reconstruction_l1"} <= result.keys()
