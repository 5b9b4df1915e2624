"""Time every tile candidate of kernels/tuning.py at the shapes that matter, on a GPU.

    python benchmarks/tune_tiles.py [--families elementwise group_norm attention vq_nearest]
                                    [--dtypes float32 bfloat16] [--quick] [--out benchmarks/results]
                                    [--label TEXT] [--write-table [PATH]]

Shapes: the elementwise kernels at 256x3x32x32 (DDPM CIFAR-10), 64x3x64x64 and 64x4x256x256
(16.8M elements), each called through its launcher in fastgen.kernels (noise from in-kernel Philox
where the kernel draws it); GroupNorm (+ time embedding + SiLU, forward and backward) at the U-Net's
shapes of benchmarks/bench_group_norm.py, NCHW and channels_last; attention forward and backward at
benchmarks/bench_attention.py's shapes; vq_nearest at 65536 x 8192 x 64. Each candidate runs under
``tuning.forced`` and is timed with fastgen.benchmarking.time_fn (CUDA events, L2 flushed before
every call); the rows give the median and the 20%-80% quantiles of every candidate side by side,
with its speedup over today's default, and are written to ``<out>/tiles_<device>.{json,csv}`` with
provenance (``_<families>`` added to the name when only some families are swept).

``--write-table`` (default path kernels/tiles.json) merges into the committed table, for this GPU's
name, the winner of every group whose median beats the default's by at least MIN_GAIN and whose
20-80% range lies wholly below the default's median; every other group keeps the default (an
entry for it is removed). Exits 2 without CUDA: the candidates are GPU tiles; on a CPU they run
only under the interpreter, which times nothing useful.
"""
import argparse
import json
import math
import os
import shlex
import sys

import torch

from fastgen import benchmarking, ops
from fastgen._io import atomic_write_text
from fastgen.kernels import group_norm as group_norm_kernels
from fastgen.kernels import tuning
from fastgen.ops.bias_act import ACTIVATIONS as BIAS_ACT_ACTIVATIONS

