"""Train a small class-conditional BigGAN on the shipped UCI digits on a CPU, then judge its samples
with the package's digits classifier.

    python benchmarks/run_biggan_digits.py [--steps 2000] [--size 8] [--batch 64] [--threads 1]
                                           [--out benchmarks/results] [--label TEXT] [--quick]

Data: the classifier's train split (1,437 digits; :func:`fastgen.metrics.digits_classifier.split_indices`),
upsampled to ``--size`` and scaled to [-1, 1], with their labels. Model: :class:`BigGANGenerator` /
:class:`BigGANDiscriminator` (class-conditional BN from a shared embedding and z chunks, projection D,
self-attention, spectral norm), trained with :class:`fastgen.gan.GANTrainer`: hinge loss, 2 D steps
per G step, Adam betas (0, 0.999) with D's learning rate twice G's (BigGAN uses 4x at 128x128),
orthogonal regularisation (beta 1e-4) through the trainer's g_regularizer, EMA of G.

Evaluation (EMA weights, standing BN statistics, eval mode), 100 samples per class:
* class accuracy: the fraction of samples the classifier puts in the class asked for (issue 11's target: >= 0.9);
* Fréchet digits distance to the 360 held-out digits, with the distance of the 1,437 training digits
  to them as the floor a perfect model would reach at this sample size;
both without truncation and with the truncation trick at a few thresholds.
Writes ``<out>/biggan_digits_samples.png`` (rows: classes 0-9, truncation 1.0 where reported) and
``<out>/biggan_digits_cpu.json`` (provenance, configuration, losses, metrics). ``--quick``: a
seconds-long smoke run writing ``*_quick`` files.
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
from fastgen.gan import GANTrainer
from fastgen.metrics.digits_classifier import class_accuracy, digits_fd, split_indices
from fastgen.models.biggan import BigGANDiscriminator, BigGANGenerator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_digits_training import image_grid_png  # noqa: E402

PER_CLASS = 100
TRUNCATIONS = (None, 1.0, 0.5)


def train_batches(images, labels, batch: int, generator: torch.Generator):
    """Endless shuffled (images, labels) minibatches (images alone when labels is None), full batches only."""
    while True:
        order = torch.randperm(len(images), generator=generator).to(images.device)
        for s in range(0, len(order) - batch + 1, batch):
            idx = order[s:s + batch]
            yield images[idx] if labels is None else (images[idx], labels[idx])


def evaluate(G, test_images, train_images, generator: torch.Generator) -> dict:
    labels = torch.arange(10).repeat_interleave(PER_CLASS)
    out = {"samples_per_class": PER_CLASS, "real_train_vs_test_fd": digits_fd(train_images, test_images)}
    for t in TRUNCATIONS:
        samples = G.generate(labels, truncation=t, generator=generator)
        out[f"truncation_{t}"] = {"class_accuracy": class_accuracy(samples, labels),
                                  "fd_to_test": digits_fd(samples, test_images)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="trainer steps (D steps; G steps = steps / 2)")
    parser.add_argument("--size", type=int, default=8, choices=(8, 16))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--ch", type=int, default=16)
    parser.add_argument("--lr-g", type=float, default=2e-4)
    parser.add_argument("--lr-d", type=float, default=4e-4)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 on a shared CPU)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.ch = 6, 16, 8
    if args.steps < 1 or args.batch < 2:
        parser.error("--steps must be >= 1 and --batch >= 2")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    suffix = "_quick" if args.quick else ""

    torch.manual_seed(args.seed)
    images, labels = load_digits(args.size)
    split = split_indices()
    train_x, train_y = images[split["train"]].to(device), labels[split["train"]].to(device)
    test_x = images[split["test"]]
    blocks = args.size.bit_length() - 3
    g_cfg = dict(c_dim=10, latent_dim=20 * (blocks + 1), ch=args.ch, shared_dim=32, attention_resolution=8)
    d_cfg = dict(c_dim=10, ch=args.ch, attention_resolution=4 if args.size == 8 else 8)
    G = BigGANGenerator(args.size, 1, **g_cfg).to(device)
    D = BigGANDiscriminator(args.size, 1, **d_cfg).to(device)
    trainer = GANTrainer(G, D, loss="hinge", n_critic=2, ema_decay=args.ema_decay, seed=args.seed,
                         g_optimizer=torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(0.0, 0.999)),
                         d_optimizer=torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.0, 0.999)),
                         g_regularizer=G.orthogonal_regularizer, g_regularizer_weight=1.0)
    batches = train_batches(train_x, train_y, args.batch, torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    history = trainer.fit(batches, args.steps, progress=not args.quick)
    train_s = time.perf_counter() - start

    rng = torch.Generator(device=device).manual_seed(args.seed + 1)
    ema = trainer.ema
    ema.accumulate_standing_stats(16, 64, generator=rng)
    ema.eval()
    metrics = evaluate(ema, test_x, images[split["train"]], rng)
    grid = ema.generate(torch.arange(10).repeat_interleave(10), truncation=1.0, generator=rng)

    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, f"biggan_digits_samples{suffix}.png")
    image = image_grid_png(grid)
    atomic_write(png, lambda f: image.save(f, format="PNG"))
    tail = history[-max(1, len(history) // 10):]
    g_losses = [r["g_loss"] for r in tail if "g_loss" in r]
    result = {
        "provenance": benchmarking.provenance(device, label=args.label),
        "config": {"size": args.size, "steps": args.steps, "g_steps": args.steps // 2, "batch": args.batch,
                   "loss": "hinge", "n_critic": 2, "lr_g": args.lr_g, "lr_d": args.lr_d, "betas": [0.0, 0.999],
                   "ortho_beta": G.ortho_beta, "ema_decay": args.ema_decay, "generator": g_cfg,
                   "discriminator": d_cfg, "g_parameters": sum(p.numel() for p in G.parameters()),
                   "d_parameters": sum(p.numel() for p in D.parameters()), "seed": args.seed,
                   "train_digits": len(train_x), "evaluated": "EMA generator, standing BN statistics, eval mode"},
        "train_seconds": train_s, "steps_per_second": args.steps / train_s,
        "losses_last_10pct": {"d_loss": sum(r["d_loss"] for r in tail) / len(tail),
                              "g_loss": sum(g_losses) / len(g_losses) if g_losses else None},
        "metrics": metrics, "class_accuracy_target": 0.9, "samples_png": os.path.basename(png),
    }
    path = os.path.join(args.out, f"biggan_digits_{device.type}{suffix}.json")
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    print(f"trained {args.steps} steps in {train_s:.1f} s; {json.dumps(metrics)}", flush=True)
    print(f"wrote {png} and {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
