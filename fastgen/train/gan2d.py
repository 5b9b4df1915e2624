"""``fastgen train gan2d``: a recipe of :mod:`fastgen.gan.recipes` on PacGAN's grid or ring, scored.

Writes to ``--out DIR`` (atomically): ``samples.npy``, the (2500, 2) float32 points the recipe scores
(:func:`fastgen.gan.recipes.evaluation_samples`: the EMA of G where the recipe keeps one, else G;
latents seeded with seed + 1, as benchmarks/run_gan_mode_coverage.py scores them; a recipe with
Jacobian-based truncation keeps those of its candidates with the smallest Jacobian norms);
``samples.png``, a scatter plot of those same points (blue) over real data (grey) with the mixture's
modes as red crosses; ``scores.json``, PacGAN's numbers of samples.npy
(:func:`fastgen.gan.metrics.mode_coverage`) with the run's settings. Prints the same numbers.
"""
from __future__ import annotations

import io
import json
import os

import numpy as np
import torch

from .._io import atomic_write, atomic_write_text

__all__ = ["train_gan2d"]


def train_gan2d(*, data: str, seed: int, out: str, recipe: str | None = None, steps: int | None = None,
                quick: bool = False, progress: bool = True, log=print) -> dict:
    """Train, write the files above, return the scores (``ModeCoverage.as_dict()`` plus the settings).
    Bad input raises ValueError naming the option."""
    from ..data import TOY_MIXTURES
    from ..gan import recipes
    from ..gan.metrics import mode_coverage
    from ..gan.trainer import scatter_plot

    recipe = recipes.DEFAULT_RECIPE if recipe is None else recipe
    if recipe not in recipes.RUNS:
        raise ValueError(f"--recipe must be one of {sorted(recipes.RUNS)}, got {recipe!r}")
    if data not in recipes.DATA:
        raise ValueError(f"--data must be one of {recipes.DATA}, got {data!r}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    steps = (10 if quick else recipes.recipe_steps(recipe)) if steps is None else steps
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    os.makedirs(out, exist_ok=True)
    settings = recipes.QUICK_SETTINGS if quick else recipes.SETTINGS
    trainer, _, seconds = recipes.train_recipe(recipe, data, seed, steps, settings, progress=progress)
    mixture = TOY_MIXTURES[data]()
    samples = recipes.evaluation_samples(trainer, seed, recipe=recipe).detach().float().cpu()
    scores = mode_coverage(samples, mixture)
    buffer = io.BytesIO()
    np.save(buffer, samples.numpy().astype(np.float32))
    atomic_write(os.path.join(out, "samples.npy"), lambda f: f.write(buffer.getvalue()))
    real = mixture.sample(recipes.EVAL_SAMPLES, generator=torch.Generator().manual_seed(seed))
    image = scatter_plot(samples, real, modes=mixture.centers)  # the scored points themselves
    atomic_write(os.path.join(out, "samples.png"), lambda f: image.save(f, format="PNG"))
    keep = recipes.RUNS[recipe].get("jacobian_truncation")
    result = {"recipe": recipe, "data": data, "seed": seed, "g_steps": steps, "settings": settings,
              "scored": "ema" if trainer.ema is not None else "G", "jacobian_truncation_keep": keep,
              "train_seconds": seconds, **scores.as_dict()}
    plain = {k: None if isinstance(v, float) and v != v else v for k, v in result.items()}  # JSON has no NaN
    atomic_write_text(os.path.join(out, "scores.json"), json.dumps(plain, indent=2, allow_nan=False) + "\n")
    truncated = "" if keep is None else f" (Jacobian-truncated, {keep:.0%} of the candidate latents kept)"
    log(f"fastgen train gan2d: {recipe} on {data}, seed {seed}, {steps} G steps ({seconds:.1f} s), scored "
        f"{result['scored']}{truncated}: modes {scores.modes_covered}/{scores.num_modes}, high quality "
        f"{100 * scores.high_quality_fraction:.1f}%, reverse KL {scores.reverse_kl:.4f} (high-quality samples) / "
        f"{scores.reverse_kl_all:.4f} (all samples); wrote {out}/samples.npy, samples.png, scores.json")
    return result
