"""Mode coverage on the 25-Gaussian grid: non-saturating GAN vs WGAN-GP vs NS + R1, trained on the CPU.

    python benchmarks/run_gan_mode_coverage.py [--steps 3000] [--seeds 0,1,2] [--threads 1]
                                               [--out benchmarks/results] [--label TEXT] [--quick]

The quality experiment of the GAN issue. Data: the 5 x 5 grid of Gaussians (centres {-4, -2, 0, 2, 4}^2,
std 0.05; VEEGAN / PacGAN), fresh batches of 256 from :func:`fastgen.data.toy_batches`. Networks:
fastgen's MLPGenerator (2-D latent, 3 hidden layers of 256, ReLU) and MLPDiscriminator (3 x 256,
LeakyReLU 0.2), the same initial weights for every run of a seed (``torch.manual_seed(seed)``). Runs:

    ns            non-saturating loss, no regulariser; Adam lr 1e-3, betas (0.5, 0.999) (DCGAN's), no EMA:
                  the unregularised baseline of the literature, which collapses onto a subset of the modes
    ns+ema        the same loss with ns+r1's optimiser and EMA (betas (0, 0.99), EMA of G 0.99), no
                  regulariser: the ablation, so that the difference to ns+r1 is R1's alone
    wgan-gp       Wasserstein loss + gradient penalty on interpolates, lambda 0.1, n_critic 5,
                  Adam lr 1e-3, betas (0.5, 0.9), EMA of G 0.99: Gulrajani et al.'s own toy code
                  (lambda 0.1, "smaller lambda helps for toy tasks", betas (0.5, 0.9)) with a 10x
                  larger lr, so that it converges in 3000 G steps rather than 100k
    ns+r1         non-saturating loss + R1 on the reals (Mescheder et al. 2018), gamma 0.1;
                  Adam lr 1e-3, betas (0, 0.99) (beta1 = 0 as in Mescheder et al.), EMA of G 0.99
    ns+r1-decay   ns+r1 with both learning rates decayed linearly to 1% over the second half of the run
    ns+r1-decay-jbt  ns+r1-decay, its 2500 samples kept of 2778 latents by Jacobian-based truncation
                  (fastgen.gan.jacobian_truncation; the recipe trains 6000 G steps, this script --steps)
    wgan-gp-alg1  WGAN-GP with Gulrajani et al. 2017, Algorithm 1's defaults: lambda 10, n_critic 5,
                  Adam lr 1e-4, betas (0, 0.9), no EMA. A reference point, run on the first seed
                  only (it is the slowest run, ~5 min, and far from converged after 3000 G steps)

Each run takes ``--steps`` generator steps (so WGAN-GP takes 5x as many critic steps), then
:func:`fastgen.gan.metrics.mode_coverage` scores 2500 samples (PacGAN's protocol: a sample is high
quality within 3 std of its nearest mode; a mode is covered by >= 1 high-quality sample; reverse KL
of the high-quality samples' mode histogram against uniform) of the EMA of G where the run keeps
one, else of G. The EMA (decay 0.99, an average over the last ~100 G steps) is what makes the
result stable: G itself keeps circling the modes at lr 1e-3 and its own score moves by several
modes and tens of points of high quality from one checkpoint to the next; G's own score is
reported too (``g_*`` columns). Every seed sets the initial weights, the training latents and
the data stream; the evaluation latents come from seed + 1.

Results: a table on stdout (one row per run and seed, then per run over the seeds), and
``<out>/gan_mode_coverage_cpu.{json,csv}`` (``_quick`` with --quick) with provenance
(fastgen.benchmarking.provenance), written atomically. The JSON rows also hold each mode's count,
and its "summary" the per-run aggregate. ``--threads`` sets torch's intra-op threads (default 1:
these small matmuls gain little from a second thread, and on a shared machine OpenMP threads that
wait on each other make the run several times slower).
"""
import argparse
import csv
import io
import json
import math
import os
import shlex
import sys

import torch

from fastgen import benchmarking
from fastgen._io import atomic_write_text
from fastgen.data import grid_mixture
from fastgen.gan.metrics import mode_coverage
# the recipe table lives in the package, shared with `fastgen train gan2d`
from fastgen.gan.recipes import EVAL_SAMPLES, QUICK_SETTINGS, RUNS, SETTINGS, evaluation_samples, train_recipe
COLUMNS = ["run", "loss", "penalty", "penalty_weight", "n_critic", "lr", "beta1", "beta2", "ema_decay", "g_steps",
           "d_steps", "batch", "hidden", "depth", "latent_dim", "seed", "evaluated", "modes_covered", "num_modes",
           "high_quality_fraction", "reverse_kl", "reverse_kl_all", "g_modes_covered", "g_high_quality_fraction", "train_seconds",
           "final_d_loss", "final_g_loss"]
PROVENANCE_COLUMNS = ["device_name", "torch", "git_commit", "date_utc"]


