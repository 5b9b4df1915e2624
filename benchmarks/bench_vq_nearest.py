"""Nearest-code search of a VQ-VAE: fastgen.ops.vq_nearest per implementation vs ``torch.cdist + argmin``
(the baseline, what diffusers' VectorQuantizer runs), the same math unchunked (``addmm + argmin``:
||c||^2 - 2 x c^T, then argmin), and a plain GEMM ``x @ c^T`` of the same shape (no argmin: the
throughput the fused kernel is judged against; its N x K output is written, the kernel's is not).
``fastgen[reference]`` is the chunked pure-torch version (128 MiB score tiles).

Targets (issue 10), GPU only: fastgen[triton] >= 2x cdist + argmin at N=65536, K=8192, D=64 in
float32 and bfloat16, and >= 60% of the GEMM's throughput (the row's ``gemm_fraction`` =
GEMM time / fastgen time, equal flops 2 N K D). Nothing here has been measured on a GPU yet.

    python benchmarks/bench_vq_nearest.py [--shapes 65536,8192,64] [--dtypes float32 bfloat16]
                                          [--out benchmarks/results] [--label TEXT]
    python3 -m pytest benchmarks/bench_vq_nearest.py --benchmark-only      (the pytest-benchmark suite)

The script writes ``vq_nearest_<device>.{csv,json}`` with provenance; each row's note has the
TFLOP/s (2 N K D / time) and, on CUDA, the peak memory the call allocated beyond its inputs
(torch.cuda.max_memory_allocated). A contender that cannot run here (Triton without a GPU) is
skipped with its reason. Shapes knob for the suite:
FASTGEN_BENCH_VQ_SHAPES = ``;``-separated ``N,K,D`` (default 65536,8192,64).
"""
import argparse
import os
import shlex
import sys

import pytest
import torch

from fastgen import benchmarking, cli
from fastgen.ops.vq_nearest import IMPLS, code_norms, vq_nearest

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SHAPES = "65536,8192,64"
NAMES = ["cdist+argmin", "addmm+argmin", "gemm"] + [f"fastgen[{i}]" for i in IMPLS]


def _parse_shapes(text: str):
    return [tuple(int(n) for n in s.split(",")) for s in text.split(";") if s]


def contenders(x: torch.Tensor, c: torch.Tensor):
    """(name, fn) of every computation, in table order."""
    def cdist_argmin():
        return torch.cdist(x, c).argmin(1)

    def addmm_argmin():
        return torch.addmm(code_norms(c).to(x.dtype), x, c.t(), alpha=-2.0).argmin(1)

    def gemm():
        return x @ c.t()

    out = [("cdist+argmin", cdist_argmin), ("addmm+argmin", addmm_argmin), ("gemm", gemm)]
    out += [(f"fastgen[{impl}]", lambda impl=impl: vq_nearest(x, c, impl=impl)) for impl in IMPLS]
    return out


def _peak_note(fn, device) -> str:
    if device.type != "cuda":
        return ""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return f"peak +{(torch.cuda.max_memory_allocated(device) - base) / 2**20:.0f} MiB"


def build(shape, dtype_name: str, device: torch.device) -> tuple[benchmarking.Comparison, dict]:
    n, k, d = shape
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    x = torch.randn(n, d, device=device).to(dtype)
    c = torch.randn(k, d, device=device).to(dtype)
    cmp = benchmarking.Comparison(f"vq_nearest {n}x{k}x{d} {dtype_name}", baseline="cdist+argmin", device=device)
    notes = {}
    available = dict(cli.op_impls("vq_nearest", device))
    for name, fn in contenders(x, c):
        impl = name[len("fastgen["):-1] if name.startswith("fastgen[") else None
        if impl is not None and available.get(impl) is not None:
            cmp.skip(name, available[impl])
            continue
        try:
            fn()  # compilation and lazy loading outside the timing; an unsupported dtype says so here
        except (RuntimeError, NotImplementedError) as error:
            cmp.skip(name, f"{type(error).__name__}: {str(error).strip().splitlines()[0]}")
            continue
        notes[name] = _peak_note(fn, device)
        cmp.add(name, fn, note=notes[name])
    return cmp, {"flops": 2 * n * k * d}


def annotate(rows, flops: int) -> None:
    """TFLOP/s of every row and, for fastgen rows, the fraction of the GEMM's throughput."""
    gemm = next((r for r in rows if r.impl == "gemm" and r.median_s == r.median_s), None)
    for r in rows:
        if r.median_s != r.median_s:  # skipped
            continue
        extra = [f"{flops / r.median_s / 1e12:.3g} TFLOP/s"]
        if gemm is not None and r.impl.startswith("fastgen"):
            extra.append(f"gemm_fraction {gemm.median_s / r.median_s:.2f}")
        r.note = "; ".join([n for n in (r.note, *extra) if n])


_comparisons: dict = {}


def _suite_comparison(shape, dtype_name):
    from _suite import DEVICE

    key = (shape, dtype_name)
    if key not in _comparisons:
        _comparisons[key] = build(shape, dtype_name, DEVICE)[0]
    return _comparisons[key]


@pytest.mark.parametrize("impl", NAMES)
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", _parse_shapes(os.environ.get("FASTGEN_BENCH_VQ_SHAPES", DEFAULT_SHAPES)),
                         ids=lambda s: "x".join(map(str, s)))
def test_vq_nearest(benchmark, shape, dtype_name, impl):
    from _suite import run_entry

    benchmark.extra_info["flops"] = 2 * shape[0] * shape[1] * shape[2]
    run_entry(benchmark, _suite_comparison(shape, dtype_name), impl)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="';'-separated N,K,D")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for shape in _parse_shapes(args.shapes):
        for dtype_name in args.dtypes:
            cmp, info = build(shape, dtype_name, device)
            print(f"timing {cmp.group} ...", flush=True)
            measured = cmp.run(repeats=args.repeats)
            annotate(measured, info["flops"])
            rows += measured
    benchmarking.print_table(rows)
    if not args.no_write:
        argv = sys.argv[1:] if argv is None else argv
        prov = benchmarking.provenance(device, label=args.label, command=shlex.join(
            ["python", "benchmarks/bench_vq_nearest.py"] + list(argv)))
        print("results: " + ", ".join(benchmarking.write_results(
            rows, prov, args.out, f"vq_nearest_{benchmarking.device_slug(device)}")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
