"""Train small Glow and RealNVP flows on the shipped UCI digits on a CPU; report exact test-split NLLs.

    python benchmarks/run_flows_digits.py [--models glow realnvp] [--steps 1500] [--batch 64] [--lr 1e-3]
                                          [--depth 4] [--hidden 64] [--levels 2] [--eval-draws 10]
                                          [--temperature 0.7] [--device cpu] [--threads N]
                                          [--out benchmarks/results] [--label TEXT] [--quick]

Data: the 1,797 8x8 digits as their 17 ink levels k = 0..16, split by :func:`fastgen.data.split_indices`
(every fifth image in file order, 360, is the test split; the other 1,437 train), the package's one split,
so the numbers sit beside the VAE's.

Bits/dim convention (:mod:`fastgen.models.flows.multiscale`): the flows model y = (k + u) / 17 - 0.5,
u ~ U[0, 1)^64 (uniform dequantisation with K = 17 levels), and report
bits/dim = (-log p(y) + 64 log 17) / (64 ln 2), the code length of the 17-level discrete data (an upper
bound by Jensen); the uniform model scores log2(17) = 4.0875. It is not comparable with 8-bit (K = 256)
numbers. Each reported NLL averages ``--eval-draws`` dequantisation draws per image.

Models: :class:`fastgen.models.Glow` (``--levels`` levels of ``--depth`` steps of ActNorm, LU 1x1 conv,
sigmoid affine coupling) and :class:`fastgen.models.RealNVP` (checkerboard and channel couplings,
tanh scale), both with ``--hidden``-wide coupling nets. Plain Adam on the mean training bits/dim,
gradient-norm clipping at 50, ActNorm initialised from 512 training images; no EMA (flows are evaluated
with their last weights). Written: ``<out>/flows_digits_<device type>.json`` (provenance, config, loss
curve and the numbers) and ``<out>/flows_digits_samples_<model>.png`` (64 samples at ``--temperature``,
quantised to the 17 levels). ``--quick`` is a seconds-long smoke run writing ``*_quick`` files.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

from fastgen import benchmarking
from fastgen._io import atomic_write
from fastgen.data import load_digits, split_indices
from fastgen.models import Glow, RealNVP
from fastgen.models.flows import dequantize, quantize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_digits_training import image_grid_png  # noqa: E402  (one grid writer for the digits scripts)

LEVELS = 17  # ink counts 0..16
DIMS = 64
INIT_IMAGES = 512  # ActNorm's data-dependent initialisation batch
GRAD_CLIP = 50.0
MODELS = {"glow": Glow, "realnvp": RealNVP}


def digit_levels() -> tuple[torch.Tensor, torch.Tensor]:
    """(train (1437, 1, 8, 8), test (360, 1, 8, 8)) int64 ink levels 0..16."""
    images = load_digits(8, normalize=None)[0].to(torch.int64)  # the raw counts, exact in float32
    split = split_indices()
    return images[torch.from_numpy(split["train"])], images[torch.from_numpy(split["test"])]


def endless_batches(images: torch.Tensor, batch: int, generator: torch.Generator):
    """Shuffled minibatches of ``images``, reshuffled each epoch, full batches only, forever."""
    while True:
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, images.shape[0] - batch + 1, batch):
            yield images[order[start:start + batch]]


@torch.no_grad()
def evaluate(model, images: torch.Tensor, draws: int, seed: int) -> dict:
    """Mean NLL over ``images``: nats per image and bits/dim, each image's NLL averaged over ``draws``
    dequantisation draws; with the standard error of the mean over images."""
    model.eval()
    g = torch.Generator(device=images.device).manual_seed(seed)
    bpd = torch.stack([model.bits_per_dim(images, LEVELS, generator=g) for _ in range(draws)]).mean(0).double()
    nats = bpd * DIMS * math.log(2)
    model.train()
    return {"nll_nats": nats.mean().item(), "nll_nats_sem": (nats.std() / math.sqrt(nats.numel())).item(),
            "bits_per_dim": bpd.mean().item(), "bits_per_dim_sem": (bpd.std() / math.sqrt(bpd.numel())).item(),
            "dequantisation_draws": draws, "images": images.shape[0]}


def train_one(name: str, args, train: torch.Tensor, test: torch.Tensor, device: torch.device) -> tuple[dict, object]:
    torch.manual_seed(args.seed)
    model = MODELS[name](1, args.levels, args.depth, args.hidden, image_size=8).to(device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():  # ActNorm's data-dependent init, on more images than a batch
        model.log_prob(dequantize(train[:INIT_IMAGES], LEVELS, generator=g))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    batches = endless_batches(train, args.batch, torch.Generator().manual_seed(args.seed))
    log_every = max(1, min(100, args.steps // 10))
    history, window = [], []
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = model.bits_per_dim(next(batches), LEVELS, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        window.append(loss.item())
        if step % log_every == 0 or step == args.steps:
            history.append({"step": step, "bits_per_dim": sum(window) / len(window),
                            "seconds": time.perf_counter() - start})
            window = []
            if not math.isfinite(history[-1]["bits_per_dim"]):
                raise RuntimeError(f"{name}: the training loss is not finite at step {step}: {history[-1]}")
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    numbers = {"test": evaluate(model, test, args.eval_draws, args.seed + 1),
               "train": evaluate(model, train, args.eval_draws, args.seed + 2)}
    eval_s = time.perf_counter() - start
    samples = model.sample(64, generator=torch.Generator(device=device).manual_seed(args.seed),
                           temperature=args.temperature)
    out = {"model": name, "parameters": sum(p.numel() for p in model.parameters()), "results": numbers,
           "train_seconds": train_s, "steps_per_second": args.steps / train_s, "eval_seconds": eval_s,
           "loss_curve": history}
    # 17-level pixels shown as the digits scripts show [-1, 1] images: k / 8 - 1
    return out, quantize(samples, LEVELS).float() / 8 - 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--eval-draws", type=int, default=10)
    parser.add_argument("--temperature", type=float, default=0.7, help="of the sample grids")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads; on a CPU shared with other jobs 1 avoids oversubscription")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (20 steps, 20 test images)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.depth, args.hidden, args.eval_draws = 20, 16, 1, 8, 2
    if min(args.steps, args.batch, args.levels, args.depth, args.hidden, args.eval_draws) < 1:
        parser.error("--steps, --batch, --levels, --depth, --hidden and --eval-draws must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    suffix = "_quick" if args.quick else ""

    train, test = (t.to(device) for t in digit_levels())
    if args.quick:
        train, test = train[:200], test[:20]
    runs, pngs = {}, {}
    for name in args.models:
        runs[name], samples = train_one(name, args, train, test, device)
        pngs[name] = os.path.join(args.out, f"flows_digits_samples_{name}{suffix}.png")
        image = image_grid_png(samples)
        atomic_write(pngs[name], lambda f, image=image: image.save(f, format="PNG"))
        runs[name]["samples_png"] = os.path.basename(pngs[name])
        t = runs[name]["results"]["test"]
        print(f"{name}: {runs[name]['parameters']} parameters, {args.steps} steps in {runs[name]['train_seconds']:.1f} s; "
              f"test NLL {t['nll_nats']:.2f} +- {t['nll_nats_sem']:.2f} nats = {t['bits_per_dim']:.4f} bits/dim "
              f"(train {runs[name]['results']['train']['bits_per_dim']:.4f})", flush=True)

    result = {
        "provenance": benchmarking.provenance(device, label=args.label),
        "config": {"steps": args.steps, "batch": args.batch, "lr": args.lr, "optimizer": "Adam",
                   "grad_clip": GRAD_CLIP, "levels": args.levels, "depth": args.depth, "hidden": args.hidden,
                   "actnorm_init_images": INIT_IMAGES, "ema": None, "sample_temperature": args.temperature,
                   "split": f"test = images with index % 5 == 0 ({test.shape[0]}), train = the rest ({train.shape[0]})",
                   "seed": args.seed},
        "units": "NLL in nats per image (64 dims) and bits/dim of the 17-level data under uniform dequantisation "
                 "(y = (k + u) / 17 - 0.5; bits/dim = (-log p(y) + 64 ln 17) / (64 ln 2)); uniform = "
                 f"log2(17) = {math.log2(17):.4f} bits/dim",
        "runs": runs,
    }
    path = os.path.join(args.out, f"flows_digits_{device.type}{suffix}.json")
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    print(f"wrote {path}, " + ", ".join(pngs.values()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
