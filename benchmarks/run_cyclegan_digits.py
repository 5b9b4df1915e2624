"""Train CycleGAN between the shipped digits and a transformed version of them (16x16) on a CPU, and
judge the translations with the package's digits classifier.

    python benchmarks/run_cyclegan_digits.py [--task bold|inverted] [--steps 800] [--batch 8] [--threads N]
                                             [--out benchmarks/results] [--label TEXT] [--quick]

Data, unpaired: the classifier's training split (fastgen.metrics.digits_classifier.split_indices;
its 360 held-out digits are never trained on) is cut in two disjoint halves: domain A is the first
half as it is (white ink on black, [-1, 1]), domain B the second half transformed: ``bold`` (the
default; the ink dilated by a 3x3 max filter) or ``inverted`` (x -> -x: black ink on white). No
digit appears in both domains, so no pair is ever seen.
Recipe (the paper's, scaled down): fastgen.models.CycleGANGenerator (k=8, 2 residual blocks, 1
downsampling), PatchGANDiscriminator (n_layers=2, instance norm), LSGAN, lambda_cycle 10,
lambda_identity 0.5, image pools of 50, Adam (2e-4, (0.5, 0.999)) constant for the first half of the
steps and decayed linearly to zero over the second.

Scores on the 360 held-out digits x (labels y), whose translations have a known truth T(x) (B's
transform) and x: the class accuracy of A -> B (the translation brought back to the classifier's
domain: negated for ``inverted``, as it is for ``bold``) and of B -> A, beside the classifier's
accuracy on the sources of each domain; the mean |translation - truth|, beside mean |x - T(x)| (what
copying the input would score); the cycle reconstruction errors mean |G_BA(G_AB(x)) - x| and
mean |G_AB(G_BA(T(x))) - T(x)| (pixels in [-1, 1]). Writes
``<out>/cyclegan_digits_<task>_cpu{,_quick}.{json,png}``; the PNG's rows: A sources, A -> B,
reconstructions, B sources, B -> A, reconstructions.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_digits_training import image_grid_png, loss_summary  # noqa: E402

from fastgen import benchmarking  # noqa: E402
from fastgen._io import atomic_write  # noqa: E402
from fastgen.data import load_digits  # noqa: E402
from fastgen.gan.translation import CycleGANTrainer  # noqa: E402
from fastgen.metrics.digits_classifier import class_accuracy, split_indices  # noqa: E402
from fastgen.models import CycleGANGenerator, PatchGANDiscriminator  # noqa: E402

SIZE = 16
MODEL = dict(base_channels=8, n_blocks=2, n_downsampling=1)
QUICK_MODEL = dict(base_channels=4, n_blocks=1, n_downsampling=1)
D_MODEL = dict(base_channels=16, n_layers=2, norm="instance")
RECIPE = dict(lambda_cycle=10.0, lambda_identity=0.5, pool_size=50, lr=2e-4, betas=(0.5, 0.999))
SHOWN = 6  # digits per row of the PNG
# domain B = T(digit) for each task: (T, T^-1); T^-1 brings a translation back to the classifier's domain
TASKS = {"inverted": (lambda x: -x, lambda x: -x),
         "bold": (lambda x: torch.nn.functional.max_pool2d(x, 3, 1, 1), lambda x: x)}


def unpaired_batches(a: torch.Tensor, b: torch.Tensor, batch: int, generator: torch.Generator):
    """Endless (batch of A, batch of B), each domain shuffled on its own."""
    def stream(x):
        while True:
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(order) - batch + 1, batch):
                yield x[order[start:start + batch]]
    return zip(stream(a), stream(b))


@torch.no_grad()
def evaluate(trainer: CycleGANTrainer, x: torch.Tensor, y: torch.Tensor, to_b, from_b) -> dict:
    for m in (trainer.G_AB, trainer.G_BA):
        m.eval()
    xb = to_b(x)
    ab, ba = trainer.G_AB(x), trainer.G_BA(xb)
    rec_a, rec_b = trainer.G_BA(ab), trainer.G_AB(ba)
    return {
        "class_accuracy_A_to_B": class_accuracy(from_b(ab), y),  # brought back to the classifier's domain
        "class_accuracy_B_to_A": class_accuracy(ba, y),
        "class_accuracy_of_the_sources": class_accuracy(x, y),  # the classifier's own ceiling at 16x16
        "class_accuracy_of_the_sources_B": class_accuracy(from_b(xb), y),
        "l1_to_truth_A_to_B": (ab - xb).abs().mean().item(),
        "l1_to_truth_B_to_A": (ba - x).abs().mean().item(),
        "l1_source_to_truth": (x - xb).abs().mean().item(),  # what the identity map would score
        "cycle_l1_A": (rec_a - x).abs().mean().item(),
        "cycle_l1_B": (rec_b - xb).abs().mean().item(),
        "images": torch.cat([x[:SHOWN], ab[:SHOWN], rec_a[:SHOWN], xb[:SHOWN], ba[:SHOWN], rec_b[:SHOWN]]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=sorted(TASKS), default="bold", help="what domain B is")
    parser.add_argument("--d-layers", type=int, default=D_MODEL["n_layers"], help="PatchGAN stride-2 layers")
    parser.add_argument("--lr", type=float, default=RECIPE["lr"], help="Adam's learning rate of G and D")
    parser.add_argument("--base-channels", type=int, default=None, help="the generators' k (default: the recipe's)")
    parser.add_argument("--blocks", type=int, default=None, help="the generators' residual blocks (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 on a shared machine)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch = 4, 4
    if args.steps < 1 or args.batch < 1:
        parser.error("--steps and --batch must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    suffix = "_quick" if args.quick else ""
    recipe = {**RECIPE, "lr": args.lr}
    model = dict(QUICK_MODEL if args.quick else MODEL)
    model.update({k: v for k, v in (("base_channels", args.base_channels), ("n_blocks", args.blocks)) if v})

    images, labels = load_digits(SIZE)
    split = split_indices()
    train = images[torch.as_tensor(split["train"])]
    half = len(train) // 2
    to_b, from_b = TASKS[args.task]
    domain_a, domain_b = train[:half], to_b(train[half:])
    test_x, test_y = images[torch.as_tensor(split["test"])], labels[torch.as_tensor(split["test"])]

    torch.manual_seed(args.seed)
    d_model = {**D_MODEL, "n_layers": args.d_layers}
    nets = [CycleGANGenerator(1, 1, **model), CycleGANGenerator(1, 1, **model),
            PatchGANDiscriminator(1, **d_model), PatchGANDiscriminator(1, **d_model)]
    trainer = CycleGANTrainer(*nets, constant_steps=args.steps // 2, decay_steps=args.steps - args.steps // 2,
                              seed=args.seed, **recipe)
    start = time.perf_counter()
    history = trainer.fit(unpaired_batches(domain_a, domain_b, args.batch, torch.Generator().manual_seed(args.seed)),
                          args.steps, progress=not args.quick)
    train_s = time.perf_counter() - start
    scores = evaluate(trainer, test_x, test_y, to_b, from_b)

    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, f"cyclegan_digits_{args.task}_cpu{suffix}.png")
    image = image_grid_png(scores.pop("images"))
    atomic_write(png, lambda f: image.save(f, format="PNG"))
    result = {
        "provenance": benchmarking.provenance("cpu", label=args.label, command=" ".join(["python"] + sys.argv)),
        "config": {"size": SIZE, "generator": model, "discriminator": d_model, "task": args.task,
                   "recipe": {**recipe, "betas": list(recipe["betas"])}, "steps": args.steps, "batch": args.batch,
                   "lr_schedule": f"constant {args.steps // 2} steps, then linear decay to 0",
                   "seed": args.seed, "domain_A_images": len(domain_a), "domain_B_images": len(domain_b),
                   "test_images": len(test_x),
                   "g_parameters": sum(p.numel() for p in nets[0].parameters()),
                   "d_parameters": sum(p.numel() for p in nets[2].parameters())},
        "train_seconds": train_s, "steps_per_second": args.steps / train_s,
        **scores,
        "loss_summary": {k: loss_summary([{"loss": h[k]} for h in history])
                         for k in ("g_adv", "cycle", "identity", "d_A", "d_B")},
        "translations_png": os.path.basename(png),
    }
    path = os.path.join(args.out, f"cyclegan_digits_{args.task}_cpu{suffix}.json")
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    print(f"trained {args.steps} steps in {train_s:.0f} s; class accuracy A->B {scores['class_accuracy_A_to_B']:.3f}, "
          f"B->A {scores['class_accuracy_B_to_A']:.3f} (sources: B {scores['class_accuracy_of_the_sources_B']:.3f}, "
          f"A {scores['class_accuracy_of_the_sources']:.3f}); cycle L1 A {scores['cycle_l1_A']:.3f}, B "
          f"{scores['cycle_l1_B']:.3f}; L1 to truth A->B {scores['l1_to_truth_A_to_B']:.3f}, B->A "
          f"{scores['l1_to_truth_B_to_A']:.3f} (copying the input: {scores['l1_source_to_truth']:.3f})", flush=True)
    print(f"wrote {png} and {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
