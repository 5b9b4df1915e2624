"""Sample quality vs sampling steps of a digits DDPM: the papers' FID-vs-NFE table, on a CPU.

    python benchmarks/run_digits_quality_vs_steps.py [--train-steps 2500] [--size 8] [--samples 1000]
        [--model-dir DIR] [--gan-samples NPZ] [--threads 1] [--out benchmarks/results] [--label TEXT] [--quick]

1. The model: the digits DDPM of benchmarks/run_digits_training.py (its UNet for ``--size``,
   fastgen.train.presets.DIGITS_UNETS; linear betas over 1000 steps, epsilon prediction, AdamW
   lr 1e-3, clipping at 1, EMA 0.995, batch 64), trained by ``fastgen train diffusion``'s code
   (:func:`fastgen.train.train_diffusion`) on the TRAIN split of the digits only
   (:func:`fastgen.data.split_indices`). ``--model-dir`` keeps it: a folder that already holds a
   checkpoint of the same run is continued to ``--train-steps`` (no step at all when it is there),
   so a second run only samples. Default: a temporary folder.
2. Samples: ``--samples`` images from the EMA weights for each sampler below, all from the same
   initial noise (seed 0: common random numbers, so the rows differ by the sampler only), NFE = model
   calls counted. Schedulers are fastgen's drop-in classes built from the model's DDIM config as
   diffusers' ``from_config`` converts it (each class's own defaults otherwise).
3. Scores (fastgen.metrics.digits_classifier, trained on the train split too): the Fréchet digits
   distance (FD) to the 360 held-out TEST digits, and the classifier's class balance, KL(predicted
   class histogram || uniform) in nats. The floor: real TRAIN-split digits scored the same way
   (all 1,437, and ``--samples`` of them drawn at random, since FD is biased upwards at small N).
   ``--gan-samples``: an npz of uint8 images (e.g. ``fastgen generate`` of a GAN checkpoint,
   ``--format npz``) adds a GAN row; none is committed, so none is in the default table.

Results: ``<out>/digits_quality_vs_steps.{json,csv}`` (``_quick`` with --quick) with provenance, and a
markdown table on stdout. FD numbers of a model trained for minutes on a CPU say how the samplers
rank against each other on this model, not what a converged model would reach.
"""
import argparse
import csv
import io
import json
import os
import shlex
import sys
import tempfile
import time

import numpy as np
import torch

from fastgen import benchmarking
from fastgen._io import atomic_write_text

# (row name, fastgen scheduler class, extra config, inference steps)
SAMPLERS = [
    ("DDIM", "DDIMScheduler", {}, 10),
    ("DDIM", "DDIMScheduler", {}, 20),
    ("DDIM", "DDIMScheduler", {}, 50),
    ("DPM-Solver++ (2M)", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, 10),
    ("DPM-Solver++ (2M)", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, 20),
    ("UniPC (bh2)", "UniPCMultistepScheduler", {}, 10),
    ("Euler", "EulerDiscreteScheduler", {}, 20),
    ("Heun", "HeunDiscreteScheduler", {}, 10),
    ("DDPM (ancestral)", "DDPMScheduler", {}, 50),
]
QUICK_SAMPLERS = [SAMPLERS[0], SAMPLERS[3], SAMPLERS[7]]
COLUMNS = ["method", "scheduler", "steps", "nfe", "samples", "fd", "fd_std", "kl_uniform", "class_counts", "seconds"]
PROVENANCE_COLUMNS = ["device_name", "torch", "git_commit", "date_utc"]


