"""Per-step overhead of the whole-loop sampler on top of the model, with a trivial model.

The model is ``x -> 0.99 * x`` (one elementwise kernel), so a loop's time is the model's kernels,
the scheduler's step and whatever the loop itself costs (Python, launches, host syncs). For each
step count this times, in one run, whole ``fastgen.diffusion.sample`` calls of:

* ``diffusers-loop``: diffusers' scheduler of the same name driven by the same loop (its step
  synchronises with the host), the baseline;
* ``fastgen-eager``: fastgen's drop-in scheduler, loop not captured (``cuda_graph=False``);
* ``fastgen-graph``: the same, captured in a CUDA graph and replayed (CUDA only).

and reports per step: time, and overhead = time per step - the model's own time per call (the
model alone, called ``steps`` times, is timed in the same round-robin). The
issue's target (GPU): fastgen-graph overhead <= 20 us per step.

    python benchmarks/bench_sampler_overhead.py [--device cuda] [--shape 256,3,32,32] [--steps 50,1000]
        [--scheduler DDPMScheduler] [--out benchmarks/results] [--label ""] [--min-run-time 0.5] [--repeats 3]

Results go to ``<out>/sampler_overhead_<device>.{csv,json}`` with provenance.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

from fastgen import benchmarking
from fastgen.diffusion import sample

TARGET_US = 20.0


def trivial_model(x, t):
    return x * 0.99


MODULES = {"DDPMScheduler": "scheduling_ddpm", "DDIMScheduler": "scheduling_ddim",
           "DPMSolverMultistepScheduler": "scheduling_dpmsolver_multistep"}


def fastgen_scheduler(name: str):
    """fastgen.diffusion.<name>, or None where it is not available."""
    try:
        return getattr(importlib.import_module(f"fastgen.diffusion.{MODULES[name]}"), name)
    except (ImportError, AttributeError):
        return None


def comparisons(device, shape, steps, scheduler_name, timing, repeats) -> list[benchmarking.Row]:
    import diffusers

    x = torch.randn(shape, device=device)
    t = torch.zeros(shape[0], dtype=torch.int64, device=device)
    label = "x".join(map(str, shape))
    cmp = benchmarking.Comparison(f"sample {scheduler_name} {label} float32 {steps} steps", baseline="diffusers-loop",
                                  device=device, **timing)

    def model_only():
        for _ in range(steps):
            trivial_model(x, t)
    # timed round-robin with the loops, so a load spike on a shared machine hits it alike
    cmp.add("model-only", model_only)
    common = dict(num_inference_steps=steps, device=device, seed=0, progress=False)
    ref_sched = getattr(diffusers, scheduler_name)()
    cmp.add("diffusers-loop", lambda: sample(trivial_model, ref_sched, shape, cuda_graph=False, **common))
    fastgen_cls = fastgen_scheduler(scheduler_name)
    if fastgen_cls is None:
        cmp.skip("fastgen-eager", f"fastgen.diffusion.{scheduler_name} is not available")
        cmp.skip("fastgen-graph", f"fastgen.diffusion.{scheduler_name} is not available")
    else:
        ours = fastgen_cls.from_config(ref_sched.config)
        cmp.add("fastgen-eager", lambda: sample(trivial_model, ours, shape, cuda_graph=False, **common))
        if device.type == "cuda":
            sample(trivial_model, ours, shape, cuda_graph=True, **common)  # capture outside the timing
            cmp.add("fastgen-graph", lambda: sample(trivial_model, ours, shape, cuda_graph=True, **common))
        else:
            cmp.skip("fastgen-graph", "CUDA graphs need a CUDA device")
    rows = cmp.run(repeats=repeats)
    model_s = next(r.median_s for r in rows if r.impl == "model-only") / steps
    for r in rows:
        if r.median_s != r.median_s:  # skipped (NaN)
            continue
        r.median_s, r.q20_s, r.q80_s = r.median_s / steps, r.q20_s / steps, r.q80_s / steps
        if r.impl == "model-only":
            r.note = "per step: the model alone, called as often as the loop calls it"
            continue
        overhead_us = (r.median_s - model_s) * 1e6
        r.note = f"per step; model alone {model_s * 1e6:.1f} us; overhead {overhead_us:.1f} us/step"
        if r.impl == "fastgen-graph":
            r.note += f" (target <= {TARGET_US:g}: {'met' if overhead_us <= TARGET_US else 'NOT met'})"
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default="256,3,32,32")
    parser.add_argument("--steps", default="50,1000")
    parser.add_argument("--scheduler", default="DDPMScheduler",
                        choices=("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler"))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="CPU: seconds of timing per entry")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin repeats per comparison (median kept)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shape = tuple(int(s) for s in args.shape.split(","))
    timing = {"min_run_time": args.min_run_time} if device.type == "cpu" else {}
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        print(f"timing {steps}-step loops on {device} ...", flush=True)
        rows += comparisons(device, shape, steps, args.scheduler, timing, args.repeats)
    benchmarking.print_table(rows)
    argv_text = argv if argv is not None else sys.argv[1:]
    prov = benchmarking.provenance(device, label=args.label,
                                   command=" ".join(["python benchmarks/bench_sampler_overhead.py", *argv_text]))
    prov.update(shape=list(shape), scheduler=args.scheduler, model="x -> 0.99 * x", target_overhead_us=TARGET_US)
    paths = benchmarking.write_results(rows, prov, args.out, f"sampler_overhead_{benchmarking.device_slug(device)}")
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
