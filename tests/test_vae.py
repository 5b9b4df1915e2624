"""Likelihoods, Autoencoder / VAE / IWAE, the VAE trainer and VAE-GAN, against torch.distributions and by hand."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from fastgen.checkpoint import CheckpointError
from fastgen.data import load_digits
from fastgen.models import (VAE, Autoencoder, Bernoulli, ConvDecoder, ConvEncoder, DiscretizedLogistic, Gaussian,
                            bits_per_dim)
from fastgen.vae import VAETrainer

LATENT = 4


def tiny_vae(likelihood=None, beta=1.0, seed=0):
    torch.manual_seed(seed)
    lik = DiscretizedLogistic(17) if likelihood is None else likelihood
    return VAE(ConvEncoder(1, 8, 2 * LATENT, (8,)), ConvDecoder(LATENT, lik.params_per_channel, 8, (8,)),
               LATENT, lik, beta)


def digits(n=16, start=0):
    return load_digits()[0][start:start + n]   # (n, 1, 8, 8) in [-1, 1], 17 levels


# --- likelihoods ----------------------------------------------------------------------------------------

def test_bernoulli_is_minus_bce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 5, 4, generator=g, dtype=torch.float64) * 4
    x = torch.rand(3, 2, 5, 4, generator=g, dtype=torch.float64)
    ref = -torch.stack([F.binary_cross_entropy(torch.sigmoid(l), t, reduction="sum") for l, t in zip(logits, x)])
    torch.testing.assert_close(Bernoulli().log_prob(logits, x), ref)
    xb = x.round()
    ref_b = torch.distributions.Bernoulli(logits=logits).log_prob(xb).flatten(1).sum(1)
    torch.testing.assert_close(Bernoulli().log_prob(logits, xb), ref_b)


@pytest.mark.parametrize("learned", [False, True])
def test_gaussian_matches_normal(learned):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    mean = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    logvar = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64) if learned else torch.full_like(mean, -0.7)
    lik = Gaussian(None) if learned else Gaussian(-0.7)
    params = torch.cat([mean, logvar], 1) if learned else mean
    ref = Normal(mean, torch.exp(0.5 * logvar)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(params, x), ref)


@pytest.mark.parametrize("num_bins", [2, 17, 256])
@pytest.mark.parametrize("mu,log_scale", [(0.0, -2.0), (0.93, -5.0), (-1.4, 0.5), (0.3, -7.0), (0.01, 3.0)])
def test_discretized_logistic_sums_to_one(num_bins, mu, log_scale):
    lik = DiscretizedLogistic(num_bins)
    levels = torch.arange(num_bins, dtype=torch.float64)
    x = (2 * levels / (num_bins - 1) - 1).view(-1, 1, 1, 1)
    params = torch.tensor([mu, log_scale], dtype=torch.float64).view(1, 2, 1, 1).expand(num_bins, 2, 1, 1)
    logp = lik.log_prob(params, x)
    assert torch.isfinite(logp).all()
    torch.testing.assert_close(torch.logsumexp(logp, 0), torch.zeros((), dtype=torch.float64), atol=1e-12, rtol=0)
    # each bin against the logistic CDF, differenced directly in float64 (on the upper side as a
    # difference of survival functions, so that tail masses keep their precision)
    s, h = math.exp(log_scale), 1.0 / (num_bins - 1)
    lo = torch.where(levels > 0, x.flatten() - h, torch.full_like(levels, -math.inf))
    hi = torch.where(levels < num_bins - 1, x.flatten() + h, torch.full_like(levels, math.inf))
    cdf = lambda e: torch.sigmoid((e - mu) / s)
    sf = lambda e: torch.sigmoid((mu - e) / s)
    mass = torch.where(x.flatten() > mu, sf(lo) - sf(hi), cdf(hi) - cdf(lo))
    ok = mass > 1e-250
    assert ok.sum() >= min(num_bins, 2)
    torch.testing.assert_close(logp[ok], mass[ok].log(), rtol=1e-8, atol=1e-10)


def test_discretized_logistic_edges_and_grid():
    lik = DiscretizedLogistic(256)
    params = torch.tensor([0.0, -3.0]).view(1, 2, 1, 1)
    lo, hi = torch.full((1, 1, 1, 1), -1.0), torch.full((1, 1, 1, 1), 1.0)
    # the edge bins hold the tails: by symmetry about mu = 0, equal, and more than an inner bin
    torch.testing.assert_close(lik.log_prob(params, lo), lik.log_prob(params, hi))
    assert float(lik.log_prob(params, lo)) > float(lik.log_prob(params, torch.full((1, 1, 1, 1), -1 + 2 / 255)))
    # off-grid values are read as their nearest level
    x = torch.full((1, 1, 1, 1), 2 * 100 / 255 - 1)
    torch.testing.assert_close(lik.log_prob(params, x + 0.3 / 255), lik.log_prob(params, x))
    # gradients in float64
    p = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    xs = (torch.randint(0, 256, (2, 1, 3, 3)) * 2 / 255 - 1).double()
    assert torch.autograd.gradcheck(lambda q: lik.log_prob(q, xs), (p,))


def test_likelihood_bad_input():
    with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\]"):
        DiscretizedLogistic().log_prob(torch.zeros(1, 2, 2, 2), torch.full((1, 1, 2, 2), 1.5))
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        Bernoulli().log_prob(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), -0.5))
    with pytest.raises(ValueError, match="params of a discretized logistic likelihood must have shape"):
        DiscretizedLogistic().log_prob(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="num_bins"):
        DiscretizedLogistic(1)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        VAE.digits(likelihood="poisson")


def test_bits_per_dim():
    d = 64
    assert bits_per_dim(d * math.log(256), d) == pytest.approx(8.0)
    # uniform density 1/2 per dimension on [-1, 1], 8-bit data dequantised: 8 bits per dimension
    assert bits_per_dim(d * math.log(2), d, bin_width=2 / 256) == pytest.approx(8.0)
    torch.testing.assert_close(bits_per_dim(torch.tensor([0.0, d * math.log(2)]), d), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="bin_width"):
        bits_per_dim(1.0, d, bin_width=0.0)
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(1.0, 0)


# --- models ---------------------------------------------------------------------------------------------

def test_presets_shapes():
    x = digits(3)
    vae = VAE.digits(latent_dim=8)
    out = vae(x)
    assert out["elbo"].shape == out["kl"].shape == (3,) and out["reconstruction"].shape == x.shape
    assert vae.sample(2).shape == (2, 1, 8, 8)
    ae = Autoencoder.digits(latent_dim=8)
    assert ae(x)["reconstruction"].shape == x.shape
    rgb = torch.rand(2, 3, 32, 32) * 2 - 1
    assert VAE.rgb32(latent_dim=8)(rgb)["elbo"].shape == (2,)
    assert Autoencoder.rgb32(latent_dim=8, likelihood=Bernoulli())((rgb + 1) / 2)["nll"].shape == (2,)


def test_autoencoder_gaussian_loss_is_half_squared_error():
    torch.manual_seed(0)
    ae = Autoencoder(ConvEncoder(1, 8, LATENT, (8,)), ConvDecoder(LATENT, 1, 8, (8,)), Gaussian(0.0))
    x = digits(5)
    out = ae(x)
    se = 0.5 * (out["reconstruction"] - x).square().flatten(1).sum(1)
    torch.testing.assert_close(out["nll"], se + 32 * math.log(2 * math.pi))


def test_vae_kl_term_matches_torch_distributions():
    vae, x = tiny_vae(), digits(6)
    out = vae(x, generator=torch.Generator().manual_seed(0))
    mu, logvar = vae.encode(x)
    ref = kl_divergence(Independent(Normal(mu, torch.exp(0.5 * logvar)), 1),
                        Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1))
    torch.testing.assert_close(out["kl"], ref)
    torch.testing.assert_close(out["elbo"], out["log_px_z"] - ref)
    beta = tiny_vae(beta=0.25)
    out_b = beta(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out_b["loss"], (-out_b["log_px_z"] + 0.25 * out_b["kl"]).mean())


def test_iwae_k1_is_the_single_sample_elbo():
    vae, x = tiny_vae(), digits(8)
    with torch.no_grad():
        bound = vae.iwae_bound(x, 1, generator=torch.Generator().manual_seed(5))
        mu, logvar = vae.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
        q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
        prior = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
        ref = vae.likelihood.log_prob(vae.decode(z), x) + prior.log_prob(z) - q.log_prob(z)
        torch.testing.assert_close(bound, ref, rtol=1e-5, atol=1e-4)
        # and, averaged over draws, it is the closed-form-KL ELBO
        reps = 300
        xr = x.repeat(reps, 1, 1, 1)
        g = torch.Generator().manual_seed(6)
        mc = vae.iwae_bound(xr, 1, generator=g).view(reps, -1)
        elbo = vae.elbo(xr, generator=g).view(reps, -1)
        gap = (mc - elbo).mean(0)
        se = (mc - elbo).std(0) / math.sqrt(reps)
        assert float((gap.abs() / se).max()) < 4.5


def test_iwae_chunking_and_bound_order():
    vae, x = tiny_vae(), digits(4)
    with torch.no_grad():
        # chunks of the k samples merged by a running logsumexp == one pass (same noise: chunks run along k)
        whole = vae.iwae_bound(x, 64, generator=torch.Generator().manual_seed(7), max_batch=4096)
        chunked = vae.iwae_bound(x, 64, generator=torch.Generator().manual_seed(7), max_batch=8)
        torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-4)
        # IWAE_64 <= log p(x) is tighter than the ELBO (IWAE NLL <= ELBO NLL), in expectation
        elbo = torch.stack([vae.elbo(x, generator=torch.Generator().manual_seed(s)) for s in range(20)]).mean(0)
        assert bool((whole >= elbo).all())
        # more examples than max_batch: sliced over the batch as well
        assert vae.iwae_bound(digits(10), 3, max_batch=4).shape == (10,)


def test_vae_bad_input():
    vae = tiny_vae()
    with pytest.raises(ValueError, match="k must be >= 1"):
        vae.iwae_bound(digits(2), 0)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        tiny_vae(beta=-1.0)
    with pytest.raises(ValueError, match="x must have shape"):
        vae(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="x must lie in"):
        vae(digits(2) * 3)
    with pytest.raises(ValueError, match="encoder must return"):
        VAE(ConvEncoder(1, 8, 3, (8,)), ConvDecoder(LATENT, 2, 8, (8,)), LATENT, DiscretizedLogistic(17))(digits(2))
    with pytest.raises(ValueError, match="image_size=12 must be divisible"):
        ConvEncoder(1, 12, 4, (8, 8, 8))


# --- the trainer and VAE-GAN ----------------------------------------------------------------------------

def _batches(n=16, seed=0):
    images = load_digits()[0]
    g = torch.Generator().manual_seed(seed)
    while True:
        yield images[torch.randint(0, images.shape[0], (n,), generator=g)]


def test_trainer_learns_and_resumes_exactly(tmp_path):
    trainer = VAETrainer(tiny_vae(), lr=3e-3, ema_decay=0.9, grad_clip=100.0, seed=1)
    history = trainer.fit(_batches(), 40, progress=False, log_every=10)
    assert history[-1]["loss"] < history[0]["loss"] - 5
    assert set(history[0]) == {"step", "loss", "elbo", "kl", "grad_norm"}
    assert not torch.equal(next(trainer.ema.parameters()), next(trainer.model.parameters()))

    path = str(tmp_path / "vae.ckpt")
    trainer.save_checkpoint(path)
    stream = _batches(seed=3)
    after = [trainer.train_step(next(stream)) for _ in range(2)]
    resumed = VAETrainer(tiny_vae(seed=9), lr=3e-3, ema_decay=0.9, grad_clip=100.0, seed=5)
    resumed.load_checkpoint(path)
    assert resumed.step == 40 and resumed.seed == 1
    stream = _batches(seed=3)
    again = [resumed.train_step(next(stream)) for _ in range(2)]
    assert again == after
    for a, b in zip(trainer.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a checkpoint of another setting is refused, and leaves the trainer as it was
    other = VAETrainer(tiny_vae(), ema_decay=None)
    with pytest.raises(CheckpointError, match="ema"):
        other.load_checkpoint(path)


def test_vae_gan_runs_and_decreases_its_losses():
    torch.manual_seed(0)
    D = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 4, 2, 1), torch.nn.LeakyReLU(0.2), torch.nn.Flatten(),
                            torch.nn.Linear(8 * 4 * 4, 1))
    trainer = VAETrainer(tiny_vae(), lr=3e-3, discriminator=D, adversarial_weight=1.0, d_lr=3e-3, seed=0)
    history = trainer.fit(_batches(), 40, progress=False, log_every=10)
    assert set(history[0]) == {"step", "loss", "elbo", "kl", "d_loss", "adversarial"}
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"] - 5
    assert last["d_loss"] < first["d_loss"]
    assert all(math.isfinite(v) for r in history for v in r.values())
    # the adversarial term reaches the model: the same step without it moves the model differently
    steps = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        D = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
        t = VAETrainer(tiny_vae(), discriminator=D, adversarial_weight=weight, seed=0)
        t.train_step(digits(8))
        steps[weight] = torch.cat([p.flatten() for p in t.model.parameters()])
    assert not torch.equal(steps[0.0], steps[1.0])


def test_trainer_ema_is_the_lerp_of_the_weights():
    trainer = VAETrainer(tiny_vae(), ema_decay=0.75)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step(digits(8))
    for e, b, p in zip(trainer.ema.parameters(), before, trainer.model.parameters()):
        torch.testing.assert_close(e, 0.75 * b + 0.25 * p.detach())
    assert not any(p.requires_grad for p in trainer.ema.parameters())


def test_trainer_trains_an_autoencoder():
    torch.manual_seed(0)
    ae = Autoencoder(ConvEncoder(1, 8, LATENT, (8,)), ConvDecoder(LATENT, 1, 8, (8,)), Gaussian(0.0))
    history = VAETrainer(ae, lr=3e-3, ema_decay=0.9).fit(_batches(), 30, progress=False, log_every=10)
    assert set(history[0]) == {"step", "loss"} and history[-1]["loss"] < history[0]["loss"]


def test_trainer_bad_input():
    with pytest.raises(TypeError, match="model must be a fastgen.models.VAE or Autoencoder"):
        VAETrainer(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="ema_decay"):
        VAETrainer(tiny_vae(), ema_decay=1.0)
    with pytest.raises(ValueError, match="adversarial_loss"):
        VAETrainer(tiny_vae(), adversarial_loss="nope")
    trainer = VAETrainer(tiny_vae())
    with pytest.raises(TypeError, match="x must have the dtype"):
        trainer.train_step(digits(2).double())
    with pytest.raises(ValueError, match="batches ran out after 1 of 2"):
        trainer.fit([digits(2)], 2, progress=False)


def test_benchmark_script_quick(tmp_path):
    """benchmarks/run_vae_digits.py --quick: trains, evaluates, writes its JSON and PNGs."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "run_vae_digits.py"
    spec = importlib.util.spec_from_file_location("run_vae_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    train, test = module.split_digits()
    assert train.shape == (1437, 1, 8, 8) and test.shape == (360, 1, 8, 8)
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "vae_digits_cpu_quick.json").read_text())
    test_numbers = result["results"]["test"]
    for bound in ("elbo", "iwae_64"):   # an untrained model: below uniform's log2(17) plus a margin
        assert 0 < test_numbers[bound]["bits_per_dim"] < math.log2(17) + 1
    assert result["provenance"]["git_commit"] and result["config"]["split"].startswith("test = images with index")
    assert (tmp_path / "vae_digits_samples_quick.png").stat().st_size > 0
    assert (tmp_path / "vae_digits_reconstructions_quick.png").stat().st_size > 0
