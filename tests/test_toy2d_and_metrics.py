"""2-D toy data (statistics, definitions, reproducibility) and the mode-coverage metric on hand-made samples."""
import math

import pytest
import torch

from fastgen.data import (TOY_DATASETS, TOY_MIXTURES, Mixture, grid_mixture, grid_of_gaussians, ring_mixture,
                          ring_of_gaussians, swiss_roll, toy_batches, two_moons)
from fastgen.gan.metrics import ModeCoverage, mode_coverage
from helpers import assert_close


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- mixtures ----------------------------------------------------------------------------------------------

def test_grid_centres_are_the_benchmark_grid():
    m = grid_mixture()
    axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
    assert m.centers.dtype == torch.float32 and m.num_modes == 25 and m.std == 0.05
    assert torch.equal(m.centers, torch.cartesian_prod(axis, axis))


def test_ring_centres_lie_on_the_circle():
    m = ring_mixture(modes=8, radius=2.0)
    assert m.centers.shape == (8, 2) and m.std == 0.02
    assert_close(m.centers.norm(dim=1), torch.full((8,), 2.0), name="radius")
    angles = torch.atan2(m.centers[:, 1], m.centers[:, 0]).remainder(2 * math.pi)
    assert_close(angles, torch.arange(8) * (2 * math.pi / 8), atol=1e-6, rtol=0, name="angles")


@pytest.mark.parametrize("mixture", [ring_mixture(), grid_mixture(), ring_mixture(modes=3, radius=1.0, std=0.1)],
                         ids=["ring", "grid", "ring3"])
def test_mixture_statistics(mixture):
    """Equal mode frequencies (within 5 binomial stds) and the per-axis std of each component."""
    n = 40_000
    x = mixture.sample(n, generator=gen(1))
    assert x.shape == (n, 2) and x.dtype == torch.float32
    nearest = torch.cdist(x, mixture.centers).argmin(dim=1)
    counts = torch.bincount(nearest, minlength=mixture.num_modes).double()
    p = 1 / mixture.num_modes
    assert (counts - n * p).abs().max() < 5 * math.sqrt(n * p * (1 - p)), counts
    residual = x - mixture.centers[nearest]
    # std of the sample std of n normals is std / sqrt(2n): 3% is > 6 sigma here.
    assert_close(residual.std(dim=0), torch.full((2,), mixture.std), atol=0, rtol=0.03, name="std")
    assert_close(residual.mean(dim=0), torch.zeros(2), atol=5 * mixture.std / math.sqrt(n), rtol=0, name="mean")


