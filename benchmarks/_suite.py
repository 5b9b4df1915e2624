"""What the pytest-benchmark suites share: settings and :func:`run_entry`.

Each suite builds its comparisons with the same case builders as ``fastgen bench diffusion``
(fastgen/cli.py), so fastgen and its references (eager torch, torch.compile, diffusers) are timed
in one run and grouped in one table.

Options (environment): FASTGEN_BENCH_SHAPE (default 256,3,32,32), FASTGEN_BENCH_DTYPE
(float32), FASTGEN_BENCH_DEVICE (cuda if available, else cpu), FASTGEN_BENCH_STEPS (50).
"""
import os

import pytest
import torch

from fastgen import cli

SHAPE = tuple(int(s) for s in os.environ.get("FASTGEN_BENCH_SHAPE", "256,3,32,32").split(","))
DTYPE = cli.DTYPES[os.environ.get("FASTGEN_BENCH_DTYPE", "float32")]
DEVICE = torch.device(os.environ.get("FASTGEN_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
STEPS = int(os.environ.get("FASTGEN_BENCH_STEPS", "50"))


def run_entry(benchmark, comparison, impl: str) -> None:
    """Time ``comparison``'s entry ``impl`` with pytest-benchmark, in the comparison's group.

    Skips with the reason where the entry was skipped or is absent (say, no torch.compile)."""
    entries = {name: (fn, note) for name, fn, note in comparison.entries()}
    if impl not in entries:
        pytest.skip(f"{impl} is not part of {comparison.group!r} here")
    fn, note = entries[impl]
    if fn is None:
        pytest.skip(note)
    benchmark.group = comparison.group
    benchmark.extra_info["baseline"] = comparison.baseline
    if comparison.bytes_moved is not None:
        benchmark.extra_info["bytes_moved"] = comparison.bytes_moved
    if DEVICE.type == "cuda":  # pytest-benchmark reads a host clock: wait for the kernels
        def timed():
            fn()
            torch.cuda.synchronize(DEVICE)
        benchmark(timed)
    else:
        benchmark(fn)