class _CountingModel(torch.nn.Module):
    """The model with a counter of its calls (the NFE)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def score(images, test, method: str, **extra) -> dict:
    """FD to the test digits and the class balance of ``images`` (uint8 NHWC or float NCHW in [-1, 1])."""
    from fastgen.metrics.digits_classifier import class_balance, digits_fd

    balance = class_balance(images)
    return {"method": method, "fd": digits_fd(images, test), "kl_uniform": balance.kl_uniform,
            "class_counts": balance.counts.tolist(), "samples": len(images), **extra}


def real_subsets(train_images, test, args, draws: int = 10) -> dict:
    """The floor at the generated rows' N: FD and class KL of ``draws`` random N-subsets of the train split,
    their mean, with the FD's standard deviation over the draws (the FD's sampling noise at this N);
    class_counts summed over the draws."""
    rng = np.random.default_rng(0)
    runs = [score(train_images[rng.permutation(len(train_images))[:args.samples]], test, "") for _ in range(draws)]
    fds = np.array([r["fd"] for r in runs])
    return {**runs[0], "method": f"real: train split ({args.samples} drawn, mean of {draws})", "fd": float(fds.mean()),
            "fd_std": float(fds.std(ddof=1)), "fd_min": float(fds.min()), "fd_max": float(fds.max()),
            "kl_uniform": float(np.mean([r["kl_uniform"] for r in runs])), "seconds": None,
            "class_counts": np.sum([r["class_counts"] for r in runs], axis=0).tolist()}


def train_or_load(model_dir: str, args) -> dict:
    from fastgen.train import train_diffusion

    resume = os.path.isfile(os.path.join(model_dir, "checkpoint.pt"))
    run = train_diffusion(out=model_dir, data="digits", size=args.size, preset="tiny" if args.quick else None,
                          steps=args.train_steps, batch_size=args.batch, lr=1e-3, ema_decay=0.995, resume=resume,
                          seed=args.seed, device="cpu", log_every=50, progress=not args.quick)
    return {"resumed": resume, "seconds": run["seconds"], "step": run["step"],
            "final_loss": run["history"][-1]["loss"] if run["history"] else None}


def markdown(rows: list[dict]) -> str:
    lines = ["| method | steps | NFE | FD to test digits | class KL to uniform | seconds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        seconds = "-" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        fd = f"{r['fd']:.2f}" + (f" (sd {r['fd_std']:.2f} over draws)" if "fd_std" in r else "")
        lines.append(f"| {r['method']} | {r.get('steps', '-')} | {r.get('nfe', '-')} | {fd} | "
                     f"{r['kl_uniform']:.4f} | {seconds} |")
    return "\n".join(lines)


def write(rows: list[dict], result: dict, out: str, stem: str) -> tuple[str, str]:
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS + PROVENANCE_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    prov = result["provenance"]
    for r in rows:
        writer.writerow({**r, "class_counts": " ".join(map(str, r["class_counts"])),
                         **{k: prov.get(k) for k in PROVENANCE_COLUMNS}})
    os.makedirs(out, exist_ok=True)
    paths = os.path.join(out, stem + ".json"), os.path.join(out, stem + ".csv")
    atomic_write_text(paths[0], text)
    atomic_write_text(paths[1], buf.getvalue())
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-steps", type=int, default=2500)
    parser.add_argument("--size", type=int, default=8, choices=(8, 16, 32))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=1000, help="generated images per sampler")
    parser.add_argument("--seed", type=int, default=0, help="training seed; sampling always starts from seed 0")
    parser.add_argument("--model-dir", default=None, help="train (or continue, or just load) the model here")
    parser.add_argument("--gan-samples", default=None, help="an npz of uint8 GAN images ('images') for a GAN row")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true", help="seconds: tiny UNet, 20 steps, 64 samples, 3 samplers")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_steps, args.size, args.samples, args.batch = 20, 8, 64, 16
    if min(args.train_steps, args.samples, args.batch, args.threads) < 1 or args.samples > 1437:
        parser.error("--train-steps, --batch, --threads must be >= 1 and --samples in [1, 1437]")
    torch.set_num_threads(args.threads)
    from fastgen.diffusion.sampler import sample
    from fastgen.generation.models import load_model
    from fastgen.generation.schedulers import build_scheduler
    from fastgen.metrics.images import digits_uint8

    test = digits_uint8("test")[0]
    train_images = digits_uint8("train")[0]
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or scratch
        start = time.perf_counter()
        training = train_or_load(model_dir, args)
        training["wall_seconds"] = time.perf_counter() - start
        loaded = load_model(os.path.join(model_dir, "checkpoint.pt"))  # the EMA weights, as fastgen generate
        model = _CountingModel(loaded.module)
        base_config = dict(loaded.scheduler.config)
        rows = [score(train_images, test, "real: train split (all)", seconds=None),
                real_subsets(train_images, test, args, draws=3 if args.quick else 10)]
        for name, cls, extra, steps in QUICK_SAMPLERS if args.quick else SAMPLERS:
            scheduler = build_scheduler(cls, {**base_config, **extra})
            model.calls = 0
            start = time.perf_counter()
            images = sample(model, scheduler, (args.samples, *loaded.sample_shape), num_inference_steps=steps, seed=0,
                            device="cpu", progress=False)
            seconds = time.perf_counter() - start
            rows.append(score(images, test, f"{name} {steps}", scheduler=cls, steps=steps, nfe=model.calls,
                              seconds=seconds))
            print(f"{rows[-1]['method']}: FD {rows[-1]['fd']:.3f}, KL {rows[-1]['kl_uniform']:.4f} "
                  f"({seconds:.1f} s)", flush=True)
        if args.gan_samples:
            with np.load(args.gan_samples) as f:
                rows.append(score(f["images"], test, f"GAN: {os.path.basename(args.gan_samples)}", seconds=None))
    argv = sys.argv[1:] if argv is None else list(argv)
    prov = benchmarking.provenance("cpu", label=args.label, command=shlex.join(
        ["python", "benchmarks/run_digits_quality_vs_steps.py"] + argv))
    result = {"provenance": prov,
              "config": {"size": args.size, "train_steps": args.train_steps, "batch": args.batch, "lr": 1e-3,
                         "ema_decay": 0.995, "preset": "tiny" if args.quick else f"digits{args.size}",
                         "training_data": "digits train split (1437)", "reference": "digits test split (360)",
                         "samples": args.samples, "sampling_seed": 0, "threads": args.threads,
                         "model_source": loaded.source["layout"]},
              "training": training, "rows": rows,
              "notes": "FD: Fréchet distance of the shipped digits classifier's 64-d features; class KL: "
                       "KL(predicted class histogram || uniform), nats. No GAN row unless --gan-samples is given."}
    paths = write(rows, result, args.out, "digits_quality_vs_steps" + ("_quick" if args.quick else ""))
    print(f"\nDDPM trained {training['step']} steps on the digits train split ({args.size}x{args.size}); "
          f"{args.samples} samples per row; FD and class KL against the 360 test digits\n")
    print(markdown(rows))
    print(f"\nresults: {paths[0]}, {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
