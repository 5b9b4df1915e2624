"""Train a small ProGAN on the shipped UCI digits on a CPU, growing 4x4 -> 8x8 -> 16x16, then judge its
samples with the package's digits classifier.

    python benchmarks/run_progan_digits.py [--stable-steps 500] [--fade-steps 200] [--batch 32] [--threads 1]
                                           [--out benchmarks/results] [--label TEXT] [--quick]

Data: the classifier's train split (1,437 digits), 16x16, in [-1, 1]. Model: :class:`ProGANGenerator` /
:class:`ProGANDiscriminator` (pixel norm, equalised learning rate, minibatch std), trained by
:class:`ProGANTrainer` with the paper's loss: WGAN-GP (lambda 10) + drift (epsilon 0.001), n_critic 1
(``--loss ns-r1``: non-saturating loss + R1 instead),
Adam lr 1e-3, betas (0, 0.99), EMA of G; schedule: 4x4 stable, then for 8 and 16 a fade-in and a
stable phase. Evaluation (EMA generator at 16x16, 1,000 samples): Fréchet digits distance to the 360
held-out digits (with the training digits' own distance to them as the floor) and the classifier's
class balance of the samples (KL to uniform, 0 = balanced; an unconditional model has no class
accuracy). Writes ``<out>/progan_digits_samples.png`` (64 samples) and ``<out>/progan_digits_cpu.json``.
``--quick``: a seconds-long smoke run writing ``*_quick`` files.
"""
import argparse
import json
import os
import sys
import time

import torch

from fastgen import benchmarking
from fastgen._io import atomic_write
from fastgen.data import load_digits
from fastgen.metrics.digits_classifier import class_balance, digits_fd, split_indices
from fastgen.models.progan import ProGANDiscriminator, ProGANGenerator, ProGANTrainer, ProgressiveSchedule

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_biggan_digits import train_batches  # noqa: E402
from run_digits_training import image_grid_png  # noqa: E402

SIZE = 16
LOSSES = {"wgan-gp": dict(loss="wgan", penalty="wgan-gp", penalty_weight=10.0, drift_weight=1e-3),
          "ns-r1": dict(loss="ns", penalty="r1", drift_weight=0.0)}
EVAL_SAMPLES = 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stable-steps", type=int, default=500)
    parser.add_argument("--fade-steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--latent-dim", type=int, default=64)
    parser.add_argument("--channel-base", type=int, default=256, help="channels at r: min(base / r, max)")
    parser.add_argument("--channel-max", type=int, default=32)
    parser.add_argument("--loss", default="wgan-gp", choices=sorted(LOSSES),
                        help="wgan-gp: the paper's WGAN-GP (lambda 10) + drift 0.001; ns-r1: non-saturating + R1")
    parser.add_argument("--r1-gamma", type=float, default=1.0, help="R1's gamma with --loss ns-r1")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 on a shared CPU)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.stable_steps, args.fade_steps, args.batch, args.channel_base, args.channel_max = 2, 2, 8, 64, 8
    if args.stable_steps < 1 or args.fade_steps < 0 or args.batch < 2:
        parser.error("--stable-steps must be >= 1, --fade-steps >= 0 and --batch >= 2")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    suffix = "_quick" if args.quick else ""

    torch.manual_seed(args.seed)
    images, _ = load_digits(SIZE)
    split = split_indices()
    train_x, test_x = images[split["train"]].to(device), images[split["test"]]
    net = dict(channel_base=args.channel_base, channel_max=args.channel_max)
    G = ProGANGenerator(SIZE, 1, latent_dim=args.latent_dim, **net)
    D = ProGANDiscriminator(SIZE, 1, **net)
    schedule = ProgressiveSchedule(SIZE, stable_steps=args.stable_steps, fade_steps=args.fade_steps)
    loss = dict(LOSSES[args.loss], **({"penalty_weight": args.r1_gamma} if args.loss == "ns-r1" else {}))
    trainer = ProGANTrainer(G, D, schedule, lr=args.lr, ema_decay=args.ema_decay, device=device, seed=args.seed,
                            **loss)
    batches = train_batches(train_x, None, args.batch, torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    history = trainer.fit(batches, progress=not args.quick)
    train_s = time.perf_counter() - start

    rng = torch.Generator(device=device).manual_seed(args.seed + 1)
    samples = trainer.sample(EVAL_SAMPLES, generator=rng).clamp(-1, 1)
    balance = class_balance(samples)
    metrics = {"samples": EVAL_SAMPLES, "fd_to_test": digits_fd(samples, test_x),
               "real_train_vs_test_fd": digits_fd(images[split["train"]], test_x),
               "class_counts": balance.counts.tolist(), "class_kl_uniform": balance.kl_uniform}

    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, f"progan_digits_samples{suffix}.png")
    image = image_grid_png(samples[:64])
    atomic_write(png, lambda f: image.save(f, format="PNG"))
    tail = history[-max(1, len(history) // 10):]
    result = {
        "provenance": benchmarking.provenance(device, label=args.label),
        "config": {"size": SIZE, "schedule": repr(schedule), "total_steps": schedule.total_steps, "batch": args.batch,
                   "loss": loss, "lr": args.lr, "betas": [0.0, 0.99],
                   "ema_decay": args.ema_decay, "latent_dim": args.latent_dim, **net,
                   "g_parameters": sum(p.numel() for p in G.parameters()),
                   "d_parameters": sum(p.numel() for p in D.parameters()), "seed": args.seed,
                   "train_digits": len(train_x), "evaluated": "EMA generator at 16x16, outputs clamped to [-1, 1]"},
        "train_seconds": train_s, "steps_per_second": schedule.total_steps / train_s,
        "losses_last_10pct": {k: sum(r[k] for r in tail) / len(tail) for k in ("d_loss", "g_loss")},
        "metrics": metrics, "samples_png": os.path.basename(png),
    }
    path = os.path.join(args.out, f"progan_digits_{device.type}{suffix}.json")
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    print(f"trained {schedule.total_steps} steps in {train_s:.1f} s; {json.dumps(metrics)}", flush=True)
    print(f"wrote {png} and {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
