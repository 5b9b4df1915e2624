"""The GAN recipes of the 2-D mixtures (PacGAN's grid and ring), in one place for
benchmarks/run_gan_mode_coverage.py and ``fastgen train gan2d``.

A recipe is :class:`fastgen.gan.GANTrainer` keyword arguments for fastgen's MLPGenerator (2-D latent,
``depth`` hidden layers of ``hidden``, ReLU) and MLPDiscriminator (LeakyReLU 0.2), trained on fresh
batches of ``batch`` points of :func:`fastgen.data.toy_batches`. ``torch.manual_seed(seed)`` sets the
initial weights, the seed the training latents and the data stream; the evaluation latents come
from seed + 1. Why each recipe is what it is: benchmarks/run_gan_mode_coverage.py's docstring.

    train_recipe(name, data, seed, steps)            -> (trainer, history, seconds)
    evaluation_samples(trainer, seed, recipe=name)   -> (EVAL_SAMPLES, 2) float32: the samples the recipe scores

A recipe may also sample by Jacobian-based truncation (``jacobian_truncation``: the fraction of
candidate latents kept, :mod:`fastgen.gan.jacobian_truncation`): its scored samples are then the
EVAL_SAMPLES kept of ceil(EVAL_SAMPLES / keep) latents of the EMA of G.
"""
from __future__ import annotations

import time

import torch

__all__ = ["RUNS", "DEFAULT_RECIPE", "EVAL_SAMPLES", "SETTINGS", "QUICK_SETTINGS", "DATA", "train_recipe",
           "evaluation_samples", "recipe_steps", "RECIPE_KEYS"]

# name -> GANTrainer keyword arguments, plus keys that are not the trainer's (RECIPE_KEYS):
# "first_seed_only" is run_gan_mode_coverage.py's own flag; "lr_decay" = (start, final) of linear_lr_decay
# over the run's own G steps (train_recipe builds it); "steps", the G steps the recipe trains by default
# (else DEFAULT_STEPS); "jacobian_truncation", the fraction of candidate latents its sampler keeps.
RUNS = {
    "ns": dict(loss="ns", lr=1e-3, betas=(0.5, 0.999)),
    "ns+ema": dict(loss="ns", lr=1e-3, betas=(0.0, 0.99), ema_decay=0.99),
    "wgan-gp": dict(loss="wgan", penalty="wgan-gp", penalty_weight=0.1, n_critic=5, lr=1e-3, betas=(0.5, 0.9),
                    ema_decay=0.99),
    "ns+r1": dict(loss="ns", penalty="r1", penalty_weight=0.1, lr=1e-3, betas=(0.0, 0.99), ema_decay=0.99),
    # ns+r1 with the learning rate decayed linearly to 1% over the second half of training
    # (benchmarks/results/gan_precision_ablation_cpu.json): at 6000-9000 G steps 94-97% of grid and
    # 96-98% of ring samples are high quality, all modes, reverse KL <= 0.0063 (seeds 0-3 / 0-2 only)
    "ns+r1-decay": dict(loss="ns", penalty="r1", penalty_weight=0.1, lr=1e-3, betas=(0.0, 0.99), ema_decay=0.99,
                        lr_decay=(0.5, 0.01)),
    # ns+r1-decay for 6000 G steps, sampled by Jacobian-based truncation keeping 90% of the candidate latents
    # (Tanielian et al. 2020), which drops the samples in transit between modes: on seeds 0-9 all modes,
    # >= 99.1% (grid) / 99.8% (ring) high quality, reverse KL (all samples) <= 0.0084
    # (benchmarks/results/gan_precision_ablation_cpu.json, config decay-6k-jbt, ema0.99+jbt0.9)
    "ns+r1-decay-jbt": dict(loss="ns", penalty="r1", penalty_weight=0.1, lr=1e-3, betas=(0.0, 0.99), ema_decay=0.99,
                            lr_decay=(0.5, 0.01), steps=6000, jacobian_truncation=0.9),
    "wgan-gp-alg1": dict(loss="wgan", penalty="wgan-gp", penalty_weight=10.0, n_critic=5, lr=1e-4, betas=(0.0, 0.9),
                         first_seed_only=True),
}
# the best of RUNS: the one that meets issue 11's goal on seeds 0-9 of the grid and the ring
DEFAULT_RECIPE = "ns+r1-decay-jbt"
DEFAULT_STEPS = 3000  # generator steps
EVAL_SAMPLES = 2500  # PacGAN's evaluation count
SETTINGS = {"batch": 256, "hidden": 256, "depth": 3, "latent_dim": 2}
QUICK_SETTINGS = {"batch": 32, "hidden": 16, "depth": 1, "latent_dim": 2}
DATA = ("grid", "ring")  # the mixtures with known modes (fastgen.data.TOY_MIXTURES)
RECIPE_KEYS = ("first_seed_only", "lr_decay", "steps", "jacobian_truncation")  # RUNS keys that are not GANTrainer's