def test_samplers_match_their_mixtures():
    assert torch.equal(ring_of_gaussians(100, generator=gen(3)), ring_mixture().sample(100, generator=gen(3)))
    assert torch.equal(grid_of_gaussians(100, side=3, spacing=1.0, std=0.1, generator=gen(3)),
                       grid_mixture(side=3, spacing=1.0, std=0.1).sample(100, generator=gen(3)))


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_reproducible_from_a_generator(name):
    sampler = TOY_DATASETS[name]
    a, b, c = sampler(257, generator=gen(7)), sampler(257, generator=gen(7)), sampler(257, generator=gen(8))
    assert a.shape == (257, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert sampler(0, generator=gen(7)).shape == (0, 2)


def test_swiss_roll_definition():
    """Without noise every point is t (cos t, sin t) / 7.5 with t = 7.5 |x| in [1.5 pi, 4.5 pi)."""
    x = swiss_roll(5000, noise=0.0, generator=gen()).double()
    t = 7.5 * x.norm(dim=1)
    assert t.min() >= 1.5 * math.pi - 1e-4 and t.max() < 4.5 * math.pi + 1e-4
    assert_close(x, t[:, None] * torch.stack([t.cos(), t.sin()], dim=1) / 7.5, atol=1e-5, rtol=0, name="curve")
    # u is uniform: t's mean is the middle of its range.
    assert abs(float(t.mean()) - 3 * math.pi) < 0.1


def test_two_moons_definition():
    """Without noise: the upper moon is on the unit circle (y >= 0), the lower one on the unit circle
    around (1, 1/2) (y <= 1/2); half of the points on each."""
    x = two_moons(10_000, noise=0.0, generator=gen()).double()
    upper = (x.norm(dim=1) - 1).abs() < 1e-5
    lower = ((x - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs() < 1e-5
    assert bool((upper | lower).all())
    assert bool((x[upper & ~lower, 1] >= -1e-6).all()) and bool((x[lower & ~upper, 1] <= 0.5 + 1e-6).all())
    assert abs(float(upper.double().mean()) - 0.5) < 0.03
    noisy = two_moons(10_000, noise=0.1, generator=gen())
    assert_close((noisy - x.float()).std(dim=0), torch.full((2,), 0.1), atol=0, rtol=0.05, name="noise std")


def test_toy_batches_stream():
    it = toy_batches("ring", 32, generator=gen(5), modes=4, radius=1.0)
    first, second = next(it), next(it)
    expected = ring_of_gaussians(32, modes=4, radius=1.0, generator=gen(5))
    assert torch.equal(first, expected)
    assert second.shape == (32, 2) and not torch.equal(first, second)
    assert first.device == torch.device("cpu")


def test_toy_mixtures_registry_matches_samplers():
    for name, factory in TOY_MIXTURES.items():
        assert torch.equal(TOY_DATASETS[name](64, generator=gen(2)), factory().sample(64, generator=gen(2)))


@pytest.mark.parametrize("call, error, match", [
    (lambda: toy_batches("spiral", 4), ValueError, "name must be one of"),
    (lambda: toy_batches("grid", 0), ValueError, "batch_size must be >= 1"),
    (lambda: toy_batches("grid", 4, modes=3), TypeError, "does not take these parameters"),
    (lambda: ring_of_gaussians(-1), ValueError, "n must be >= 0"),
    (lambda: ring_of_gaussians(2.5), TypeError, "n must be an int"),
    (lambda: ring_mixture(modes=0), ValueError, "modes must be >= 1"),
    (lambda: grid_mixture(spacing=0.0), ValueError, "spacing must be > 0"),
    (lambda: swiss_roll(4, noise=-0.1), ValueError, "noise must be >= 0"),
    (lambda: two_moons(4, generator=0), TypeError, "generator must be a torch.Generator"),
    (lambda: Mixture(torch.zeros(3, 3), 0.1), ValueError, r"centers must have shape \(K, 2\)"),
    (lambda: Mixture(torch.zeros(3, 2), -1.0), ValueError, "std must be >= 0"),
])
def test_data_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- mode coverage -----------------------------------------------------------------------------------------

def test_all_modes_covered():
    m = grid_mixture()
    result = mode_coverage(m.centers.repeat(100, 1), m)
    assert isinstance(result, ModeCoverage)
    assert (result.modes_covered, result.num_modes, result.high_quality_fraction) == (25, 25, 1.0)
    assert torch.equal(result.counts, torch.full((25,), 100, dtype=torch.int64))
    assert result.reverse_kl == pytest.approx(0.0, abs=1e-12)


def test_true_samples_score_like_the_chi_square_bound():
    """Samples of the mixture itself: all modes, P(||N(0, I_2)|| <= 3) = 1 - exp(-4.5) high quality."""
    m = grid_mixture()
    result = mode_coverage(m.sample(20_000, generator=gen()), m)
    assert result.modes_covered == 25
    assert result.high_quality_fraction == pytest.approx(1 - math.exp(-4.5), abs=0.005)
    assert result.reverse_kl < 0.01


def test_one_mode_dropped():
    m = ring_mixture()
    kept = m.centers[1:].repeat(10, 1) + 0.5 * m.std  # within 3 std of modes 1 .. 7 only
    result = mode_coverage(kept, m)
    assert result.modes_covered == 7 and result.high_quality_fraction == 1.0
    assert result.counts[0] == 0 and bool((result.counts[1:] == 10).all())
    assert result.reverse_kl == pytest.approx(math.log(8 / 7), rel=1e-12)


def test_far_samples_are_low_quality_and_the_threshold_is_in_stds():
    m = ring_mixture()  # std 0.02
    center = m.centers[2]
    samples = torch.stack([center + torch.tensor([2.9 * 0.02, 0.0]),   # inside 3 std
                           center + torch.tensor([0.0, 3.1 * 0.02]),   # just outside
                           torch.tensor([0.0, 0.0]),                   # between the modes
                           torch.tensor([50.0, -50.0])])               # far from everything
    result = mode_coverage(samples, m)
    assert result.high_quality_fraction == 0.25 and result.modes_covered == 1 and result.counts[2] == 1
    assert mode_coverage(samples, m, threshold_std=3.2).high_quality_fraction == 0.5
    assert result.reverse_kl == pytest.approx(math.log(8))  # everything on one mode
    # PacGAN's all-samples histogram counts every sample at its nearest mode: the two near mode 2,
    # (50, -50) at mode 7 (angle -pi/4), and (0, 0), equidistant from all eight, at one of them.
    assert result.counts_all.sum() == 4 and result.counts_all[2] >= 2 and result.counts_all[7] >= 1
    p = result.counts_all[result.counts_all > 0].to(torch.float64) / 4
    assert sorted(p.tolist()) == [0.25, 0.25, 0.5]
    p = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    assert result.reverse_kl_all == pytest.approx(float((p * (8 * p).log()).sum()), rel=1e-12)


def test_non_finite_samples_are_never_high_quality():
    m = grid_mixture()
    samples = m.centers.clone()
    samples[0, 0] = float("nan")
    samples[1] = float("inf")
    samples[2, 1] = float("-inf")
    result = mode_coverage(samples, m)
    assert result.modes_covered == 22 and result.high_quality_fraction == 22 / 25
    assert result.counts[:3].tolist() == [0, 0, 0]
    nothing = mode_coverage(torch.full((4, 2), float("nan")), m)
    assert nothing.modes_covered == 0 and nothing.high_quality_fraction == 0.0 and math.isnan(nothing.reverse_kl)
    assert result.counts_all.sum() == 22 and math.isnan(nothing.reverse_kl_all)  # non-finite rows: in no histogram


def test_min_samples_per_mode():
    m = ring_mixture(modes=4, radius=1.0)
    samples = torch.cat([m.centers[0].repeat(5, 1), m.centers[1].repeat(2, 1), m.centers[2].repeat(1, 1)])
    assert mode_coverage(samples, m).modes_covered == 3  # default: one high-quality sample suffices
    assert mode_coverage(samples, m, min_samples_per_mode=2).modes_covered == 2
    assert mode_coverage(samples, m, min_samples_per_mode=5).modes_covered == 1


def test_float64_and_as_dict():
    m = ring_mixture()
    result = mode_coverage(m.centers.double(), m)
    assert result.modes_covered == 8
    d = result.as_dict()
    assert d["counts"] == [1] * 8 and d["num_modes"] == 8 and isinstance(d["reverse_kl"], float)


@pytest.mark.parametrize("call, error, match", [
    (lambda m: mode_coverage([[0.0, 0.0]], m), TypeError, "samples must be a floating tensor"),
    (lambda m: mode_coverage(torch.zeros(4, dtype=torch.int64).view(2, 2), m), TypeError, "floating"),
    (lambda m: mode_coverage(torch.zeros(4, 3), m), ValueError, r"shape \(n, 2\)"),
    (lambda m: mode_coverage(torch.zeros(0, 2), m), ValueError, "n >= 1"),
    (lambda m: mode_coverage(torch.zeros(4, 2), "grid"), TypeError, "mixture must be"),
    (lambda m: mode_coverage(torch.zeros(4, 2), m, threshold_std=0), ValueError, "threshold_std"),
    (lambda m: mode_coverage(torch.zeros(4, 2), m, min_samples_per_mode=0), ValueError, "min_samples_per_mode"),
    (lambda m: mode_coverage(torch.zeros(4, 2), m, min_samples_per_mode=1.5), TypeError, "min_samples_per_mode"),
])
def test_metric_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(grid_mixture())