MIN_GAIN = 0.03  # a winner must be at least 3% faster than the default to enter the table
ELEMENTWISE_SHAPES = ((256, 3, 32, 32), (64, 3, 64, 64), (64, 4, 256, 256))
GROUP_NORM_SHAPES = ((256, 128, 32, 32), (256, 256, 16, 16), (1, 320, 64, 64))
ATTENTION_SHAPES = ((256, 1, 256, 256), (256, 1, 1024, 128))
VQ_SHAPES = ((65536, 8192, 64),)
FAMILIES = ("elementwise", "group_norm", "attention", "vq_nearest")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _fmt(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def elementwise_cases(shape, dtype, dev):
    """(kernel, size, thunk, bytes moved) of every elementwise launcher on ``shape``."""
    from fastgen.kernels import add_noise, bias_act, diffusion_loss, gradient_penalty, sampling_step

    x = torch.randn(shape, device=dev).to(dtype)
    y, out, out2 = torch.randn_like(x), torch.empty_like(x), torch.empty_like(x)
    B, nbytes, per_sample = shape[0], x.numel() * x.element_size(), x.numel() // shape[0]
    abar = torch.linspace(0.999, 0.01, 1000, device=dev)
    t = torch.randint(0, 1000, (B,), device=dev)
    rng = torch.tensor([1234, 0], dtype=torch.int64, device=dev)
    coefs = torch.rand(10, sampling_step.NUM_COEFS, device=dev)
    index = torch.randint(0, 10, (B,), device=dev)
    scale, alpha = torch.rand(B, device=dev), torch.rand(B, device=dev)
    bias = torch.randn(shape[1], device=dev).to(dtype)
    inner = per_sample // shape[1]
    lrelu, alpha_lrelu, gain = BIAS_ACT_ACTIVATIONS["lrelu"]  # (code, alpha, gain): StyleGAN2's conv activation
    return [
        ("add_noise", per_sample, lambda: add_noise.add_noise(x, None, t, abar, rng, out), 2 * nbytes),
        ("diffusion_loss_forward", per_sample, lambda: diffusion_loss.loss_forward(y, x, None, t, abar, rng, 0),
         nbytes),
        ("diffusion_loss_backward", per_sample,
         lambda: diffusion_loss.loss_backward(y, x, None, t, abar, rng, scale, 0, out, None), 2 * nbytes),
        ("sampling_step", per_sample, lambda: sampling_step.sampling_step(
            x, y, (None,) * 4, None, index, coefs, rng, None, out, None), 3 * nbytes),
        ("gp_interpolate", per_sample, lambda: gradient_penalty.interpolate(x, y, alpha, out), 3 * nbytes),
        ("gp_sum_of_squares", per_sample, lambda: gradient_penalty.sum_of_squares(x), nbytes),
        ("gp_scale", per_sample, lambda: gradient_penalty.scale(x, scale, out), 2 * nbytes),
        ("bias_act_forward", inner, lambda: bias_act.forward(x, bias, 1, lrelu, alpha_lrelu, gain, None, out),
         2 * nbytes),
        ("bias_act_backward", inner, lambda: bias_act.backward(y, x, bias, 1, lrelu, alpha_lrelu, gain, None, out2),
         3 * nbytes),
    ]


def group_norm_cases(shape, dtype, dev):
    B, C = shape[:2]
    groups = math.gcd(32, C)  # 32 as the U-Net (and bench_group_norm.py)
    cases = []
    for layout in ("NCHW", "channels_last"):
        x = torch.randn(shape, device=dev).to(dtype)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
        x.requires_grad_(True)
        w, b = torch.randn(C, device=dev).to(dtype), torch.randn(C, device=dev).to(dtype)
        emb = torch.randn(B, C, device=dev).to(dtype)
        out = ops.group_norm(x, groups, w, b, emb=emb, activation="silu", impl="triton")
        dy = torch.randn_like(out)
        nbytes = x.numel() * x.element_size()
        size = x.numel() // (B * groups)
        forward, backward = (group_norm_kernels.tile_kernel(p, x, groups) for p in ("forward", "backward"))
        cases.append((forward, size, lambda x=x, w=w, b=b, emb=emb: ops.group_norm(
            x, groups, w, b, emb=emb, activation="silu", impl="triton"), 2 * nbytes))
        cases.append((backward, size, lambda x=x, out=out, dy=dy: torch.autograd.grad(
            out, x, dy, retain_graph=True), 3 * nbytes))
    return cases


def attention_cases(shape, dtype, dev):
    q, k, v = (torch.randn(shape, device=dev).to(dtype).requires_grad_(True) for _ in range(3))
    out = ops.attention(q, k, v, impl="triton")
    do = torch.randn_like(out)
    return [("attention_forward", shape[-1], lambda: ops.attention(q, k, v, impl="triton"), None),
            ("attention_backward", shape[-1], lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), None)]


def vq_cases(shape, dtype, dev):
    n, k, d = shape
    x, c = torch.randn(n, d, device=dev).to(dtype), torch.randn(k, d, device=dev).to(dtype)
    return [("vq_nearest", d, lambda: ops.vq_nearest(x, c, impl="triton"), None)]


BUILDERS = {"elementwise": (elementwise_cases, ELEMENTWISE_SHAPES), "group_norm": (group_norm_cases, GROUP_NORM_SHAPES),
            "attention": (attention_cases, ATTENTION_SHAPES), "vq_nearest": (vq_cases, VQ_SHAPES)}


def sweep(families, dtypes, quick: bool, dev) -> tuple[list, list]:
    """Rows of every candidate per (kernel, dtype, shape), and the groups: (group, kernel, dtype, size,
    {impl label: config})."""
    timing = {"warmup_ms": 5.0, "rep_ms": 20.0} if quick else {"warmup_ms": 10.0, "rep_ms": 50.0}
    copy_gbps = benchmarking.measure_copy_bandwidth(dev)
    rows, groups = [], []
    for family in families:
        build, shapes = BUILDERS[family]
        for dtype in dtypes:
            for shape in (shapes[:1] if quick else shapes):
                for kernel, size, fn, nbytes in build(shape, dtype, dev):
                    name = str(dtype).replace("torch.", "")
                    group = f"{kernel} {'x'.join(map(str, shape))} {name}"
                    cands = tuning.candidates(kernel, dtype, size)
                    impls = {_fmt(c): c for c in cands}
                    cmp = benchmarking.Comparison(group, baseline=_fmt(cands[0]), device=dev, bytes_moved=nbytes,
                                                  **timing)
                    for label, config in impls.items():
                        def run(config=config, kernel=kernel, fn=fn):
                            with tuning.forced(kernel, config):
                                return fn()
                        cmp.add(label, run, note="default" if config == cands[0] else "")
                    got = cmp.run(copy_gbps=copy_gbps if nbytes else None)
                    benchmarking.print_table(got)
                    rows += got
                    groups.append((group, kernel, name, size, impls))
    return rows, groups


