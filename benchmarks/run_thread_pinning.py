"""Does pinning OpenMP threads make fastgen's CPU timings stable? (issue 12, "pin threads for CPU
kernels where it makes results stable")

    python benchmarks/run_thread_pinning.py [--rounds 3] [--out benchmarks/results] [--label TEXT]

Each configuration is an OpenMP environment (it must be set before the runtime starts, so every
measurement runs in a fresh process): the default (no binding), threads bound close to the
initial thread on cores (OMP_PROC_BIND=close, OMP_PLACES=cores), bound spread, and the passive
wait policy (idle threads sleep at once instead of spinning). fastgen's CPU library shares torch's
OpenMP runtime (both need libgomp.so.1 and the loader maps torch's copy once), so one environment
governs both. Measured, in every configuration, at 64x3x64x64 float32:

* ``step kernel``: one fused sampling step with a history slot and the state output (the
  DPM-Solver++ 2M step), impl="cpu";
* ``DDIM step``, ``DDPM step``: fastgen's scheduler loop per step (DDPM draws torch.randn each
  step, so torch's parallel regions and fastgen's alternate).

Every worker times with fastgen.benchmarking's fixed glibc malloc thresholds (``fix_cpu_allocator``,
recorded per row): without them the same workload is bimodal between processes (~135 us or
~2,050 us for the step kernel), which hides any effect of the thread settings.

The configurations run round-robin ``--rounds`` times; a row per (configuration, workload, round)
with the median, the 20-80% quantiles and the share of the CPUs other processes used meanwhile
(fastgen.benchmarking.other_cpu_share), and a summary per (configuration, workload): the median
over rounds and the spread of the round medians (max / min), the stability the issue asks about.
Results: ``<out>/thread_pinning_<device>.{json,csv}`` with provenance, written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

CONFIGS = {
    "default": {},
    "bind-close": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
    "bind-spread": {"OMP_PROC_BIND": "spread", "OMP_PLACES": "cores"},
    "wait-passive": {"OMP_WAIT_POLICY": "passive"},
}
WORKLOADS = ("step kernel", "DDIM step", "DDPM step")
SHAPE = (64, 3, 64, 64)
STEPS = 50


def _worker(min_run_time: float) -> list[dict]:
    """Time every workload in this process (its OpenMP environment is the configuration)."""
    import torch

    import fastgen.diffusion as fd
    from fastgen import benchmarking
    from fastgen.ops.sampling_step import NUM_COEFS, sampling_step

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=gen)
    m, h = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    coefs, index = torch.rand(4, NUM_COEFS, generator=gen), torch.zeros(SHAPE[0], dtype=torch.long)

    def scheduler_loop(cls):
        scheduler = cls()
        noise_gen = torch.Generator().manual_seed(0)

        def loop():
            scheduler.set_timesteps(STEPS)
            sample = x
            for t in scheduler.timesteps:
                sample = scheduler.step(m, t, sample, generator=noise_gen).prev_sample
        return loop, STEPS

    workloads = {
        "step kernel": (lambda: sampling_step(x, m, coefs, index, history=(h,), return_state=True, impl="cpu"), 1),
        "DDIM step": scheduler_loop(fd.DDIMScheduler),
        "DDPM step": scheduler_loop(fd.DDPMScheduler),
    }
    rows = []
    for name in WORKLOADS:
        fn, per = workloads[name]
        before = benchmarking._cpu_snapshot()
        t = benchmarking.time_fn(fn, "cpu", min_run_time=min_run_time)
        share = benchmarking.other_cpu_share(before, benchmarking._cpu_snapshot())
        rows.append(dict(workload=name, median_s=t.median / per, q20_s=t.q20 / per, q80_s=t.q80 / per,
                         other_cpu_share=share, torch_threads=torch.get_num_threads(),
                         cpu_allocator=benchmarking.fix_cpu_allocator()))
    return rows


def _summaries(rows: list[dict]) -> list[dict]:
    out = []
    for config in CONFIGS:
        for workload in WORKLOADS:
            medians = [r["median_s"] for r in rows if r["config"] == config and r["workload"] == workload]
            if medians:
                out.append(dict(config=config, workload=workload, rounds=len(medians),
                                median_of_rounds_s=statistics.median(medians),
                                round_spread=max(medians) / min(medians)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per workload")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.worker:
        print(json.dumps(_worker(args.min_run_time)))
        return 0

    from fastgen import benchmarking
    from fastgen._io import atomic_write_text

    rows = []
    for round_ in range(args.rounds):
        for config, env in CONFIGS.items():
            print(f"round {round_ + 1}/{args.rounds}: {config} ...", flush=True)
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                                   "--min-run-time", str(args.min_run_time)],
                                  env={**os.environ, **env}, capture_output=True, text=True, check=True)
            for row in json.loads(proc.stdout.strip().splitlines()[-1]):
                rows.append(dict(config=config, round=round_, env=env, **row))
    summary = _summaries(rows)
    for s in summary:
        print(f"{s['config']:13s} {s['workload']:12s} {s['median_of_rounds_s'] * 1e6:9.1f} us"
              f"  round medians spread x{s['round_spread']:.2f}")
    prov = benchmarking.provenance("cpu", label=args.label,
                                   command=shlex.join(["python", "benchmarks/run_thread_pinning.py"] + sys.argv[1:]))
    prov.update(shape=list(SHAPE), steps=STEPS, configs=CONFIGS)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"thread_pinning_{benchmarking.device_slug('cpu')}")
    atomic_write_text(stem + ".json", json.dumps(dict(provenance=prov, summary=summary, rows=rows), indent=1) + "\n")
    header = ["config", "workload", "round", "median_s", "q20_s", "q80_s", "other_cpu_share", "torch_threads"]
    lines = [",".join(header)] + [",".join(str(r[k]) for k in header) for r in rows]
    atomic_write_text(stem + ".csv", "\n".join(lines) + "\n")
    print(f"results: {stem}.json, {stem}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
