"""Compile every Triton kernel launch of fastgen's ops for a GPU, without a GPU: registers, shared
memory and spills per launch configuration.

    python benchmarks/triton_compile_report.py [--arch 90 80] [--quick | --candidates] [--out benchmarks/results]
                                               [--label TEXT] [--no-write]

``--candidates`` compiles, instead of the ops' launches, every tile candidate of kernels/tuning.py
(each family's candidates at the sizes that select them, float32 and bfloat16; see
benchmarks/triton_compile_candidates.py): a candidate that fails here must leave tuning.py's lists.

The interpreter (TRITON_INTERPRET=1, the CPU test tier) runs a kernel's Python but never lowers it:
a type error in a loop-carried value, a layout the backend cannot lower, a tile that needs more
shared memory than an SM has, or a tile that spills registers to local memory all pass there and
fail (or crawl) on the GPU. Triton's compiler does not need a GPU for any of that: ``triton.compile``
with an explicit ``GPUTarget`` lowers to PTX and runs the ptxas that ships in the triton wheel.

How the launches are found: the public ops run with ``impl="triton"`` on small CPU tensors (the
implementation check is patched to allow it) while every ``@triton.jit`` kernel in ``fastgen.kernels``
is replaced by a recorder, so what is compiled is exactly what the ops would launch — the same
arguments, constexprs and num_warps — for the shapes listed in :func:`cases`. Each distinct
launch is then bound with Triton's own binder (the runtime's specialisation: ints equal to 1,
16-byte alignment) and compiled per architecture. ``ptxas -v`` (also in the wheel) on the PTX gives
registers, stack frame and spill stores / loads per thread; the kernel's dynamic shared memory is
checked against the architecture's per-block limit. A stack frame without spills is benign (e.g.
the local array of sin/cos's argument reduction).

Exit status 1 if any launch fails to compile, needs more shared memory than the architecture has,
or spills more than ``--max-spill-bytes`` (stores + loads per thread, default 64: a few bytes
around a libdevice sin / cos in a memory-bound kernel cost nothing measurable; the kilobytes an
oversized attention tile spills cost most of its speed). Results: a table on stdout and
``<out>/triton_compile_sm<arch...>.{json,csv}`` (``_quick`` with --quick) with provenance.
Must run WITHOUT TRITON_INTERPRET (it is unset here before triton is imported).
"""
import os

os.environ.pop("TRITON_INTERPRET", None)  # the compiler, not the interpreter: before triton is imported

import argparse  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from unittest import mock  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

import fastgen  # noqa: E402
from fastgen import _impl, benchmarking, ops  # noqa: E402
from fastgen._io import atomic_write_text  # noqa: E402
from fastgen.ops.bias_act import ACTIVATIONS as BIAS_ACT_ACTIVATIONS  # noqa: E402

# Dynamic shared memory one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin): A100 and H100.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
COLUMNS = ["kernel", "case", "arch", "num_warps", "constexprs", "registers", "stack_bytes", "spill_store_bytes", "spill_load_bytes", "shared_bytes",
           "shared_limit", "compile_seconds", "ok", "error"]