def _check_recipe(name: str) -> dict:
    if name not in RUNS:
        raise ValueError(f"recipe must be one of {sorted(RUNS)}, got {name!r}")
    return RUNS[name]


def recipe_steps(name: str) -> int:
    """The G steps recipe ``name`` trains by default."""
    return _check_recipe(name).get("steps", DEFAULT_STEPS)


def train_recipe(name: str, data: str, seed: int, steps: int | None = None, settings: dict | None = None, *,
                 progress: bool = False):
    """Train recipe ``name`` on ``data`` ("grid" or "ring") for ``steps`` generator steps (n_critic times as
    many discriminator steps; None: :func:`recipe_steps`). Returns (the GANTrainer, its fit history, training
    seconds)."""
    from ..data import toy_batches
    from ..models import MLPDiscriminator, MLPGenerator
    from .trainer import GANTrainer, linear_lr_decay

    recipe = _check_recipe(name)
    if data not in DATA:
        raise ValueError(f"data must be one of {DATA}, got {data!r}")
    steps = recipe_steps(name) if steps is None else steps
    settings = SETTINGS if settings is None else settings
    config = {k: v for k, v in recipe.items() if k not in RECIPE_KEYS}
    if "lr_decay" in recipe:  # (start, final) of linear_lr_decay over the steps this run trains
        config["lr_schedule"] = linear_lr_decay(steps, *recipe["lr_decay"])
    torch.manual_seed(seed)
    G = MLPGenerator(latent_dim=settings["latent_dim"], hidden=settings["hidden"], depth=settings["depth"])
    D = MLPDiscriminator(hidden=settings["hidden"], depth=settings["depth"])
    trainer = GANTrainer(G, D, seed=seed, **config)
    batches = toy_batches(data, settings["batch"], generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    history = trainer.fit(batches, steps * trainer.n_critic, progress=progress)
    return trainer, history, time.perf_counter() - start


def evaluation_samples(trainer, seed: int, *, use_ema: bool = True, recipe: str | None = None) -> torch.Tensor:
    """The :data:`EVAL_SAMPLES` (N, 2) float32 points scored for a run of ``seed``: from the EMA of G where
    the trainer keeps one (and ``use_ema``), else from G; latents from a generator seeded with seed + 1.
    ``recipe``: the recipe trained (None: plain sampling); one with ``jacobian_truncation`` = keep returns
    the EVAL_SAMPLES of ceil(EVAL_SAMPLES / keep) latents (the same stream) with the smallest Jacobian norms."""
    keep = None if recipe is None else _check_recipe(recipe).get("jacobian_truncation")
    rng = torch.Generator(device=trainer.device).manual_seed(seed + 1)
    if keep is None:
        return trainer.sample(EVAL_SAMPLES, use_ema=use_ema, generator=rng)
    from .jacobian_truncation import jacobian_truncated_sample

    model = trainer.ema if use_ema and trainer.ema is not None else trainer.generator
    return jacobian_truncated_sample(model, EVAL_SAMPLES, keep, latent_dim=trainer.latent_dim, rng=rng,
                                     device=trainer.device).samples