def train_and_score(name: str, config: dict, steps: int, seed: int, settings: dict, progress: bool) -> dict:
    trainer, history, seconds = train_recipe(name, "grid", seed, steps, settings, progress=progress)

    def score(use_ema: bool):  # the same evaluation latents for the EMA and for G
        return mode_coverage(evaluation_samples(trainer, seed, use_ema=use_ema, recipe=name), grid_mixture())

    coverage, g_coverage = score(True), score(False)
    last_g = next((h["g_loss"] for h in reversed(history) if "g_loss" in h), None)
    return {
        "run": name, "loss": config["loss"], "penalty": config.get("penalty"),
        "penalty_weight": config.get("penalty_weight") if config.get("penalty") else None,
        "n_critic": trainer.n_critic, "lr": config["lr"], "beta1": config["betas"][0], "beta2": config["betas"][1],
        "ema_decay": trainer.ema_decay, "g_steps": trainer.step // trainer.n_critic, "d_steps": trainer.step,
        **settings, "seed": seed, "evaluated": "G" if trainer.ema is None else "ema", **coverage.as_dict(),
        "g_modes_covered": g_coverage.modes_covered, "g_high_quality_fraction": g_coverage.high_quality_fraction,
        "train_seconds": seconds,
        "final_d_loss": history[-1]["d_loss"] if history else None, "final_g_loss": last_g,
    }


def summarize(rows: list[dict]) -> list[dict]:
    """Per run over its seeds: the seeds, modes covered and high-quality fraction per seed, and the worst / mean."""
    out = []
    for name in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == name]
        hq = [r["high_quality_fraction"] for r in mine]
        out.append({"run": name, "seeds": [r["seed"] for r in mine],
                    "modes_covered": [r["modes_covered"] for r in mine], "high_quality_fraction": hq, "min_modes_covered": min(r["modes_covered"] for r in mine),
                    "min_high_quality_fraction": min(hq), "mean_high_quality_fraction": sum(hq) / len(hq),
                    "mean_train_seconds": sum(r["train_seconds"] for r in mine) / len(mine)})
    return out


def _table(header: tuple, lines: list[tuple]) -> str:
    lines = [header] + lines
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_table(rows: list[dict]) -> str:
    header = ("run", "seed", "G steps", "D steps", "scored", "modes", "high quality", "reverse KL (HQ / all)", "G itself",
              "train time")
    return _table(header, [
        (r["run"], str(r["seed"]), str(r["g_steps"]), str(r["d_steps"]), r["evaluated"],
         f"{r['modes_covered']}/{r['num_modes']}", f"{100 * r['high_quality_fraction']:.1f}%",
         " / ".join("-" if math.isnan(r[k]) else f"{r[k]:.3f}" for k in ("reverse_kl", "reverse_kl_all")),
         f"{r['g_modes_covered']}/{r['num_modes']} {100 * r['g_high_quality_fraction']:.1f}%",
         f"{r['train_seconds']:.1f} s") for r in rows])


def format_summary(summary: list[dict], num_modes: int) -> str:
    header = ("run", "seeds", "modes per seed", "high quality per seed", "worst", "mean HQ", "time per run")
    return _table(header, [
        (s["run"], ",".join(map(str, s["seeds"])), ", ".join(f"{m}/{num_modes}" for m in s["modes_covered"]),
         ", ".join(f"{100 * h:.1f}%" for h in s["high_quality_fraction"]),
         f"{s['min_modes_covered']}/{num_modes} {100 * s['min_high_quality_fraction']:.1f}%",
         f"{100 * s['mean_high_quality_fraction']:.1f}%", f"{s['mean_train_seconds']:.0f} s") for s in summary])


def _json_value(value):
    return None if isinstance(value, float) and math.isnan(value) else value  # JSON has no NaN


def write(rows: list[dict], summary: list[dict], prov: dict, out_dir: str, stem: str) -> tuple[str, str]:
    """``<stem>.json`` ({"provenance", "rows", "summary"}, counts included) and ``<stem>.csv`` (one line
    per run and seed, provenance columns repeated), both texts built before anything is written, each
    written atomically."""
    text_json = json.dumps({"provenance": prov, "rows": [{k: _json_value(v) for k, v in r.items()} for r in rows],
                            "summary": summary}, indent=2, allow_nan=False) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS + PROVENANCE_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, **{k: prov.get(k) for k in PROVENANCE_COLUMNS}})
    os.makedirs(out_dir, exist_ok=True)
    json_path, csv_path = os.path.join(out_dir, stem + ".json"), os.path.join(out_dir, stem + ".csv")
    atomic_write_text(json_path, text_json)
    atomic_write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct ints >= 0, got {text!r}")
    return seeds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="generator steps per run")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2],
                        help="comma-separated seeds (initial weights, latents and data), one run of each per seed")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true", help="tiny networks, 10 steps: a smoke run")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        parser.error("--steps and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    steps, settings = (10, QUICK_SETTINGS) if args.quick else (args.steps, SETTINGS)

    rows = []
    for name, config in RUNS.items():
        for seed in args.seeds[:1] if config.get("first_seed_only") else args.seeds:
            print(f"training {name}, seed {seed} ({steps} G steps) ...", flush=True)
            rows.append(train_and_score(name, config, steps, seed, settings, progress=not args.quick))
    summary = summarize(rows)
    print(format_table(rows))
    print()
    print(format_summary(summary, rows[0]["num_modes"]))

    argv = sys.argv[1:] if argv is None else argv
    prov = benchmarking.provenance("cpu", label=args.label,
                                   command=shlex.join(["python", "benchmarks/run_gan_mode_coverage.py"] + list(argv)))
    prov.update(data="grid_of_gaussians (5 x 5, spacing 2, std 0.05)", eval_samples=EVAL_SAMPLES,
                threshold_std=3.0, min_samples_per_mode=1)
    paths = write(rows, summary, prov, args.out, "gan_mode_coverage_cpu" + ("_quick" if args.quick else ""))
    print(f"\nresults: {paths[0]}, {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
