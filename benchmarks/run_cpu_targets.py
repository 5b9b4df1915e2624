"""Measure the issue's CPU targets and write them to benchmarks/results/cpu_targets_<device>.{csv,json}.

* every fastgen scheduler's ``step`` >= 2x faster than diffusers' class of the same name at
  64x3x64x64 float32 with 50 inference steps: a whole 50-step loop of ``step`` calls with a fixed
  fake model output, the same (default) configuration for both libraries, set_timesteps included
  in both.
* the fused noising + loss >= 2x faster than the eager torch equivalent: forward + backward
  w.r.t. the prediction, no model, same shape.
* for the ancestral schedulers (DDPM, Euler ancestral, KDPM2 ancestral, LCM) a "torch.randn alone"
  row in the same group: the noise both libraries draw per step, timed by itself; its speedup over
  diffusers is the bound on any step that draws the same noise (the 2x target is out of reach where
  that row is below 2x). The ``fastgen[cpu_noise=philox]`` rows draw in-kernel Philox noise instead.

    python benchmarks/run_cpu_targets.py [--out benchmarks/results] [--label "2-core CPU"] [--repeats 3]

Targets are benchmarks, not tests: this prints and records whether each is met and always exits 0
unless something failed to run.
"""
import argparse
import os
import shlex
import sys

import torch

from fastgen import benchmarking, cli

SHAPE = (64, 3, 64, 64)
STEPS = 50
TARGET = 2.0


_RANDN_NOTE = ("the noise draw alone: STEPS x torch.randn of the sample's shape from a torch.Generator (the "
               "CPU mt19937 both libraries draw from); the ancestral schedulers draw STEPS - 1 or STEPS times "
               "per loop, so no step that draws as diffusers does can beat diffusers by more than this row")


def _randn_loop(like: torch.Tensor):
    generator = torch.Generator().manual_seed(0)

    def loop():
        for _ in range(STEPS):
            torch.randn(like.shape, generator=generator, dtype=like.dtype)
    return loop


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin repeats per comparison (median kept)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per measurement")
    args = parser.parse_args(argv)

    device = torch.device("cpu")
    timing = {"min_run_time": args.min_run_time}
    case = cli.DiffusionCase(SHAPE, torch.float32, device)
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: 1-minute load average {load:.2f} on {os.cpu_count()} CPUs: timings will be noisy")
    rows = []
    for cmp in cli.scheduler_loops(case, STEPS, timing):
        if cmp.group.split(".")[0] in cli.ANCESTRAL:
            # Both libraries draw each step's noise with torch.randn from the same generator (CPU
            # mt19937) and that draw is most of an ancestral step: time it alone, in the same group,
            # so the table shows the bound on any same-generator speedup (diffusers' step / this).
            cmp.add("torch.randn alone", _randn_loop(case.noise), note=_RANDN_NOTE)
        print(f"timing {cmp.group} ...", flush=True)
        rows += cli.per_step(cmp.run(repeats=args.repeats), STEPS)
    cmp = cli.noising_loss(case, timing, compile_=False, reference=False)
    print(f"timing {cmp.group} ...", flush=True)
    rows += cmp.run(repeats=args.repeats)

    summary = []
    for r in rows:
        if r.impl == "torch.randn alone" and r.speedup is not None:
            summary.append(f"{r.group} [noise draw alone]: {r.speedup:.2f}x vs {r.baseline} "
                           f"-> the same-generator bound")
        elif r.impl == "fastgen[reference]" and r.speedup is not None:
            r.note = (r.note + "; " if r.note else "") + "pure-torch reference path, not judged"
        elif r.impl.startswith("fastgen") and r.speedup is not None:
            verdict = "met" if r.speedup >= TARGET else "NOT met"
            r.note = (r.note + "; " if r.note else "") + f"target >= {TARGET:g}x vs {r.baseline}: {verdict}"
            summary.append(f"{r.group} [{r.impl}]: {r.speedup:.2f}x vs {r.baseline} -> {verdict}")
    print()
    benchmarking.print_table(rows)
    print()
    print("\n".join(summary) if summary else "no fastgen row ran: nothing to judge (see the skip reasons above)")
    argv = sys.argv[1:] if argv is None else argv
    prov = benchmarking.provenance(device, label=args.label,
                                   command=shlex.join(["python", "benchmarks/run_cpu_targets.py"] + argv))
    prov.update(shape=list(SHAPE), steps=STEPS, target_speedup=TARGET, repeats=args.repeats)
    paths = benchmarking.write_results(rows, prov, args.out, f"cpu_targets_{benchmarking.device_slug(device)}")
    print(f"\nresults: {paths[0]}, {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