class Launch:
    """One recorded launch: the kernel, its arguments and a label of the op call that made it."""

    def __init__(self, fn: JITFunction, args: tuple, kwargs: dict, case: str):
        self.fn, self.args, self.kwargs, self.case = fn, args, kwargs, case

    @property
    def name(self) -> str:
        return self.fn.fn.__name__

    def constexprs(self) -> dict:
        names = [p.name for p in self.fn.params]
        bound = dict(zip(names, self.args)) | {k: v for k, v in self.kwargs.items() if k in names}
        return {p.name: bound[p.name] for p in self.fn.params if p.is_constexpr}

    def key(self) -> tuple:
        """Launches that compile to the same binary: kernel, constexprs, options, argument dtypes."""
        dtypes = tuple(str(a.dtype) if isinstance(a, torch.Tensor) else type(a).__name__ for a in self.args)
        options = tuple(sorted((k, v) for k, v in self.kwargs.items() if k not in self.constexprs()))
        return self.name, tuple(sorted(self.constexprs().items())), options, dtypes


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` appends a :class:`Launch` and runs nothing."""

    def __init__(self, fn: JITFunction, sink: list, case: list):
        self.fn, self.sink, self.case = fn, sink, case

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.sink.append(Launch(self.fn, args, kwargs, self.case[0]))


def _launched_kernels():
    """(module, attribute name, JITFunction) for every launchable kernel of fastgen.kernels."""
    import importlib
    import pkgutil

    import fastgen.kernels as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"fastgen.kernels.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, JITFunction) and name.endswith("_kernel"):
                yield module, name, obj


def cases(quick: bool):
    """(label, thunk) pairs: public op calls whose Triton launches are compiled. Small CPU tensors:
    nothing runs, but shapes pick block sizes, so they are chosen to reach every code path."""
    dtypes = (torch.float32, torch.bfloat16) if quick else (torch.float32, torch.float16, torch.bfloat16)
    abar = torch.linspace(0.999, 0.01, 1000)
    t = torch.randint(0, 1000, (4,))
    for dtype in dtypes:
        name = str(dtype).replace("torch.", "")
        x = torch.randn(4, 3, 32, 32).to(dtype)
        yield f"add_noise {name}", lambda x=x: (ops.add_noise(x, t, abar, torch.randn_like(x), impl="triton"),
                                                ops.add_noise(x, t, abar, seed=1, impl="triton"))

        def loss(x=x):
            for noise, seed in ((torch.randn_like(x), None), (None, 3)):
                for prediction in ("epsilon", "sample", "v_prediction"):
                    pred = torch.randn_like(x, requires_grad=True)
                    x0 = x.clone().requires_grad_(True)
                    ops.diffusion_loss(pred, x0, t, abar, noise, seed=seed, prediction_type=prediction,
                                       impl="triton").backward()
        yield f"diffusion_loss {name}", loss

        def step(x=x):
            coefs, index = torch.rand(10, ops.NUM_COEFS), torch.randint(0, 10, (4,))
            ops.sampling_step(x, torch.randn_like(x), coefs, index, impl="triton")
            ops.sampling_step(x, torch.randn_like(x), coefs, index, history=(torch.randn_like(x, dtype=torch.float32),),
                              seed=2, clip_range=1.0, return_state=True, impl="triton")
            ops.sampling_step(x, torch.randn_like(x), coefs, index, noise=torch.randn_like(x), impl="triton")
            # the most operands: four history tensors (the sample's dtype and float32) and the state
            history = tuple(torch.randn_like(x, dtype=torch.float32 if i % 2 else x.dtype) for i in range(4))
            ops.sampling_step(x, torch.randn_like(x), coefs, index, history=history, noise=torch.randn_like(x),
                              return_state=True, impl="triton")
            ops.sampling_step(x, torch.randn_like(x), coefs, index, history=history, seed=3, clip_range=1.0,
                              return_state=True, impl="triton")
        yield f"sampling_step {name}", step

        def penalty(x=x):
            ops.interpolate(x, torch.randn_like(x), torch.rand(4), impl="triton")
            ops.interpolate(x, torch.randn_like(x), seed=5, impl="triton")
            g = torch.randn_like(x, requires_grad=True)
            ops.penalty_from_grad(g, "wgan-gp", 10.0, impl="triton").backward()
        yield f"gradient_penalty {name}", penalty

        # GroupNorm: U-Net shapes (C / G = 4 .. 16 channels per group; 4 x 32 x 32 is the largest
        # single-tile group), a ragged group (C / G = 3), a group that streams through tiles
        # (10 x 64 x 64, Stable Diffusion's 320 channels), NCHW and channels_last, every option on and off.
        # channels_last runs its unsplit kernels (PHASE 0: a training batch, forced here by a split
        # threshold of 0) and the split pair (PHASE 1 / 2: batch 1, e.g. sampling one image), plus
        # awkward channels per group (1 and 40: one lane per group, a 64-lane row 40 wide). "NCHW split":
        # NCHW at batch 1 under the module's own SPLIT_MIN_PROGRAMS, so the split pair (PHASE 1 / 2)
        # compiles with the chunk count and K_BLOCK a sampler's launch gets (Cg = 10, 1 and 40).
        unet = (((2, 128, 32, 32), 32), ((2, 512, 8, 8), 32), ((2, 96, 7, 7), 32), ((2, 320, 64, 64), 32))
        gn_cases = [(shape, groups, layout) for shape, groups in unet
                    for layout in ("NCHW", "channels_last", "channels_last split")]
        gn_cases += [((2, 512, 4, 4), 32, "channels_last"), ((1, 320, 64, 64), 32, "channels_last split"),
                     ((1, 32, 24, 24), 32, "channels_last split"), ((2, 80, 24, 24), 2, "channels_last"),
                     ((1, 80, 24, 24), 2, "channels_last split"), ((1, 320, 64, 64), 32, "NCHW split"),
                     ((1, 32, 128, 128), 32, "NCHW split"), ((1, 80, 24, 24), 2, "NCHW split")]
        if quick:  # every NCHW shape; channels_last's single-tile, streaming and split kernels
            gn_cases = [case for case in gn_cases if case[2] == "NCHW" or (case[0], case[2]) in (
                ((2, 512, 8, 8), "channels_last"), ((2, 128, 32, 32), "channels_last"),
                ((1, 320, 64, 64), "channels_last split"), ((1, 320, 64, 64), "NCHW split"))]
        for shape, groups, layout in gn_cases:
            def gn(shape=shape, groups=groups, layout=layout, dtype=dtype):
                from fastgen.kernels import group_norm as gn_kernel

                x = torch.randn(shape).to(dtype)
                x = x.to(memory_format=torch.channels_last) if layout.startswith("channels_last") else x
                B, C = shape[:2]
                full = dict(emb=torch.randn(B, C).to(dtype), scale=torch.randn(B, C).to(dtype),
                            shift=torch.randn(B, C).to(dtype), activation="silu")
                threshold = {"NCHW split": gn_kernel.SPLIT_MIN_PROGRAMS, "channels_last split": 1 << 30}.get(layout, 0)
                with mock.patch.object(gn_kernel, "SPLIT_MIN_PROGRAMS", threshold):
                    for options in ({}, full):
                        xg = x.clone().requires_grad_(True)
                        w, b = torch.randn(C, dtype=dtype), torch.randn(C, dtype=dtype)
                        y = ops.group_norm(xg, groups, w if options else None, b if options else None,
                                           **options, impl="triton")
                        y.backward(torch.randn_like(y))  # a dense upstream gradient, as in training
            yield f"group_norm {'x'.join(map(str, shape))} G{groups} {layout} {name}", gn

        # Attention at the U-Net's head dims (diffusers' DDPM CIFAR-10: one head of 256 at 16x16).
        for head_dim in ((64, 256) if quick else (32, 64, 128, 256)):
            def attn(head_dim=head_dim, dtype=dtype):
                q, k, v = (torch.randn(2, 1, 256, head_dim).to(dtype).requires_grad_(True) for _ in range(3))
                out = ops.attention(q, k, v, impl="triton")
                out.backward(torch.randn_like(out))
            yield f"attention D{head_dim} {name}", attn

        # vq_nearest: D=64 in one D slice (the VQ-VAE shape), D=129 through the D loop with a masked slice
        for dim in (64, 129):
            def vq(dim=dim, dtype=dtype):
                ops.vq_nearest(torch.randn(300, dim).to(dtype), torch.randn(200, dim).to(dtype), impl="triton")
            yield f"vq_nearest D{dim} {name}", vq

        # bias_act: StyleGAN2's conv activation (rows launch) and mapping-network linear (flat
        # launch); the activations with the most transcendentals; the clamp of its fp16 layers.
        def bias_act(dtype=dtype):
            for shape in ((4, 64, 16, 16), (4, 512)):
                for act in (("lrelu",) if quick else tuple(BIAS_ACT_ACTIVATIONS)):
                    x = torch.randn(shape).to(dtype).requires_grad_(True)
                    b = torch.randn(shape[1]).to(dtype).requires_grad_(True)
                    y = ops.bias_act(x, b, 1, act, clamp=256.0, impl="triton")
                    y.backward(torch.randn_like(y))
        yield f"bias_act {name}", bias_act

        # upfirdn2d: StyleGAN2's 2x upsampling (4-tap separable filter) and 2x downsampling, a
        # 2-D filter with anisotropic factors; forward and backward (the adjoint is another launch).
        def upfirdn(dtype=dtype):
            fir = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
            for shape, f, up, down, pad in (((4, 64, 16, 16), fir, 2, 1, [2, 1, 2, 1]),
                                            ((4, 64, 32, 32), fir, 1, 2, [1, 1, 1, 1]),
                                            ((2, 8, 15, 9), torch.randn(3, 5), (2, 1), (1, 3), [1, 2, 0, 3])):
                x = torch.randn(shape).to(dtype).requires_grad_(True)
                y = ops.upfirdn2d(x, f, up, down, pad, impl="triton")
                y.backward(torch.randn_like(y))
        yield f"upfirdn2d {name}", upfirdn


def record(quick: bool, case_list=None) -> list[Launch]:
    """Run :func:`cases` (or ``case_list``'s (label, thunk) pairs) with recorders in place of the
    kernels; distinct launches, first seen first."""
    sink, case = [], [""]
    kernels = list(_launched_kernels())
    originals = [(m, n, getattr(m, n)) for m, n, _ in kernels]
    available = _impl.unavailable_reason

    def allow_triton(impl, device):
        return None if impl == "triton" else available(impl, device)

    try:
        for module, name, fn in kernels:
            setattr(module, name, _Recorder(fn, sink, case))
        with mock.patch.object(_impl, "unavailable_reason", allow_triton):
            for label, thunk in (cases(quick) if case_list is None else case_list):
                case[0] = label
                thunk()
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)
    distinct = {}
    for launch in sink:
        distinct.setdefault(launch.key(), launch)
    return list(distinct.values())


def compile_launch(launch: Launch, arch: int) -> dict:
    """Compile one launch for sm_<arch>; its resource usage, or the error."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    fn = launch.fn
    row = {"kernel": launch.name, "case": launch.case, "arch": arch, "num_warps": launch.kwargs.get("num_warps", 4),
           "constexprs": json.dumps({k: v for k, v in launch.constexprs().items()}, default=str),
           "registers": None, "stack_bytes": None, "spill_store_bytes": None, "spill_load_bytes": None,
           "shared_bytes": None, "shared_limit": SHARED_LIMIT.get(arch),
           "compile_seconds": None, "ok": False, "error": ""}
    start = time.perf_counter()
    try:
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*launch.args, **launch.kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound, specialization, options)
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    except Exception as exc:  # a failure is the finding: recorded, not raised
        row["error"] = f"{type(exc).__name__}: {_first_error_line(str(exc))}"
        return row
    row["compile_seconds"] = round(time.perf_counter() - start, 2)
    row["shared_bytes"] = int(kernel.metadata.shared)
    row.update(_resource_usage(kernel.asm["ptx"], arch))
    problems = []
    if row["shared_limit"] is not None and row["shared_bytes"] > row["shared_limit"]:
        problems.append(f"needs {row['shared_bytes']} B of shared memory, sm_{arch} allows {row['shared_limit']}")
    spilled = row["spill_store_bytes"] + row["spill_load_bytes"]
    if spilled:
        problems.append(f"spills: {row['spill_store_bytes']} B stores, {row['spill_load_bytes']} B loads per thread")
    row["error"] = "; ".join(problems)
    row["ok"] = not problems or (len(problems) == 1 and spilled <= MAX_SPILL_BYTES[0])
    return row


MAX_SPILL_BYTES = [64]


def _first_error_line(text: str) -> str:
    """The line of a compiler message that says what went wrong (ptxas errors carry the whole PTX)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "fatal" in line or "error" in line.lower():
            return line[:300]
    return lines[-1][:300] if lines else ""


def _resource_usage(ptx: str, arch: int) -> dict:
    """Registers, stack frame and spill traffic per thread: ptxas -v on the kernel's PTX (the ptxas
    Triton itself runs for ``arch``)."""
    target = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1).rstrip(",")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        done = subprocess.run([get_ptxas(arch).path, "-v", f"-arch={target}", path, "-o", os.path.join(tmp, "kernel.cubin")],
                              capture_output=True, text=True, check=True)
    text = done.stdout + done.stderr
    found = {key: re.search(pattern, text) for key, pattern in (
        ("registers", r"Used (\d+) registers"), ("stack_bytes", r"(\d+) bytes stack frame"),
        ("spill_store_bytes", r"(\d+) bytes spill stores"), ("spill_load_bytes", r"(\d+) bytes spill loads"))}
    if any(m is None for m in found.values()):
        raise RuntimeError(f"unexpected ptxas -v output:\n{text}")
    return {key: int(m.group(1)) for key, m in found.items()}


def format_table(rows: list[dict]) -> str:
    header = ("kernel", "case", "sm", "warps", "regs", "stack B", "spill st/ld B", "shared B", "status")
    lines = [header] + [(r["kernel"], r["case"], str(r["arch"]), str(r["num_warps"]), str(r["registers"]),
                         str(r["stack_bytes"]), f"{r['spill_store_bytes']}/{r['spill_load_bytes']}", str(r["shared_bytes"]), "ok" if r["ok"] and not r["error"]
                         else ("ok (" + r["error"] + ")" if r["ok"] else "FAIL: " + r["error"])) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def write(rows: list[dict], prov: dict, out_dir: str, stem: str) -> tuple[str, str]:
    text_json = json.dumps({"provenance": prov, "rows": rows}, indent=2) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    os.makedirs(out_dir, exist_ok=True)
    paths = os.path.join(out_dir, stem + ".json"), os.path.join(out_dir, stem + ".csv")
    atomic_write_text(paths[0], text_json)
    atomic_write_text(paths[1], buf.getvalue())
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities, e.g. 90 80")
    parser.add_argument("--quick", action="store_true", help="fewer dtypes and shapes (the CI test)")
    parser.add_argument("--candidates", action="store_true",
                        help="compile every tile candidate of kernels/tuning.py instead of the ops' launches")
    parser.add_argument("--max-spill-bytes", type=int, default=64,
                        help="spill stores + loads per thread above which a launch fails")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    unknown = [a for a in args.arch if a not in SHARED_LIMIT]
    if unknown:
        parser.error(f"--arch must be among {sorted(SHARED_LIMIT)}, got {unknown}")
    if args.quick and args.candidates:
        parser.error("--quick and --candidates are separate reports; pass one")
    MAX_SPILL_BYTES[0] = args.max_spill_bytes
    torch.manual_seed(0)
    if args.candidates:
        from triton_compile_candidates import candidate_cases, check_forced

        case_list = list(candidate_cases())
        launches = record(False, case_list)
        check_forced(launches)  # every candidate really launched with its config
    else:
        launches = record(args.quick)
    print(f"{len(launches)} distinct launches; compiling for sm_{', sm_'.join(map(str, args.arch))} ...", flush=True)
    rows = [compile_launch(launch, arch) for arch in args.arch for launch in launches]
    print(format_table(rows))
    failed = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} compiled within limits" + (f"; {len(failed)} failed" if failed else ""))
    if not args.no_write:
        argv = sys.argv[1:] if argv is None else argv
        prov = benchmarking.provenance("cpu", label=args.label, command=shlex.join(
            ["python", "benchmarks/triton_compile_report.py"] + list(argv)))
        prov.update(triton=triton.__version__, fastgen=fastgen.__version__, targets=[f"sm_{a}" for a in args.arch])
        stem = ("triton_compile_candidates_sm" if args.candidates else "triton_compile_sm") + "_sm".join(
            map(str, args.arch)) + ("_quick" if args.quick else "")
        print("results: " + ", ".join(write(rows, prov, args.out, stem)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
