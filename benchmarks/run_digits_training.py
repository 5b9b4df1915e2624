"""Train a small DDPM on the shipped UCI digits in minutes on a CPU, then sample a grid with DDIM.

    python benchmarks/run_digits_training.py [--steps 1500] [--size 16] [--batch 64] [--lr 1e-3]
                                             [--device cpu] [--threads N] [--out benchmarks/results]
                                             [--label TEXT] [--quick]

The 1,797 8x8 digits, upsampled (bilinear) to ``--size`` and scaled to [-1, 1], train a small
fastgen UNet (epsilon prediction, linear betas over 1000 steps) through
:class:`fastgen.diffusion.DiffusionTrainer` (fused noising + loss, AdamW, clipping at 1, EMA).
The EMA weights then draw 64 samples with 50 DDIM steps (eta 0), written as an 8 x 8 grid to
``<out>/digits_samples.png``; ``<out>/digits_training_<device type>.json`` holds the provenance, the
configuration, wall times and the loss curve (mean loss per logging window). ``--quick`` is a
seconds-long smoke run (8x8, a tiny UNet, 20 steps, 5 sampling steps) writing ``*_quick`` files,
for a test.
"""
import argparse
import json
import os
import sys
import time

import torch

from fastgen import benchmarking
from fastgen.imaging import image_grid
from fastgen.data import digit_batches
from fastgen.diffusion.scheduling_ddpm import DDPMScheduler
from fastgen._io import atomic_write
from fastgen.diffusion.trainer import DiffusionTrainer
from fastgen.models import UNet
# Per image size: small enough to train in minutes on two cores, big enough for clean strokes. One copy,
# shared with `fastgen train diffusion --preset digits<size>` and run_digits_quality_vs_steps.py.
from fastgen.train.presets import DIGITS_UNETS as MODELS
GRID = 8  # samples per row and column
PNG_ZOOM = 4  # nearest-neighbour upscaling of the saved grid, so 16x16 digits are visible


def image_grid_png(images: torch.Tensor):
    """(N, 1, H, W) in [-1, 1] -> the package's grid (fastgen.imaging.image_grid), zoomed for viewing."""
    return image_grid(images, zoom=PNG_ZOOM)


def loss_summary(history: list[dict]) -> dict:
    losses = [r["loss"] for r in history]
    if not losses:
        return {}
    tail = losses[-max(1, len(losses) // 10):]
    return {"first": losses[0], "last": losses[-1], "min": min(losses), "mean_last_10pct": sum(tail) / len(tail)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--size", type=int, default=16, choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps for the grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default torch's); on a CPU shared with other jobs 1 avoids "
                             "oversubscribed OpenMP barriers, which can cost 10x")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (8x8, 20 steps)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.size, args.batch, args.sample_steps = 20, 8, 16, 5
    if args.steps < 1 or args.batch < 1 or args.sample_steps < 1:
        parser.error("--steps, --batch and --sample-steps must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    suffix = "_quick" if args.quick else ""

    torch.manual_seed(args.seed)
    model = UNet(1, 1, image_size=args.size, **MODELS[args.size])
    trainer = DiffusionTrainer(model, DDPMScheduler(num_train_timesteps=1000), lr=args.lr, ema_decay=args.ema_decay,
                               grad_clip=1.0, device=device, seed=args.seed)
    batches = digit_batches(args.batch, size=args.size, epochs=None, drop_last=True, device=device,
                            generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    history = trainer.fit(batches, args.steps, progress=not args.quick, log_every=max(1, min(50, args.steps // 10)))
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    samples = trainer.sample(GRID * GRID if not args.quick else 16, num_inference_steps=args.sample_steps,
                             seed=args.seed)
    sample_s = time.perf_counter() - start

    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, f"digits_samples{suffix}.png")
    image = image_grid_png(samples)
    atomic_write(png, lambda f: image.save(f, format="PNG"))
    result = {
        "provenance": benchmarking.provenance(device, label=args.label),
        "config": {"size": args.size, "steps": args.steps, "batch": args.batch, "lr": args.lr,
                   "ema_decay": args.ema_decay, "grad_clip": 1.0,
                   "model": {**MODELS[args.size], "image_size": args.size},
                   "parameters": sum(p.numel() for p in model.parameters()), "num_train_timesteps": 1000,
                   "sampler": f"DDIM eta=0, {args.sample_steps} steps, EMA weights", "seed": args.seed},
        "train_seconds": train_s, "steps_per_second": args.steps / train_s,
        "images_per_second": args.steps * args.batch / train_s, "sample_seconds": sample_s,
        "loss_summary": loss_summary(history), "loss_curve": history, "samples_png": os.path.basename(png),
    }
    path = os.path.join(args.out, f"digits_training_{device.type}{suffix}.json")
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    print(f"trained {args.steps} steps in {train_s:.1f} s ({args.steps / train_s:.2f} steps/s), sampled in "
          f"{sample_s:.1f} s; loss {result['loss_summary']}", flush=True)
    print(f"wrote {png} and {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
