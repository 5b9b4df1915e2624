"""Train a class-conditional StyleGAN2 on the shipped 8x8 digits on a CPU and judge its samples with
the package's digits classifier.

    python benchmarks/run_stylegan2_digits.py [--steps 3000] [--batch 32] [--threads N]
                                              [--out benchmarks/results] [--label TEXT] [--quick]

Data: the train split of the 1,797 digits (fastgen.data.split_indices, the package's one split: the
360 test images are never trained on, by this model or by the digits classifier), 8x8 in [-1, 1].
Recipe (StyleGAN2's, scaled down): fastgen.models.StyleGAN2Generator / StyleGAN2Discriminator
(c_dim 10, projection conditioning), the non-saturating loss with lazy R1 (gamma 0.1, every 16 D
steps) and the lazy path-length regulariser (weight 2, every 4 G steps), Adam (lr 2e-3, betas
(0, 0.99)), an EMA of G (decay 0.995), style mixing 0.9.

Scores of the EMA generator (noise inputs on, no truncation): class accuracy (the classifier's
prediction equals the class asked for; issue 11's target >= 90%) on 1,000 samples, 100 per class;
the Fréchet digits distance of those samples to the 360 held-out digits, beside the same distance
of the 1,437 training digits (the floor a perfect model would approach). Writes
``<out>/stylegan2_digits_cpu{,_quick}.{json,png}`` (a 10 x 10 grid: one row per class).
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_digits_training import image_grid_png, loss_summary  # noqa: E402

from fastgen import benchmarking  # noqa: E402
from fastgen._io import atomic_write  # noqa: E402
from fastgen.data import load_digits, split_indices  # noqa: E402
from fastgen.gan import GANTrainer  # noqa: E402
from fastgen.metrics.digits_classifier import class_accuracy, digits_fd  # noqa: E402
from fastgen.models import StyleGAN2Discriminator, StyleGAN2Generator  # noqa: E402

MODEL = dict(z_dim=32, w_dim=32, img_resolution=8, img_channels=1, c_dim=10, mapping_layers=2, channel_base=512,
             channel_max=64)
QUICK_MODEL = dict(MODEL, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)
RECIPE = dict(loss="ns", penalty="r1", penalty_weight=0.1, lazy_interval=16, lr=2e-3, betas=(0.0, 0.99),
              ema_decay=0.995, g_regularizer_weight=2.0, g_lazy_interval=4)
EVAL_PER_CLASS = 100


def batches(images, labels, batch: int, generator: torch.Generator):
    """Endless shuffled (images, labels) batches, dropping the last partial batch of each epoch."""
    while True:
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order) - batch + 1, batch):
            idx = order[start:start + batch]
            yield images[idx], labels[idx]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="D steps (= G steps)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 on a shared machine)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch = 8, 8
    if args.steps < 1 or args.batch < 2:
        parser.error("--steps must be >= 1 and --batch >= 2")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    suffix = "_quick" if args.quick else ""
    model = QUICK_MODEL if args.quick else MODEL

    images, labels = load_digits(8)
    split = split_indices()
    train_x, train_y = images[torch.as_tensor(split["train"])], labels[torch.as_tensor(split["train"])]
    test_x = images[torch.as_tensor(split["test"])]

    torch.manual_seed(args.seed)
    G, D = StyleGAN2Generator(**model), StyleGAN2Discriminator(
        img_resolution=8, img_channels=1, c_dim=10, channel_base=model["channel_base"],
        channel_max=model["channel_max"])
    trainer = GANTrainer(G, D, g_regularizer=G.path_length_penalty, seed=args.seed, **RECIPE)
    start = time.perf_counter()
    history = trainer.fit(batches(train_x, train_y, args.batch, torch.Generator().manual_seed(args.seed)), args.steps,
                          progress=not args.quick)
    train_s = time.perf_counter() - start

    per_class = 2 if args.quick else EVAL_PER_CLASS
    asked = torch.arange(10).repeat_interleave(per_class)
    samples = trainer.sample(len(asked), labels=asked, generator=torch.Generator().manual_seed(args.seed + 1))
    accuracy = class_accuracy(samples, asked)
    fd = digits_fd(samples, test_x) if not args.quick else math.nan
    fd_floor = digits_fd(train_x, test_x)

    os.makedirs(args.out, exist_ok=True)
    grid = samples.view(10, per_class, 1, 8, 8)[:, :10].reshape(-1, 1, 8, 8)  # one row per class
    png = os.path.join(args.out, f"stylegan2_digits_cpu{suffix}.png")
    image = image_grid_png(grid)
    atomic_write(png, lambda f: image.save(f, format="PNG"))
    d_losses = [{"loss": h["d_loss"]} for h in history]
    result = {
        "provenance": benchmarking.provenance("cpu", label=args.label, command=" ".join(["python"] + sys.argv)),
        "config": {"model": model, "recipe": {**RECIPE, "betas": list(RECIPE["betas"])}, "steps": args.steps,
                   "batch": args.batch, "seed": args.seed, "train_images": len(train_x),
                   "g_parameters": sum(p.numel() for p in G.parameters()),
                   "d_parameters": sum(p.numel() for p in D.parameters())},
        "train_seconds": train_s,
        "class_accuracy": accuracy, "class_accuracy_target": 0.9, "class_accuracy_met": accuracy >= 0.9,
        "samples_scored": len(asked),
        "frechet_digits_distance_to_test": None if math.isnan(fd) else fd,
        "frechet_digits_distance_train_to_test": fd_floor,
        "d_loss_summary": loss_summary(d_losses), "samples_png": os.path.basename(png),
    }
    path = os.path.join(args.out, f"stylegan2_digits_cpu{suffix}.json")
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    print(f"trained {args.steps} steps in {train_s:.0f} s; class accuracy {accuracy:.3f} (target 0.9); "
          f"Fréchet digits distance to the test split {fd:.2f} (train split: {fd_floor:.2f})", flush=True)
    print(f"wrote {png} and {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