def table_entries(rows, groups, device_name: str, source: str) -> tuple[list, list]:
    """(entries to set, keys to clear): a winner beating the default by MIN_GAIN outside its spread."""
    by_group = {}
    for r in rows:
        by_group.setdefault(r.group, []).append(r)
    chosen, cleared = [], []
    for group, kernel, dtype, size, impls in groups:
        measured = [r for r in by_group.get(group, []) if not math.isnan(r.median_s)]
        base = next(r for r in measured if r.impl == r.baseline)
        best = min(measured, key=lambda r: r.median_s)
        key = (device_name, kernel, dtype, tuning.bucket(size))
        if best is not base and best.median_s * (1 + MIN_GAIN) <= base.median_s and best.q80_s < base.median_s:
            chosen.append({"device": device_name, "kernel": kernel, "dtype": dtype, "bucket": tuning.bucket(size),
                           "config": impls[best.impl], "measured": f"{group}: median {best.median_s * 1e6:.1f} us "
                           f"({best.q20_s * 1e6:.1f}-{best.q80_s * 1e6:.1f}) vs default {base.median_s * 1e6:.1f} us; "
                           f"{source}"})
        else:
            cleared.append(key)
    return chosen, cleared


def write_table(path: str, chosen: list, cleared: list) -> None:
    data = json.load(open(path)) if os.path.exists(path) else {"entries": []}
    drop = set(cleared) | {(e["device"], e["kernel"], e["dtype"], e["bucket"]) for e in chosen}
    kept = [e for e in data.get("entries", []) if (e["device"], e["kernel"], e["dtype"], e["bucket"]) not in drop]
    data["entries"] = kept + chosen
    tuning.validate_entries(data["entries"], path)  # a candidate that is not compile-checked never gets in
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=["float32", "bfloat16"])
    parser.add_argument("--quick", action="store_true", help="first shape of each family, shorter timing")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--write-table", nargs="?", const=tuning.TABLE_PATH, default=None, metavar="PATH",
                        help=f"merge the winners into the table (default {tuning.TABLE_PATH})")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_tiles: needs a CUDA GPU (the candidates are GPU tiles; the CPU runs Triton only under the "
              "interpreter, which times nothing useful). Nothing was measured.", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    torch.manual_seed(0)
    rows, groups = sweep(args.families, [DTYPES[d] for d in args.dtypes], args.quick, dev)
    argv = sys.argv[1:] if argv is None else argv
    prov = benchmarking.provenance(dev, label=args.label,
                                   command=shlex.join(["python", "benchmarks/tune_tiles.py"] + list(argv)))
    prov.update(compute_capability="sm_%d%d" % torch.cuda.get_device_capability(dev), min_gain=MIN_GAIN)
    stem = (f"tiles_{benchmarking.device_slug(dev)}" + ("" if set(args.families) == set(FAMILIES) else
            "_" + "-".join(args.families)) + ("_quick" if args.quick else ""))
    paths = benchmarking.write_results(rows, prov, args.out, stem)
    print("results: " + ", ".join(paths))
    if args.write_table:
        chosen, cleared = table_entries(rows, groups, benchmarking.device_name(dev), f"{stem}.json, {prov['date_utc']}")
        write_table(args.write_table, chosen, cleared)
        print(f"table: {args.write_table}: {len(chosen)} entries set, {len(cleared)} groups keep the default")
    return 0


if __name__ == "__main__":
    sys.exit(main())
