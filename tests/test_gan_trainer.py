"""GANTrainer: every loss x penalty, the n_critic and lazy schedules, EMA, AMP, exact resume, atomic
checkpoints, previews, bad input. Tiny local networks keep it fast and independent of fastgen.models."""
import copy
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

for _module in ("fastgen.gan.losses", "fastgen.gan.penalty", "fastgen.gan.regularizers"):
    pytest.importorskip(_module, reason=f"{_module} (another engineer's work in progress) is not in the tree yet")

from fastgen.data import toy_batches  # noqa: E402
from fastgen.gan.losses import LOSS_KINDS  # noqa: E402
from fastgen.gan.penalty import PENALTY_KINDS  # noqa: E402
from fastgen.gan.trainer import GANTrainer  # noqa: E402
from helpers import assert_close  # noqa: E402

B = 16


class TinyG(nn.Module):
    def __init__(self, latent_dim: int = 3, batch_norm: bool = False):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = nn.Sequential(nn.Linear(latent_dim, 16), nn.BatchNorm1d(16) if batch_norm else nn.Identity(),
                                 nn.ReLU(), nn.Linear(16, 2))

    def forward(self, z):
        return self.net(z)


class TinyD(nn.Module):
    """Softplus keeps the input gradient's own gradient non-trivial (the penalties' double backward)."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Softplus(), nn.Dropout(dropout), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


class TinyImageG(nn.Module):
    latent_dim = 4

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Tanh())

    def forward(self, z):
        return self.net(z).view(-1, 3, 8, 8)


class TinyImageD(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(4 * 4 * 4, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


def make(*, g=None, d=None, **kwargs) -> GANTrainer:
    return GANTrainer(g or TinyG(), d or TinyD(), **kwargs)


def batches(n: int, seed: int = 0) -> list[torch.Tensor]:
    it = toy_batches("ring", B, generator=torch.Generator().manual_seed(seed))
    return [next(it) for _ in range(n)]


def snapshot(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: nn.Module) -> list[str]:
    return [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.equal(before[k], v)]


# --- one step ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("penalty", [None, *PENALTY_KINDS])
@pytest.mark.parametrize("loss", LOSS_KINDS)
def test_one_step_of_every_loss_and_penalty(loss, penalty):
    trainer = make(loss=loss, penalty=penalty)
    g0, d0 = snapshot(trainer.generator), snapshot(trainer.discriminator)
    out = trainer.train_step(batches(1)[0])
    assert set(out) == {"d_loss", "g_loss"} | ({"penalty"} if penalty else set())
    assert all(isinstance(v, float) and v == v for v in out.values()), out
    assert sorted(changed(g0, trainer.generator)) == sorted(g0), "every G tensor must move"
    # A constant shift of D's output cancels in the WGAN loss (and in the hinge loss inside its margin,
    # where logits near 0 are): there the output bias gets a zero gradient.
    expected_d = set(d0) - ({"net.3.bias"} if loss in ("wgan", "hinge") else set())
    assert set(changed(d0, trainer.discriminator)) == expected_d
    assert trainer.step == 1


def test_n_critic_schedule():
    trainer = make(loss="wgan", penalty="wgan-gp", n_critic=3)
    real = batches(7)
    for i, x in enumerate(real):
        g_before, d_before = snapshot(trainer.generator), snapshot(trainer.discriminator)
        out = trainer.train_step(x)
        g_step = (i + 1) % 3 == 0
        assert ("g_loss" in out) == g_step, (i, out)
        assert bool(changed(g_before, trainer.generator)) == g_step, i
        assert changed(d_before, trainer.discriminator), i
    assert trainer.g_optimizer.state[trainer.g_optimizer.param_groups[0]["params"][0]]["step"] == 2


def r1_textbook(D, real, gamma):
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    return gamma / 2 * grad.square().sum(dim=1).mean()


def test_lazy_interval_applies_the_penalty_when_due_with_gain():
    interval, weight, seed = 3, 2.0, 5
    trainer = make(loss="ns", penalty="r1", penalty_weight=weight, lazy_interval=interval, seed=seed)
    # the penalty joins a regular D step (no extra optimizer step): no StyleGAN2 lr / beta correction
    group = trainer.d_optimizer.param_groups[0]
    assert group["lr"] == 2e-4 and group["betas"] == (0.5, 0.999)

    real = batches(7)
    G0, D0 = copy.deepcopy(trainer.generator), copy.deepcopy(trainer.discriminator)
    out = trainer.train_step(real[0])
    # The textbook objective on the same fake batch (the trainer's first latents) with gain = interval.
    z = torch.randn(B, G0.latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        fake = G0(z)
    loss = F.softplus(-D0(real[0])).mean() + F.softplus(D0(fake)).mean()
    penalty = r1_textbook(D0, real[0], weight)
    expected = torch.autograd.grad(loss + interval * penalty, list(D0.parameters()))
    for (name, p), e in zip(trainer.discriminator.named_parameters(), expected):
        assert_close(p.grad, e, atol=1e-6, rtol=1e-4, name=f"D grad {name}")
    assert out["penalty"] == pytest.approx(float(penalty.detach()), rel=1e-5)
    assert out["d_loss"] == pytest.approx(float(loss.detach()), rel=1e-6)

    for i, x in enumerate(real[1:], start=1):
        assert ("penalty" in trainer.train_step(x)) == (i % interval == 0), i


# --- EMA, sampling, AMP ------------------------------------------------------------------------------------

def test_ema_tracks_the_generator():
    decay = 0.5
    trainer = make(g=TinyG(batch_norm=True), ema_decay=decay)
    expected = [p.detach().clone() for p in trainer.generator.parameters()]
    for x in batches(4):
        trainer.train_step(x)
        expected = [e.lerp(p.detach(), 1 - decay) for e, p in zip(expected, trainer.generator.parameters())]
    for (name, p), e in zip(trainer.ema.named_parameters(), expected):
        assert_close(p, e, name=f"ema {name}")
    g_params = dict(trainer.generator.named_parameters())
    assert any(not torch.equal(p, g_params[name]) for name, p in trainer.ema.named_parameters()), "EMA equals G"
    for (name, b), g_b in zip(trainer.ema.named_buffers(), trainer.generator.buffers()):
        assert torch.equal(b, g_b), f"buffer {name} must be G's"

    z_gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    z = torch.randn(8, 3, generator=z_gen())
    with torch.no_grad():
        trainer.ema.eval()
        trainer.generator.eval()
        ema_out, g_out = trainer.ema(z), trainer.generator(z)
        trainer.generator.train()
    assert torch.equal(trainer.sample(8, generator=z_gen()), ema_out)
    assert torch.equal(trainer.sample(8, use_ema=False, generator=z_gen()), g_out)
    assert not torch.equal(ema_out, g_out)
    assert trainer.generator.training and not trainer.ema.training


class AutocastRecordingD(TinyD):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append((torch.is_autocast_enabled("cpu"), x.dtype))
        return super().forward(x)


def test_amp_runs_the_penalty_outside_autocast():
    D = AutocastRecordingD()
    trainer = make(d=D, loss="ns", penalty="r1", amp_dtype=torch.bfloat16)
    g0, d0 = snapshot(trainer.generator), snapshot(D)
    out = trainer.train_step(batches(1)[0])
    assert all(v == v for v in out.values()) and changed(g0, trainer.generator) and changed(d0, D)
    # D step: the loss under autocast, the penalty's own forward in float32; then the G step.
    assert [enabled for enabled, _ in D.calls] == [True, False, True]
    assert D.calls[1][1] == torch.float32
    assert trainer.sample(4).dtype == torch.float32


# --- checkpoints -------------------------------------------------------------------------------------------

RESUME_CONFIGS = [
    dict(loss="wgan", penalty="wgan-gp", n_critic=2, ema_decay=0.9),
    dict(loss="ns", penalty="r1", lazy_interval=2),
    dict(loss="hinge", penalty="r2", amp_dtype=torch.bfloat16, ema_decay=0.8),
]


def full_state(trainer: GANTrainer) -> dict:
    state = {f"G.{k}": v for k, v in trainer.generator.state_dict().items()}
    state.update({f"D.{k}": v for k, v in trainer.discriminator.state_dict().items()})
    if trainer.ema is not None:
        state.update({f"EMA.{k}": v for k, v in trainer.ema.state_dict().items()})
    for name, opt in (("g_opt", trainer.g_optimizer), ("d_opt", trainer.d_optimizer)):
        for i, s in opt.state_dict()["state"].items():
            state.update({f"{name}.{i}.{k}": v for k, v in s.items()})
    return state


@pytest.mark.parametrize("config", RESUME_CONFIGS, ids=["wgan-gp-ncritic2-ema", "r1-lazy2", "r2-bf16-ema"])
def test_resume_is_bit_identical(config, tmp_path):
    k = 5
    real = batches(2 * k, seed=3)

    def build(model_seed: int, trainer_seed: int) -> GANTrainer:
        torch.manual_seed(model_seed)
        return make(g=TinyG(), d=TinyD(dropout=0.2), seed=trainer_seed, **config)  # dropout: the CPU RNG matters

    torch.manual_seed(100)
    uninterrupted = build(0, 1)
    history = uninterrupted.fit(real, 2 * k, progress=False)

    torch.manual_seed(100)
    first = build(0, 1)
    path = str(tmp_path / "ckpt.pt")
    first.fit(real[:k], k, progress=False, checkpoint_path=path, checkpoint_every=2)
    torch.manual_seed(12345)  # a different global RNG state, restored by the checkpoint
    resumed = build(7, 99)  # other initial weights and seed, all overwritten
    resumed.load_checkpoint(path)
    assert resumed.step == k
    resumed_history = resumed.fit(real[k:], k, progress=False)

    assert resumed_history == history[k:]
    expected, actual = full_state(uninterrupted), full_state(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after resuming"


def test_previews_do_not_disturb_training(tmp_path):
    pytest.importorskip("PIL", reason="previews are drawn with Pillow")
    real = batches(6)
    trainers = []
    for sample_dir in (None, str(tmp_path)):
        torch.manual_seed(0)
        trainer = make(g=TinyG(), d=TinyD(dropout=0.2), penalty="wgan-gp", ema_decay=0.9)
        trainer.fit(real, 6, progress=False, sample_every=2 if sample_dir else None, sample_dir=sample_dir)
        trainers.append(full_state(trainer))
    assert len(os.listdir(tmp_path)) == 3
    assert all(torch.equal(trainers[0][k], trainers[1][k]) for k in trainers[0])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    trainer = make(ema_decay=0.9)
    real = batches(2)
    path = tmp_path / "ckpt.pt"
    trainer.train_step(real[0])
    trainer.save_checkpoint(str(path))
    good = path.read_bytes()
    trainer.train_step(real[1])

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(str(path))
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["ckpt.pt"], "the temp file must be removed"
    fresh = make(ema_decay=0.9)
    fresh.load_checkpoint(str(path))
    assert fresh.step == 1


def test_checkpoint_must_match_the_trainer(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    make(loss="wgan", penalty="wgan-gp").save_checkpoint(path)
    with pytest.raises(ValueError, match="loss='wgan'"):
        make(loss="ns", penalty="wgan-gp").load_checkpoint(path)
    with pytest.raises(ValueError, match="ema=False"):
        make(loss="wgan", penalty="wgan-gp", ema_decay=0.9).load_checkpoint(path)
    other = str(tmp_path / "other.pt")
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a GANTrainer checkpoint"):
        make().load_checkpoint(other)


# --- fit and previews --------------------------------------------------------------------------------------

def test_fit_writes_checkpoints_and_previews(tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="previews are drawn with Pillow")

    trainer = make(loss="ns", penalty="r1", n_critic=2)
    history = trainer.fit(toy_batches("grid", B), 6, progress=True, checkpoint_path=str(tmp_path / "c.pt"),
                          checkpoint_every=4, sample_every=3, sample_dir=str(tmp_path / "samples"))
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert ["g_loss" in h for h in history] == [False, True] * 3
    assert sorted(os.listdir(tmp_path / "samples")) == ["step_00000003.png", "step_00000006.png"]
    with Image.open(tmp_path / "samples" / "step_00000006.png") as im:
        assert im.size == (512, 512) and im.mode == "RGB"
    fresh = make(loss="ns", penalty="r1", n_critic=2)
    fresh.load_checkpoint(str(tmp_path / "c.pt"))
    assert fresh.step == 6  # saved at step 4 and again at the end


def test_image_previews_are_a_grid(tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="previews are drawn with Pillow")

    trainer = GANTrainer(TinyImageG(), TinyImageD(), loss="hinge")
    trainer.fit([torch.rand(4, 3, 8, 8) * 2 - 1 for _ in range(2)], 2, progress=False, sample_dir=str(tmp_path))
    with Image.open(tmp_path / "step_00000002.png") as im:
        assert im.size == (8 * 10 + 2, 8 * 10 + 2) and im.mode == "RGB"  # 64 images of 8 x 8, 2-pixel gaps


def test_fit_needs_enough_batches():
    with pytest.raises(ValueError, match="batches ran out after 2 of 3 steps"):
        make().fit(batches(2), 3, progress=False)


# --- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(loss="bce"), ValueError, "loss must be one of"),
    (dict(penalty="gp"), ValueError, "penalty must be None or one of"),
    (dict(n_critic=0), ValueError, "n_critic must be >= 1"),
    (dict(n_critic=1.5), TypeError, "n_critic must be an int"),
    (dict(penalty="r1", penalty_weight=-1.0), ValueError, "penalty_weight must be a finite number >= 0"),
    (dict(lazy_interval=4), ValueError, "lazy_interval=4 needs a penalty"),
    (dict(g_lazy_interval=4), ValueError, "g_lazy_interval=4 needs a g_regularizer"),
    (dict(g_regularizer="path length"), TypeError, "g_regularizer must be None or a callable"),
    (dict(g_regularizer=lambda z, generator: z.sum(), g_regularizer_weight=-1.0), ValueError,
     "g_regularizer_weight must be a finite number >= 0"),
    (dict(penalty="r1", lazy_interval=0), ValueError, "lazy_interval must be >= 1"),
    (dict(ema_decay=1.0), ValueError, "ema_decay"),
    (dict(amp_dtype=torch.float64), ValueError, "amp_dtype"),
    (dict(seed=-1), ValueError, "seed must be >= 0"),
    (dict(g_optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)), ValueError, "not the generator's"),
    (dict(d_optimizer="adam"), TypeError, "d_optimizer must be a torch.optim.Optimizer"),
    (dict(g=nn.Linear(2, 2)), TypeError, "latent_dim"),
    (dict(d=nn.ReLU()), TypeError, "discriminator .* has no parameters"),
])
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        make(**kwargs)


@pytest.mark.parametrize("real, error, match", [
    (torch.empty(B, 2, device="meta"), ValueError, "real is on meta but the trainer is on cpu"),
    (torch.zeros(B, 2, dtype=torch.float64), TypeError, "dtype of the generator's parameters"),
    (torch.zeros(B, 3), ValueError, r"generator makes samples of shape \(16, 2\)"),
    (torch.zeros(0, 2), ValueError, "non-empty batch"),
    ([[0.0, 0.0]], TypeError, "real must be a torch.Tensor"),
])
def test_bad_batch(real, error, match):
    trainer = make()
    with pytest.raises(error, match=match):
        trainer.train_step(real)
    assert trainer.step == 0


def test_bad_fit_arguments(tmp_path):
    trainer = make()
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint_path"):
        trainer.fit(batches(1), 1, checkpoint_every=1)
    with pytest.raises(ValueError, match="sample_every needs sample_dir"):
        trainer.fit(batches(1), 1, sample_every=1)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        trainer.fit(batches(1), -1)


class ThreeDG(TinyG):
    def forward(self, z):
        return F.pad(super().forward(z), (0, 1))  # (B, 3): no preview for it


def test_previews_need_points_or_images(tmp_path):
    trainer = GANTrainer(ThreeDG(), nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)))
    with pytest.raises(ValueError, match=r"previews are drawn for 2-D points .* shape \(3,\)"):
        trainer.save_samples(str(tmp_path / "x.png"))
    assert os.listdir(tmp_path) == []


# --- the quality experiment's smoke run --------------------------------------------------------------------

def test_mode_coverage_benchmark_quick(tmp_path):
    import importlib.util
    import json

    pytest.importorskip("fastgen.models.mlp", reason="fastgen.models.mlp (another engineer's work) is not in the tree")
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                        "run_gan_mode_coverage.py")
    spec = importlib.util.spec_from_file_location("run_gan_mode_coverage", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # work sits under __main__: importing runs nothing
    threads = torch.get_num_threads()
    try:
        assert script.main(["--quick", "--seeds", "0,1", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    with open(tmp_path / "gan_mode_coverage_cpu_quick.json") as f:
        result = json.load(f)
    rows = result["rows"]
    # Every run on every seed, except the paper-defaults reference run: on the first seed only.
    assert [(r["run"], r["seed"]) for r in rows] == [("ns", 0), ("ns", 1), ("ns+ema", 0), ("ns+ema", 1),
                                                    ("wgan-gp", 0), ("wgan-gp", 1), ("ns+r1", 0), ("ns+r1", 1),
                                                    ("ns+r1-decay", 0), ("ns+r1-decay", 1), ("ns+r1-decay-jbt", 0),
                                                    ("ns+r1-decay-jbt", 1), ("wgan-gp-alg1", 0)]
    assert [r["d_steps"] for r in rows] == [10, 10, 10, 10, 50, 50, 10, 10, 10, 10, 10, 10, 50]
    assert [r["evaluated"] for r in rows] == ["G"] * 2 + ["ema"] * 10 + ["G"]
    assert all(len(r["counts"]) == 25 and r["num_modes"] == 25 for r in rows)
    assert [s["run"] for s in result["summary"]] == ["ns", "ns+ema", "wgan-gp", "ns+r1", "ns+r1-decay",
                                                     "ns+r1-decay-jbt", "wgan-gp-alg1"]
    assert result["summary"][0]["modes_covered"] == [rows[0]["modes_covered"], rows[1]["modes_covered"]]
    assert result["provenance"]["eval_samples"] == 2500
    assert (tmp_path / "gan_mode_coverage_cpu_quick.csv").read_text().count("\n") == 1 + len(rows)


def test_dcgan_on_the_digits_with_r1(tmp_path):
    """Image GANs on the shipped digits (16x16): DCGAN G and a layer-norm D with R1 train, sample and preview."""
    from fastgen.data import digit_batches
    from fastgen.models import DCGANDiscriminator, DCGANGenerator

    torch.manual_seed(0)
    G = DCGANGenerator(latent_dim=16, channels=1, image_size=16, base_channels=8)
    D = DCGANDiscriminator(channels=1, image_size=16, base_channels=8, norm="layer")
    trainer = GANTrainer(G, D, loss="ns", penalty="r1", penalty_weight=1.0, lazy_interval=2, ema_decay=0.9)
    before = [p.detach().clone() for p in G.parameters()]
    images = (x for x, _ in digit_batches(32, size=16, epochs=None, generator=torch.Generator().manual_seed(0)))
    history = trainer.fit(images, 6, progress=False)
    assert len(history) == 6 and all(math.isfinite(h["d_loss"]) for h in history)
    assert any("penalty" in h for h in history) and any("penalty" not in h for h in history)
    assert any(not torch.equal(a, b) for a, b in zip(before, G.parameters()))
    samples = trainer.sample(5)
    assert samples.shape == (5, 1, 16, 16) and samples.abs().max() <= 1.0
    trainer.save_samples(str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").stat().st_size > 0
