"""A regularised discriminator step: fastgen against the textbook implementation, same D, same batch.

    python benchmarks/run_gan_d_step.py [--device cpu|cuda] [--batch 256] [--size 32] [--repeats 3]
                                        [--out benchmarks/results] [--label TEXT] [--quick]

For WGAN-GP (Wasserstein loss + penalty on interpolates, weight 10) and R1 (non-saturating loss +
R1 on reals, gamma 10), each in one process and timed round-robin:

* ``textbook``: D(real), D(fake), then D(x) again on the penalised points, torch.autograd.grad
  with create_graph=True, the norm, the penalty; backward of the total to D's parameters;
* ``textbook, torch.compile(D)``: the same with D compiled (torch.compile does not support the
  double backward a penalty needs; the row records what happens);
* ``fastgen``: :func:`fastgen.gan.discriminator_objective` (shared forwards, fused penalty ops),
  backward of the total;
* ``plain D step``: the loss alone, no penalty, to state the penalty's cost as a ratio.

Then the penalty ops alone on a gradient of the batch's shape (memory-bound: GB/s and the fraction
of the measured copy bandwidth): the interpolation, and the penalty from the gradient forward +
backward, fastgen per implementation vs eager torch and torch.compile of the same math.

A step here is the objective plus its backward to D's parameters; the optimizer update, the same
for every row, is left out. D is fastgen's DCGAN discriminator without normalisation layers
(WGAN-GP critics must not use batch norm), float32. The issue's targets: >= 1.15x the textbook on a
CPU at 32x32, >= 1.3x on a GPU at 64x64 batch 256.
"""
import argparse
import os
import shlex
import sys

import torch

from fastgen import benchmarking, cli
from fastgen.gan.losses import discriminator_loss
from fastgen.gan.penalty import discriminator_objective
from fastgen.models import DCGANDiscriminator
from fastgen.ops import gradient_penalty as gp_ops

CASES = {"wgan-gp": "wgan", "r1": "ns"}  # penalty -> the loss it is used with
WEIGHT = 10.0


def textbook_objective(D, real, fake, penalty: str, loss: str, alpha):
    """The usual implementation, written out as most training scripts have it."""
    d_loss = discriminator_loss(D(real), D(fake), loss)
    if penalty == "wgan-gp":
        a = alpha.view(-1, 1, 1, 1)
        x = (a * real + (1 - a) * fake).detach().requires_grad_(True)
    else:
        x = real.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    norm = g.flatten(1).norm(2, dim=1)
    pen = WEIGHT * ((norm - 1) ** 2).mean() if penalty == "wgan-gp" else WEIGHT / 2 * (norm ** 2).mean()
    return d_loss + pen


def step(objective, D):
    def run():
        for p in D.parameters():
            p.grad = None
        total = objective()
        total.backward()
        return total
    return run


