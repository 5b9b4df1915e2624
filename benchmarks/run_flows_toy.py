"""Fit a Glow to 2-D toy densities (two moons, a ring of Gaussians) on a CPU; plot its density beside the data.

    python benchmarks/run_flows_toy.py [--steps 2000] [--batch 256] [--lr 1e-3] [--depth 8] [--hidden 64]
                                       [--threads N] [--out benchmarks/results] [--label TEXT] [--quick]

Model: :class:`fastgen.models.Glow` ``(2, levels=1, depth, hidden, squeeze=False)`` on points viewed as
(B, 2, 1, 1): ActNorm, a 2x2 LU "1x1 conv" (a learned rotation and shear) and an affine coupling of one
coordinate on the other per step. Plain Adam on the mean NLL of fresh batches, clipping at 50.

Data (:mod:`fastgen.data.toy2d`): ``two_moons(noise=0.05)`` and ``ring_of_gaussians(modes=8, radius=2,
std=0.1)`` (a wider std than the GAN setting's 0.02, whose near-point masses a small flow cannot fit
in minutes). Reported per data set: the mean NLL (nats per point) on 20,000 fresh points, for the ring
beside the true density's (its differential entropy, estimated on the same points, the best any model
can score), and the Riemann sum of exp(log_prob) over the plotted square (about 1, less the mass
outside it). Written: ``<out>/flows_toy_density.png`` (a row per data set: a histogram of 20,000 data
points, then the flow's density on the same grid, each scaled to its maximum) and
``<out>/flows_toy_cpu.json``. ``--quick`` is a seconds-long smoke run writing ``*_quick`` files.
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
from fastgen.data import ring_mixture, ring_of_gaussians, two_moons
from fastgen.models import Glow

GRID = 200  # pixels per side of each panel
EXTENT = {"two_moons": (-1.5, 2.5, -1.25, 1.75), "ring": (-3.0, 3.0, -3.0, 3.0)}  # x0, x1, y0, y1
RING = dict(modes=8, radius=2.0, std=0.1)
DATA = {"two_moons": lambda n, g: two_moons(n, noise=0.05, generator=g),
        "ring": lambda n, g: ring_of_gaussians(n, **RING, generator=g)}
EVAL_POINTS = 20000


def ring_log_density(points: torch.Tensor) -> torch.Tensor:
    """The exact log density (n,) of the ring mixture at points (n, 2)."""
    mix = ring_mixture(**RING)
    dist = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(mix.num_modes, dtype=torch.float64)),
        torch.distributions.Independent(torch.distributions.Normal(mix.centers.double(), mix.std), 1))
    return dist.log_prob(points.double())


def grid_points(name: str) -> tuple[torch.Tensor, float]:
    """The panel's pixel centres (GRID*GRID, 2), row 0 at the top, and the area of one pixel."""
    x0, x1, y0, y1 = EXTENT[name]
    dx, dy = (x1 - x0) / GRID, (y1 - y0) / GRID
    xs = x0 + dx * (torch.arange(GRID) + 0.5)
    ys = y1 - dy * (torch.arange(GRID) + 0.5)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], -1).view(-1, 2), dx * dy


def histogram(name: str, points: torch.Tensor) -> torch.Tensor:
    """(GRID, GRID) counts of points in the panel's pixels, row 0 at the top."""
    x0, x1, y0, y1 = EXTENT[name]
    col = ((points[:, 0] - x0) / (x1 - x0) * GRID).floor().long()
    row = ((y1 - points[:, 1]) / (y1 - y0) * GRID).floor().long()
    inside = (col >= 0) & (col < GRID) & (row >= 0) & (row < GRID)
    return torch.bincount(row[inside] * GRID + col[inside], minlength=GRID * GRID).view(GRID, GRID).float()


def fit(name: str, args) -> tuple[dict, torch.Tensor]:
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = Glow(2, 1, args.depth, args.hidden, squeeze=False)
    with torch.no_grad():  # ActNorm's data-dependent init
        model.log_prob(DATA[name](4096, g).view(-1, 2, 1, 1))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    history, window = [], []
    log_every = max(1, min(100, args.steps // 10))
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = -model.log_prob(DATA[name](args.batch, g).view(-1, 2, 1, 1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 50.0)
        opt.step()
        window.append(loss.item())
        if step % log_every == 0 or step == args.steps:
            history.append({"step": step, "nll_nats": sum(window) / len(window), "seconds": time.perf_counter() - start})
            window = []
    train_s = time.perf_counter() - start

    model.eval()
    test = DATA[name](EVAL_POINTS, torch.Generator().manual_seed(args.seed + 1))
    grid, area = grid_points(name)
    with torch.no_grad():
        nll = -model.log_prob(test.view(-1, 2, 1, 1)).double()
        density = model.log_prob(grid.view(-1, 2, 1, 1)).double().exp()
    out = {"nll_nats": nll.mean().item(), "nll_nats_sem": (nll.std() / math.sqrt(nll.numel())).item(),
           "grid_mass": (density.sum() * area).item(), "grid_extent": EXTENT[name],
           "parameters": sum(p.numel() for p in model.parameters()), "train_seconds": train_s,
           "loss_curve": history}
    if name == "ring":
        true_nll = -ring_log_density(test)
        out["true_nll_nats"] = true_nll.mean().item()
        out["true_nll_nats_sem"] = (true_nll.std() / math.sqrt(true_nll.numel())).item()
    panels = [histogram(name, test), density.view(GRID, GRID).float()]
    return out, torch.cat([p / p.max().clamp_min(1e-30) for p in panels], dim=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads; on a CPU shared with other jobs 1 avoids oversubscription")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (20 steps)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.depth, args.hidden = 20, 2, 8
    if min(args.steps, args.batch, args.depth, args.hidden) < 1:
        parser.error("--steps, --batch, --depth and --hidden must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    suffix = "_quick" if args.quick else ""

    from PIL import Image

    runs, rows = {}, []
    for name in DATA:
        runs[name], row = fit(name, args)
        rows.append(row)
        r = runs[name]
        truth = f" (true density {r['true_nll_nats']:.3f})" if "true_nll_nats" in r else ""
        print(f"{name}: NLL {r['nll_nats']:.3f} +- {r['nll_nats_sem']:.3f} nats per point{truth}; mass on the plotted "
              f"square {r['grid_mass']:.4f}; {args.steps} steps in {r['train_seconds']:.1f} s", flush=True)
    pixels = (torch.cat(rows, dim=0).sqrt() * 255).round().clamp(0, 255).to(torch.uint8)  # sqrt: show the tails
    image = Image.fromarray(pixels.numpy(), mode="L")
    png = os.path.join(args.out, f"flows_toy_density{suffix}.png")
    atomic_write(png, lambda f: image.save(f, format="PNG"))
    result = {
        "provenance": benchmarking.provenance("cpu", label=args.label),
        "config": {"model": f"Glow(2, 1, {args.depth}, {args.hidden}, squeeze=False)", "steps": args.steps,
                   "batch": args.batch, "lr": args.lr, "optimizer": "Adam", "grad_clip": 50.0, "seed": args.seed,
                   "data": {"two_moons": {"noise": 0.05}, "ring": RING}, "eval_points": EVAL_POINTS},
        "png": {"file": os.path.basename(png), "layout": "a row per data set (two_moons, ring): data histogram | flow "
                "density, each divided by its maximum, sqrt-scaled"},
        "runs": runs,
    }
    path = os.path.join(args.out, f"flows_toy_cpu{suffix}.json")
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    print(f"wrote {path}, {png}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
