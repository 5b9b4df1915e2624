"""Mode coverage on the 25-Gaussian grid: non-saturating GAN vs WGAN-GP vs NS + R1, trained on the CPU.

    python benchmarks/run_gan_mode_coverage.py [--steps 3000] [--seed 0] [--threads 1]
                                               [--out benchmarks/results] [--label TEXT] [--quick]

The quality experiment of the GAN issue. Data: the 5 x 5 grid of Gaussians (centres {-4, -2, 0, 2, 4}^2,
std 0.05; VEEGAN / PacGAN), fresh batches of 256 from :func:`fastgen.data.toy_batches`. Networks:
fastgen's MLPGenerator (2-D latent, 3 hidden layers of 256, ReLU) and MLPDiscriminator (3 x 256,
LeakyReLU 0.2), the same initial weights for every run (``torch.manual_seed(seed)``). Runs:

    ns        non-saturating loss, no regulariser, Adam lr 1e-3, betas (0.5, 0.999)
    wgan-gp   Wasserstein loss + gradient penalty on interpolates, lambda 10, n_critic 5,
              Adam lr 1e-4, betas (0, 0.9): Gulrajani et al. 2017, Algorithm 1's defaults
    ns+r1     non-saturating loss + R1 on the reals (Mescheder et al. 2018), gamma 0.1, Adam as ns

Each run takes ``--steps`` generator steps (so WGAN-GP takes 5x as many critic steps), then
:func:`fastgen.gan.metrics.mode_coverage` scores 2500 samples of G (PacGAN's protocol: a sample is
high quality within 3 std of its nearest mode; a mode is covered by >= 1 high-quality sample;
reverse KL of the high-quality samples' mode histogram against uniform). No EMA: on runs this short
an average of G's weights lags far behind G itself.

Results: a table on stdout, and ``<out>/gan_mode_coverage_cpu.{json,csv}`` (``_quick`` with
--quick) with provenance (fastgen.benchmarking.provenance), written atomically. The JSON rows also
hold each mode's count. ``--threads`` sets torch's intra-op threads (default 1: these small matmuls
gain little from a second thread, and on a shared machine OpenMP threads that wait on each other
make the run several times slower).
"""
import argparse
import csv
import io
import json
import math
import os
import shlex
import sys
import time

import torch

from fastgen import benchmarking
from fastgen._io import atomic_write_text
from fastgen.data import grid_mixture, toy_batches
from fastgen.gan.metrics import mode_coverage
from fastgen.gan.trainer import GANTrainer
from fastgen.models import MLPDiscriminator, MLPGenerator

RUNS = {
    "ns": dict(loss="ns", lr=1e-3, betas=(0.5, 0.999)),
    "wgan-gp": dict(loss="wgan", penalty="wgan-gp", penalty_weight=10.0, n_critic=5, lr=1e-4, betas=(0.0, 0.9)),
    "ns+r1": dict(loss="ns", penalty="r1", penalty_weight=0.1, lr=1e-3, betas=(0.5, 0.999)),
}
EVAL_SAMPLES = 2500  # PacGAN's evaluation count
SETTINGS = {"batch": 256, "hidden": 256, "depth": 3, "latent_dim": 2}
QUICK_SETTINGS = {"batch": 32, "hidden": 16, "depth": 1, "latent_dim": 2}
COLUMNS = ["run", "loss", "penalty", "penalty_weight", "n_critic", "lr", "beta1", "beta2", "g_steps", "d_steps",
           "batch", "hidden", "depth", "latent_dim", "seed", "modes_covered", "num_modes", "high_quality_fraction",
           "reverse_kl", "train_seconds", "final_d_loss", "final_g_loss"]
PROVENANCE_COLUMNS = ["device_name", "torch", "git_commit", "date_utc"]


def train_and_score(name: str, config: dict, steps: int, seed: int, settings: dict, progress: bool) -> dict:
    torch.manual_seed(seed)
    G = MLPGenerator(latent_dim=settings["latent_dim"], hidden=settings["hidden"], depth=settings["depth"])
    D = MLPDiscriminator(hidden=settings["hidden"], depth=settings["depth"])
    trainer = GANTrainer(G, D, seed=seed, **config)
    data = toy_batches("grid", settings["batch"], generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    history = trainer.fit(data, steps * trainer.n_critic, progress=progress)
    seconds = time.perf_counter() - start
    samples = trainer.sample(EVAL_SAMPLES, generator=torch.Generator().manual_seed(seed + 1))
    coverage = mode_coverage(samples, grid_mixture())
    last_g = next((h["g_loss"] for h in reversed(history) if "g_loss" in h), None)
    return {
        "run": name, "loss": config["loss"], "penalty": config.get("penalty"),
        "penalty_weight": config.get("penalty_weight") if config.get("penalty") else None,
        "n_critic": trainer.n_critic, "lr": config["lr"], "beta1": config["betas"][0], "beta2": config["betas"][1],
        "g_steps": trainer.step // trainer.n_critic, "d_steps": trainer.step, **settings, "seed": seed,
        **coverage.as_dict(), "train_seconds": seconds,
        "final_d_loss": history[-1]["d_loss"] if history else None, "final_g_loss": last_g,
    }


def format_table(rows: list[dict]) -> str:
    header = ("run", "G steps", "D steps", "modes", "high quality", "reverse KL", "train time")
    lines = [header] + [(r["run"], str(r["g_steps"]), str(r["d_steps"]), f"{r['modes_covered']}/{r['num_modes']}",
                         f"{100 * r['high_quality_fraction']:.1f}%",
                         "-" if math.isnan(r["reverse_kl"]) else f"{r['reverse_kl']:.3f}",
                         f"{r['train_seconds']:.1f} s") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _json_value(value):
    return None if isinstance(value, float) and math.isnan(value) else value  # JSON has no NaN


def write(rows: list[dict], prov: dict, out_dir: str, stem: str) -> tuple[str, str]:
    """``<stem>.json`` ({"provenance", "rows"}, counts included) and ``<stem>.csv`` (one line per run,
    provenance columns repeated), both texts built before anything is written, each written atomically."""
    text_json = json.dumps({"provenance": prov, "rows": [{k: _json_value(v) for k, v in r.items()} for r in rows]},
                           indent=2, allow_nan=False) + "\n"
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="generator steps per run")
    parser.add_argument("--seed", type=int, default=0, help="initial weights, latents and data")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true", help="tiny networks, 10 steps: a smoke run")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1 or args.seed < 0:
        parser.error("--steps and --threads must be >= 1 and --seed >= 0")
    torch.set_num_threads(args.threads)
    steps, settings = (10, QUICK_SETTINGS) if args.quick else (args.steps, SETTINGS)

    rows = []
    for name, config in RUNS.items():
        print(f"training {name} ({steps} G steps) ...", flush=True)
        rows.append(train_and_score(name, config, steps, args.seed, settings, progress=not args.quick))
    print(format_table(rows))

    argv = sys.argv[1:] if argv is None else argv
    prov = benchmarking.provenance("cpu", label=args.label,
                                   command=shlex.join(["python", "benchmarks/run_gan_mode_coverage.py"] + list(argv)))
    prov.update(data="grid_of_gaussians (5 x 5, spacing 2, std 0.05)", eval_samples=EVAL_SAMPLES,
                threshold_std=3.0, min_samples_per_mode=1)
    paths = write(rows, prov, args.out, "gan_mode_coverage_cpu" + ("_quick" if args.quick else ""))
    print(f"\nresults: {paths[0]}, {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
