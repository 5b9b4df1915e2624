"""Jacobian-based truncation (fastgen.gan.jacobian_truncation) and the recipe that samples with it: the
norms against torch.autograd.functional.jacobian, which samples are kept, the candidate count, keep=1 as
plain sampling, the recipe's scored samples, bad input. Tiny networks: seconds."""
import math

import pytest
import torch
import torch.nn as nn

from fastgen.gan.jacobian_truncation import jacobian_norms, jacobian_truncated_sample

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyG(nn.Module):
    def __init__(self, latent_dim=3, out_shape=(2,)):
        super().__init__()
        self.latent_dim, self.out_shape = latent_dim, out_shape
        self.net = nn.Sequential(nn.Linear(latent_dim, 16), nn.Tanh(), nn.Linear(16, math.prod(out_shape)))

    def forward(self, z):
        return self.net(z).reshape(z.shape[0], *self.out_shape)


class Cubed(nn.Module):
    """G(z) = (z0^3, z1): ||J||_F = sqrt(9 z0^4 + 1), so the smallest norms are the smallest |z0|."""
    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, z):
        return torch.stack([z[:, 0] ** 3, z[:, 1]], dim=1)


@pytest.mark.parametrize("out_shape", [(2,), (1, 2, 3)])  # points; an image-shaped output is flattened
def test_norms_match_the_full_jacobian(out_shape):
    torch.manual_seed(0)
    G = TinyG(3, out_shape).double()
    z = torch.randn(5, 3, dtype=torch.float64)
    expected = torch.stack([torch.autograd.functional.jacobian(lambda v: G(v[None])[0], row).reshape(-1, 3).norm()
                            for row in z])
    torch.testing.assert_close(jacobian_norms(G, z), expected.float())


def test_keeps_the_smallest_norms_in_draw_order():
    G = Cubed()
    out = jacobian_truncated_sample(G, 10, 0.25, rng=torch.Generator().manual_seed(1))
    z = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))  # the same candidate stream
    kept = torch.sort(z[:, 0].abs().argsort()[:10]).values
    assert out.candidates == 40 and out.acceptance_rate == 0.25
    torch.testing.assert_close(out.latents, z[kept])
    torch.testing.assert_close(out.samples, G(z[kept]))
    torch.testing.assert_close(out.norms, (9 * z[kept, 0] ** 4 + 1).sqrt())
    assert out.threshold == pytest.approx(float(out.norms.max()))
    assert float(out.norms.max()) <= float((9 * z[:, 0] ** 4 + 1).sqrt().sort().values[10])


def test_keep_one_is_plain_sampling_and_mode_is_restored():
    torch.manual_seed(0)
    G = TinyG(2)
    G.train()
    out = jacobian_truncated_sample(G, 7, 1.0, rng=torch.Generator().manual_seed(3))
    assert G.training and out.candidates == 7
    with torch.no_grad():
        torch.testing.assert_close(out.samples, G(torch.randn(7, 2, generator=torch.Generator().manual_seed(3))))


def test_candidate_count():
    G = Cubed()
    for keep, expected in ((0.9, 2778), (0.8, 3125), (0.95, 2632)):
        assert jacobian_truncated_sample(G, 2500, keep, rng=torch.Generator().manual_seed(0)).candidates == expected
    assert jacobian_truncated_sample(G, 21, 0.7).candidates == 30  # 21 / 0.7 is 30.000000000000004 in floats


@pytest.mark.parametrize("kwargs, match", [
    ({"keep": 0.0}, "keep"), ({"keep": 1.5}, "keep"), ({"keep": True}, "keep"), ({"n": 0}, "n"),
    ({"chunk": 0}, "chunk"),
])
def test_bad_input(kwargs, match):
    args = {"n": 4, "keep": 0.5, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        jacobian_truncated_sample(Cubed(), args.pop("n"), args.pop("keep"), **args)


def test_bad_latents_and_generators():
    with pytest.raises(ValueError, match="z must be"):
        jacobian_norms(Cubed(), torch.zeros(3))
    with pytest.raises(TypeError, match="generator must be"):
        jacobian_norms("G", torch.zeros(3, 2))
    with pytest.raises(ValueError, match="latent_dim"):
        jacobian_truncated_sample(lambda z: z, 4, 0.5)


def test_recipe_scores_its_truncated_samples(tmp_path):
    """`fastgen train gan2d --recipe ns+r1-decay-jbt`: samples.npy is the truncated sample of the EMA."""
    import json

    import numpy as np

    from fastgen.cli import main
    from fastgen.data import TOY_MIXTURES
    from fastgen.gan import recipes
    from fastgen.gan.metrics import mode_coverage

    keep = recipes.RUNS["ns+r1-decay-jbt"]["jacobian_truncation"]
    assert recipes.recipe_steps("ns+r1-decay-jbt") == 6000 and recipes.recipe_steps("ns+r1") == recipes.DEFAULT_STEPS
    assert main(["train", "gan2d", "--data", "grid", "--seed", "2", "--out", str(tmp_path), "--quick", "--steps",
                 "3", "--recipe", "ns+r1-decay-jbt", "--no-progress"]) == 0
    samples = torch.from_numpy(np.load(tmp_path / "samples.npy"))
    trainer, _, _ = recipes.train_recipe("ns+r1-decay-jbt", "grid", 2, 3, recipes.QUICK_SETTINGS)
    expected = jacobian_truncated_sample(trainer.ema, recipes.EVAL_SAMPLES, keep,
                                         rng=torch.Generator().manual_seed(3)).samples
    torch.testing.assert_close(samples, expected)
    plain = recipes.evaluation_samples(trainer, 2)
    assert not torch.equal(samples, plain)
    scores = json.load(open(tmp_path / "scores.json"))
    assert scores["jacobian_truncation_keep"] == keep and scores["g_steps"] == 3
    assert scores["high_quality_fraction"] == mode_coverage(samples, TOY_MIXTURES["grid"]()).high_quality_fraction
