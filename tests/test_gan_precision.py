"""GANTrainer's lr_schedule and linear_lr_decay (the learning-rate decay of the 2-D mixture precision
ablation, benchmarks/run_gan_precision_ablation.py): the rates each step, that they move the updates,
exact resume, bad input. Tiny local networks: seconds."""
import pytest
import torch
import torch.nn as nn

from fastgen.data import toy_batches
from fastgen.gan.trainer import GANTrainer, linear_lr_decay

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyG(nn.Module):
    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, z):
        return self.net(z)


class TinyD(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Softplus(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


def make(**kwargs):
    torch.manual_seed(0)
    return GANTrainer(TinyG(), TinyD(), loss="ns", penalty="r1", penalty_weight=0.1, lr=1e-2, betas=(0.0, 0.99),
                      ema_decay=0.9, seed=3, **kwargs)


def batches():
    return toy_batches("grid", 8, generator=torch.Generator().manual_seed(1))


def test_linear_lr_decay_values():
    f = linear_lr_decay(10, start=0.4, final=0.01)
    assert [f(k) for k in range(5)] == [1.0] * 5  # held until G step 4 = 0.4 * 10
    assert f(7) == pytest.approx(1 - 0.99 * 3 / 6)
    assert f(10) == pytest.approx(0.01) and f(25) == pytest.approx(0.01)
    g = linear_lr_decay(4, start=0.0, final=0.0)
    assert [g(k) for k in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


@pytest.mark.parametrize("n_critic", [1, 3])
def test_rates_follow_the_schedule_per_g_step(n_critic):
    schedule = linear_lr_decay(4, start=0.25, final=0.1)
    trainer = make(lr_schedule=schedule, n_critic=n_critic)
    data = batches()
    for step in range(6 * n_critic):
        g_steps = step // n_critic  # G steps done before this train_step
        for opt in (trainer.g_optimizer, trainer.d_optimizer):
            assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * schedule(g_steps))
        trainer.train_step(next(data))


def test_schedule_moves_the_updates():
    """A zero factor freezes both networks; the default (no schedule) does not."""
    frozen, free = make(lr_schedule=lambda k: 0.0), make()
    before = [p.clone() for p in frozen.generator.parameters()] + [p.clone() for p in frozen.discriminator.parameters()]
    for trainer in (frozen, free):
        trainer.fit(batches(), 3, progress=False)
    after = list(frozen.generator.parameters()) + list(frozen.discriminator.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    moved = list(free.generator.parameters()) + list(free.discriminator.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, moved))


def test_resume_continues_the_schedule(tmp_path):
    schedule = linear_lr_decay(6, start=0.0, final=0.05)
    data = toy_batches("grid", 8, generator=torch.Generator().manual_seed(1))
    whole = make(lr_schedule=schedule)
    whole.fit(data, 6, progress=False)

    data = toy_batches("grid", 8, generator=torch.Generator().manual_seed(1))
    first = make(lr_schedule=schedule)
    first.fit(data, 3, progress=False)
    path = str(tmp_path / "c.pt")
    first.save_checkpoint(path)
    resumed = make(lr_schedule=schedule)
    resumed.load_checkpoint(path)
    assert resumed.g_optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * schedule(3))
    resumed.fit(data, 3, progress=False)
    for a, b in zip(list(whole.generator.parameters()) + list(whole.ema.parameters()),
                    list(resumed.generator.parameters()) + list(resumed.ema.parameters())):
        assert torch.equal(a, b)
    for opt_a, opt_b in ((whole.g_optimizer, resumed.g_optimizer), (whole.d_optimizer, resumed.d_optimizer)):
        assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"] == pytest.approx(1e-2 * schedule(6))


def test_bad_input():
    with pytest.raises(TypeError, match="lr_schedule"):
        make(lr_schedule=0.5)
    with pytest.raises(ValueError, match="start"):
        linear_lr_decay(10, start=1.5)
    with pytest.raises(ValueError, match="final"):
        linear_lr_decay(10, final=-0.1)
    with pytest.raises((TypeError, ValueError), match="steps"):
        linear_lr_decay(0)


def test_default_adam_updates_equal_the_per_parameter_loop():
    """GANTrainer's default Adam runs foreach (speed); on the CPU its updates are bit-identical to torch's
    per-parameter loop, so the recorded runs reproduce exactly (same seed -> same losses and weights)."""
    torch.manual_seed(0)
    G, D = TinyG(), TinyD()
    loop = GANTrainer(G, D, loss="ns", penalty="r1", penalty_weight=0.1, ema_decay=0.9, seed=3,
                      g_optimizer=torch.optim.Adam(G.parameters(), lr=1e-2, betas=(0.0, 0.99), foreach=False),
                      d_optimizer=torch.optim.Adam(D.parameters(), lr=1e-2, betas=(0.0, 0.99), foreach=False))
    default = make()
    assert default.g_optimizer.defaults["foreach"] and default.d_optimizer.defaults["foreach"]
    assert loop.fit(batches(), 5, progress=False) == default.fit(batches(), 5, progress=False)
    for a, b in zip(loop.generator.parameters(), default.generator.parameters()):
        assert torch.equal(a, b)


def _ablation_script():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                        "run_gan_precision_ablation.py")
    spec = importlib.util.spec_from_file_location("run_gan_precision_ablation", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # work sits under __main__: importing runs nothing
    return script


def test_ablation_scores_jacobian_truncation_and_collects(tmp_path):
    """--quick run of the truncation config (12 steps, tiny MLPs), then --collect: one row per eval step,
    model and keep; the summary's worst / mean columns."""
    import json

    script = _ablation_script()
    threads = torch.get_num_threads()
    try:
        assert script.main(["--configs", "decay-6k-jbt", "--data", "ring", "--seeds", "0", "--quick",
                            "--part-dir", str(tmp_path / "parts")]) == 0
    finally:
        torch.set_num_threads(threads)
    (tmp_path / "parts" / "decay-6k-jbt_ring_0_quick.json").rename(tmp_path / "parts" / "decay-6k-jbt_ring_0.json")
    script.collect(str(tmp_path / "parts"), str(tmp_path / "out"), "test", [])
    result = json.load(open(tmp_path / "out" / "gan_precision_ablation_cpu.json"))
    models = [f"{m}{k}" for m in ("G", "ema0.99") for k in ("", "+jbt0.95", "+jbt0.9", "+jbt0.8")]
    assert sorted(r["model"] for r in result["rows"] if r["g_steps"] == 12) == sorted(models)
    assert {r["g_steps"] for r in result["rows"]} == {6, 12}
    assert all((r["jbt_keep"] is None) == ("jbt" not in r["model"]) for r in result["rows"])
    summary = result["summary"][0]
    assert summary["min_modes_covered"] == min(summary["modes_covered"])
    assert summary["mean_reverse_kl_all"] == pytest.approx(sum(summary["reverse_kl_all"]) / len(summary["seeds"]))


def test_ablation_rescores_saved_models(tmp_path):
    """--rescore-from: the saved final models of the trains_like config, scored as a run would score them."""
    import json

    from fastgen.data import ring_mixture
    from fastgen.gan.jacobian_truncation import jacobian_truncated_sample
    from fastgen.gan.metrics import mode_coverage
    from fastgen.models import MLPGenerator

    script = _ablation_script()
    torch.manual_seed(0)
    G, ema = MLPGenerator(), MLPGenerator()  # untrained: the scoring is what is checked
    torch.save({"generator": G.state_dict(), "ema": ema.state_dict()}, tmp_path / "decay-6k_ring_4.pt")
    trained = {"g_steps": 6000, "model": "ema0.99", "train_seconds": 12.5, "lr_at_eval": 1e-5, "penalty_weight": 0.1}
    (tmp_path / "decay-6k_ring_4.json").write_text(json.dumps({"command": "x", "rows": [trained]}))
    rows = script.rescore("decay-6k-jbt", "ring", 4, str(tmp_path))
    by_model = {r["model"]: r for r in rows}
    assert len(rows) == 8 and all(r["train_seconds"] == 12.5 and r["rescored_from"] == "decay-6k" for r in rows)
    expected = mode_coverage(jacobian_truncated_sample(ema, 2500, 0.9, rng=torch.Generator().manual_seed(5)).samples,
                             ring_mixture())
    assert by_model["ema0.99+jbt0.9"]["counts_all"] == expected.counts_all.tolist()
    with pytest.raises(SystemExit, match="cannot be rescored"):
        script.rescore("decay-6k", "ring", 4, str(tmp_path))