def comparisons(device: torch.device, batch: int, size: int, timing: dict) -> list[benchmarking.Comparison]:
    torch.manual_seed(0)
    D = DCGANDiscriminator(channels=3, image_size=size, base_channels=64, norm="none").to(device)
    real = torch.randn(batch, 3, size, size, device=device)
    fake = torch.randn(batch, 3, size, size, device=device)
    alpha = torch.rand(batch, device=device)
    out = []
    for penalty, loss in CASES.items():
        cmp = benchmarking.Comparison(f"D step {penalty} DCGAN-D {batch}x3x{size}x{size} float32", baseline="textbook",
                                      device=device, **timing)
        cmp.add("textbook", step(lambda: textbook_objective(D, real, fake, penalty, loss, alpha), D))
        try:
            compiled = torch.compile(D)
            step(lambda: textbook_objective(compiled, real, fake, penalty, loss, alpha), D)()
            cmp.add("textbook, torch.compile(D)", step(lambda: textbook_objective(compiled, real, fake, penalty, loss, alpha), D))
        except Exception as exc:  # recorded in the table: what torch.compile does with a double backward
            cmp.skip("textbook, torch.compile(D)", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        cmp.add("fastgen", step(lambda: discriminator_objective(D, real, fake, loss=loss, penalty=penalty, weight=WEIGHT,
                                                                alpha=alpha)[0], D))
        cmp.add("plain D step (no penalty)", step(lambda: discriminator_loss(D(real), D(fake), loss), D),
                note="the step without regularisation: textbook / this = the penalty's cost")
        out.append(cmp)
    return out


def penalty_ops(device: torch.device, shape: tuple[int, ...], timing: dict) -> list[benchmarking.Comparison]:
    """The fused ops on their own. Minimum traffic: interpolate reads real and fake and writes x_hat
    (3 tensors); the penalty reads g forward and reads g / writes its gradient backward (3 tensors)."""
    torch.manual_seed(0)
    real, fake, alpha = torch.randn(shape, device=device), torch.randn(shape, device=device), torch.rand(shape[0], device=device)
    g = torch.randn(shape, device=device, requires_grad=True)
    nbytes = real.numel() * real.element_size()
    label = "x".join(map(str, shape)) + " float32"

    def lerp_eager(real, fake, alpha):
        a = alpha.view(-1, *([1] * (real.dim() - 1)))
        return a * real + (1 - a) * fake

    def penalty_eager(g):
        return WEIGHT * ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()

    def fwd_bwd(fn):
        def run():
            g.grad = None
            fn(g).backward()
        return run

    interp = benchmarking.Comparison(f"gp interpolate {label}", baseline="eager", device=device,
                                     bytes_moved=3 * nbytes, **timing)
    interp.add("eager", lambda: lerp_eager(real, fake, alpha))
    compiled = torch.compile(lerp_eager)
    compiled(real, fake, alpha)
    interp.add("torch.compile", lambda: compiled(real, fake, alpha))
    # alpha drawn per call: torch.rand's extra launch against the draw inside the interpolation kernel
    interp.add("eager, alpha drawn (torch.rand + lerp)", lambda: lerp_eager(real, fake, torch.rand(shape[0], device=device)))
    state = torch.tensor([0, 0], dtype=torch.int64, device=device)
    pen = benchmarking.Comparison(f"gp penalty_from_grad fwd+bwd {label}", baseline="eager", device=device,
                                  bytes_moved=3 * nbytes, **timing)
    pen.add("eager", fwd_bwd(penalty_eager))
    compiled_pen = torch.compile(penalty_eager)
    fwd_bwd(compiled_pen)()
    pen.add("torch.compile", fwd_bwd(compiled_pen))
    for impl, reason in cli.op_impls("gradient_penalty", device):
        if reason is not None:
            interp.skip(f"fastgen[{impl}]", reason)
            pen.skip(f"fastgen[{impl}]", reason)
            continue
        interp.add(f"fastgen[{impl}]", lambda impl=impl: gp_ops.interpolate(real, fake, alpha, impl=impl))
        if impl == "triton":  # the reference draws its Philox alphas with slow integer tensor ops
            interp.add("fastgen[triton], alpha drawn in kernel", lambda: gp_ops.interpolate(real, fake, seed=state, impl="triton"))
        pen.add(f"fastgen[{impl}]", fwd_bwd(lambda g, impl=impl: gp_ops.penalty_from_grad(g, "wgan-gp", WEIGHT, impl=impl)))
    return [interp, pen]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=None, help="image size (default 64 on cuda, 32 on cpu)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true", help="tiny batch, short timing: a smoke run")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    size = args.size or (64 if device.type == "cuda" else 32)
    batch, timing = args.batch, {"min_run_time": args.min_run_time}
    if args.quick:
        batch, size, timing, args.repeats = 4, 16, {"min_run_time": 0.05}, 1
    rows = []
    for cmp in comparisons(device, batch, size, timing):
        print(f"timing {cmp.group} ...", flush=True)
        rows += cmp.run(repeats=args.repeats)
    copy_gbps = benchmarking.measure_copy_bandwidth(device)
    for cmp in penalty_ops(device, (batch, 3, size, size), timing):
        print(f"timing {cmp.group} ...", flush=True)
        rows += cmp.run(copy_gbps=copy_gbps, repeats=args.repeats)
    benchmarking.print_table(rows)
    argv = sys.argv[1:] if argv is None else argv
    prov = benchmarking.provenance(device, label=args.label,
                                   command=shlex.join(["python", "benchmarks/run_gan_d_step.py"] + list(argv)))
    prov.update(batch=batch, size=size, weight=WEIGHT, repeats=args.repeats)
    stem = f"gan_d_step_{benchmarking.device_slug(device)}" + ("_quick" if args.quick else "")
    paths = benchmarking.write_results(rows, prov, args.out, stem)
    print(f"\nresults: {paths[0]}, {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
