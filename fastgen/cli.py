"""The ``fastgen`` command line. ``fastgen bench diffusion`` benchmarks the diffusion ops;
``fastgen generate`` writes one image per seed (:mod:`fastgen.generation`), ``fastgen bench generate``
times it against the diffusers pipeline loop (:mod:`fastgen.generation.bench`); ``fastgen tiles``
says which tile a Triton kernel launches with and why (kernels/tuning.py).

    fastgen bench diffusion [--device cpu|cuda] [--shape 256,3,32,32] [--dtype float32]
                            [--steps 50] [--out benchmarks/results] [--quick] [--no-compile]
                            [--repeats 1] [--label TEXT]

Every comparison runs in one process, fastgen against named references, with speedups relative
to the group's baseline (see :mod:`fastgen.benchmarking` for how time is measured):

* ``add_noise``: fastgen's noising per implementation (eps given, and eps from in-kernel Philox)
  vs eager torch of the same math, ``torch.compile`` of it, and diffusers' ``DDPMScheduler.add_noise``.
* ``sampling_step``: the raw fused op per implementation vs the eager torch chain of a DDIM
  (eta=0) and a DDPM (noise drawn in the op) update, and ``torch.compile`` of that chain.
* scheduler loops: fastgen's DDPM / DDIM / DPM-Solver++ 2M ``step`` vs diffusers' ``step`` of the
  same configuration, ``--steps`` calls with a fixed fake model output; time per step.
* noising + loss: fastgen's ``add_noise`` + ``diffusion_loss`` (forward and backward w.r.t. the
  prediction, eps regenerated from the seed) vs eager torch and ``torch.compile`` of it.

The diffusion-specific cases live here (:func:`diffusion_comparisons`) so that the pytest-benchmark
suites in ``benchmarks/`` time exactly the same callables.
"""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from typing import Callable

import torch

from . import _impl, benchmarking

DEFAULT_SHAPE = (256, 3, 32, 32)  # DDPM on CIFAR-10: batch 256 of 3x32x32
QUICK_SHAPE = (4, 3, 8, 8)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# every drop-in scheduler, by diffusers' class name (fastgen.diffusion.SCHEDULERS, spelled out here so
# that importing the CLI does not import fastgen.diffusion and with it diffusers)
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
              "UniPCMultistepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
              "HeunDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler",
              "KDPM2AncestralDiscreteScheduler", "PNDMScheduler", "LCMScheduler", "EDMEulerScheduler",
              "EDMDPMSolverMultistepScheduler", "FlowMatchEulerDiscreteScheduler")


# schedulers whose default step draws noise (torch.randn on a CPU, as diffusers draws it)
ANCESTRAL = ("DDPMScheduler", "EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LCMScheduler")


def op_impls(op: str, device: torch.device) -> list[tuple[str, str | None]]:
    """(impl, reason it cannot run here or None) for each implementation of ``fastgen.ops.<op>``.

    Triton on CPU only exists under the interpreter, which is a correctness tool, not a contender.
    """
    module = importlib.import_module(f"fastgen.ops.{op}")
    out = []
    for impl in module.IMPLS:
        if impl == "triton" and device.type == "cpu":
            out.append((impl, "Triton runs on CPU only under TRITON_INTERPRET=1, which is not benchmarked"))
        else:
            out.append((impl, _impl.unavailable_reason(impl, device)))
    return out


def _shape_str(shape, dtype) -> str:
    return "x".join(map(str, shape)) + " " + str(dtype).replace("torch.", "")


def _compiled(fn: Callable, *args) -> Callable:
    """torch.compile ``fn`` and run it once on ``args`` so compilation is never timed."""
    compiled = torch.compile(fn)
    compiled(*args)
    return compiled


def _alphas_cumprod(device) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # diffusers' default "linear"
    return torch.cumprod(1.0 - betas, 0).to(torch.float32).to(device)


class DiffusionCase:
    """Tensors shared by all comparisons of one shape / dtype / device."""

    def __init__(self, shape, dtype, device, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.shape, self.dtype, self.device = tuple(shape), dtype, device
        self.x0 = torch.randn(self.shape, generator=g).to(device, dtype)
        self.noise = torch.randn(self.shape, generator=g).to(device, dtype)
        self.model_output = torch.randn(self.shape, generator=g).to(device, dtype)
        self.abar = _alphas_cumprod(device)
        self.t = torch.randint(0, 1000, (self.shape[0],), generator=g).to(device)
        self.rng = torch.tensor([1234, 0], dtype=torch.int64, device=device)  # Philox [seed, offset]
        self.nbytes = self.x0.numel() * self.x0.element_size()
        self.label = _shape_str(self.shape, dtype)


def _per_sample(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.view(-1, *([1] * (ndim - 1)))


def noising(case: DiffusionCase, timing: dict, compile_: bool) -> benchmarking.Comparison:
    from diffusers import DDPMScheduler

    x0, noise, t, abar = case.x0, case.noise, case.t, case.abar
    cmp = benchmarking.Comparison(f"add_noise {case.label}", baseline="eager", device=case.device,
                                  bytes_moved=3 * case.nbytes, **timing)

    def eager(x0, noise, t):
        a = _per_sample(abar[t], x0.dim())
        return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype)

    cmp.add("eager", lambda: eager(x0, noise, t))
    if compile_:
        fn = _compiled(eager, x0, noise, t)
        cmp.add("torch.compile", lambda: fn(x0, noise, t))
    sched = DDPMScheduler()
    cmp.add("diffusers", lambda: sched.add_noise(x0, noise, t))
    from fastgen.ops import add_noise

    for impl, reason in op_impls("add_noise", case.device):
        if reason:
            cmp.skip(f"fastgen[{impl}]", reason)
            continue
        cmp.add(f"fastgen[{impl}]", lambda impl=impl: add_noise(x0, t, abar, noise, impl=impl))
        cmp.add(f"fastgen[{impl}]+philox", lambda impl=impl: add_noise(x0, t, abar, seed=case.rng, impl=impl),
                bytes_moved=2 * case.nbytes, note="eps drawn in the kernel")
    return cmp


def _step_tables(case: DiffusionCase, steps: int):
    """Per-sample DDIM (eta=0) and DDPM (fixed_small) coefficients at the timesteps of ``steps``
    inference steps, as columns of fastgen's coefficient table and as per-sample tensors."""
    m = importlib.import_module("fastgen.ops.sampling_step")
    ratio = 1000 // steps
    ts = torch.arange(steps - 1, -1, -1, device=case.device) * ratio
    a_t = case.abar[ts]
    a_prev = torch.where(ts - ratio >= 0, case.abar[(ts - ratio).clamp(min=0)], torch.ones_like(a_t))
    beta = 1 - a_t / a_prev
    px, pm = a_t.rsqrt(), -(1 - a_t).sqrt() * a_t.rsqrt()
    ddim = torch.zeros(steps, m.NUM_COEFS, device=case.device)
    ddim[:, m.PX], ddim[:, m.PM], ddim[:, m.EM] = px, pm, 1.0
    ddim[:, m.O0], ddim[:, m.OE] = a_prev.sqrt(), (1 - a_prev).sqrt()
    ddpm = torch.zeros(steps, m.NUM_COEFS, device=case.device)
    ddpm[:, m.PX], ddpm[:, m.PM] = px, pm
    ddpm[:, m.O0] = a_prev.sqrt() * beta / (1 - a_t)
    ddpm[:, m.OX] = (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)
    ddpm[:, m.SZ] = (beta * (1 - a_prev) / (1 - a_t)).clamp(min=1e-20).sqrt()
    index = torch.full((case.shape[0],), steps // 2, dtype=torch.int64, device=case.device)
    return m, ddim, ddpm, index


def sampling_ops(case: DiffusionCase, steps: int, timing: dict, compile_: bool) -> list[benchmarking.Comparison]:
    from fastgen.ops import sampling_step

    m, ddim, ddpm, index = _step_tables(case, steps)
    x, mo, nd = case.noise, case.model_output, case.x0.dim()

    def col(table, k):
        return _per_sample(table[index, k], nd)

    def ddim_eager(x, mo):
        xf, mf = x.float(), mo.float()
        x0 = col(ddim, m.PX) * xf + col(ddim, m.PM) * mf
        return (col(ddim, m.O0) * x0 + col(ddim, m.OE) * mf).to(x.dtype)

    def ddpm_eager(x, mo):
        xf, mf = x.float(), mo.float()
        x0 = (col(ddpm, m.PX) * xf + col(ddpm, m.PM) * mf).clamp(-1.0, 1.0)
        z = torch.randn_like(xf)
        return (col(ddpm, m.O0) * x0 + col(ddpm, m.OX) * xf + col(ddpm, m.SZ) * z).to(x.dtype)

    out = []
    # Like with like: the DDPM rows draw z with torch.randn (eager's generator) on both sides; the
    # in-kernel Philox stream is its own row, and so is the generator alone (what bounds the rest).
    for name, eager, table, kwargs in (("ddim eta=0", ddim_eager, ddim, {}),
                                       ("ddpm clip", ddpm_eager, ddpm, {"clip_range": 1.0})):
        noisy = name.startswith("ddpm")
        note = "z: torch.randn, as eager" if noisy else ""
        cmp = benchmarking.Comparison(f"sampling_step[{name}] {case.label}", baseline="eager", device=case.device,
                                      bytes_moved=(4 if noisy else 3) * case.nbytes, **timing)
        cmp.add("eager", lambda eager=eager: eager(x, mo), note=note)
        if compile_:
            fn = _compiled(eager, x, mo)
            cmp.add("torch.compile", lambda fn=fn: fn(x, mo), note=note)
        if noisy:
            cmp.add("torch.randn alone", lambda: torch.randn_like(x, dtype=torch.float32), bytes_moved=case.nbytes,
                    note="the generator alone: no step drawing torch.randn beats eager by more than this row")
        for impl, reason in op_impls("sampling_step", case.device):
            if reason:
                cmp.skip(f"fastgen[{impl}]", reason)
                continue
            if noisy:
                cmp.add(f"fastgen[{impl}]", lambda impl=impl, table=table, kwargs=kwargs:
                        sampling_step(x, mo, table, index, noise=torch.randn_like(x, dtype=torch.float32), impl=impl,
                                      **kwargs), note=note)
                cmp.add(f"fastgen[{impl}]+philox", lambda impl=impl, table=table, kwargs=kwargs:
                        sampling_step(x, mo, table, index, seed=case.rng, impl=impl, **kwargs),
                        bytes_moved=3 * case.nbytes, note="z drawn in the kernel (Philox): another generator")
            else:
                cmp.add(f"fastgen[{impl}]", lambda impl=impl, table=table, kwargs=kwargs:
                        sampling_step(x, mo, table, index, impl=impl, **kwargs))
        out.append(cmp)
    return out


def _scheduler_loop(sched, steps: int, model_output: torch.Tensor, sample: torch.Tensor) -> Callable[[], object]:
    def loop():
        # set_timesteps in every loop resets multistep state; both libraries pay it alike.
        sched.set_timesteps(steps, device=sample.device)
        x = sample
        scale = getattr(sched, "scale_model_input", None)  # flow matching has none
        for t in sched.timesteps:
            if scale is not None:
                scale(x, t)  # a pipeline's per-step scheduler work: scale the input, step
            x = sched.step(model_output, t, x).prev_sample
        return x
    return loop


def scheduler_loops(case: DiffusionCase, steps: int, timing: dict, names=SCHEDULERS) -> list[benchmarking.Comparison]:
    """fastgen.diffusion.<name> vs diffusers.<name>, default configuration, ``steps``-step loops of
    ``scale_model_input`` + ``step`` with a fixed model output (a pipeline's scheduler work).

    Rows report seconds per step (the loop's median / steps; two-stage solvers such as Heun and
    KDPM2 make 2 * steps - 1 calls per loop)."""
    import diffusers

    fg = importlib.import_module("fastgen.diffusion")
    out = []
    for name in names:
        cmp = benchmarking.Comparison(f"{name}.step x{steps} {case.label}", baseline="diffusers",
                                      device=case.device, **timing)
        cmp.add("diffusers", _scheduler_loop(getattr(diffusers, name)(), steps, case.model_output, case.noise))
        cls = getattr(fg, name, None)
        if cls is None:
            cmp.skip("fastgen", f"fastgen.diffusion.{name} is not available (not implemented yet)")
        else:
            cmp.add("fastgen", _scheduler_loop(cls(), steps, case.model_output, case.noise))
            if case.device.type == "cpu" and name in ANCESTRAL:
                # Without a generator a CPU step draws torch.randn by default, so torch.manual_seed
                # reproduces diffusers number for number; that draw is most of the step. The
                # in-kernel Philox source (the accelerators' default) is the fast option.
                fast = cls()
                fast.cpu_noise = "philox"
                cmp.add("fastgen[cpu_noise=philox]", _scheduler_loop(fast, steps, case.model_output, case.noise),
                        note="noise drawn in the kernel, not torch.randn")
        out.append(cmp)
    return out


def per_step(rows: list[benchmarking.Row], steps: int) -> list[benchmarking.Row]:
    """Turn loop times into per-step times (speedups are unchanged by the common factor)."""
    for r in rows:
        r.median_s, r.q20_s, r.q80_s = r.median_s / steps, r.q20_s / steps, r.q80_s / steps
        if not r.note.startswith("skipped"):
            r.note = (r.note + "; " if r.note else "") + "per step, loop incl. set_timesteps"
    return rows


def noising_loss(case: DiffusionCase, timing: dict, compile_: bool,
                 reference: bool = True) -> benchmarking.Comparison:
    """Training objective without a model: x_t from x0 and eps, MSE(prediction, eps), backward
    w.r.t. the prediction. Minimum traffic: x0 read, x_t written, prediction read, gradient written.
    ``reference=False`` leaves out fastgen's pure-torch path (seconds per call: Philox in torch ops)."""
    x0, t, abar = case.x0, case.t, case.abar
    pred = case.model_output.clone().requires_grad_(True)
    cmp = benchmarking.Comparison(f"add_noise+diffusion_loss fwd+bwd {case.label}", baseline="eager",
                                  device=case.device, bytes_moved=4 * case.nbytes, **timing)

    def eager_forward(x0, pred, t):
        a = _per_sample(abar[t], x0.dim())
        eps = torch.randn_like(x0)
        xt = (a.sqrt() * x0.float() + (1 - a).sqrt() * eps.float()).to(x0.dtype)
        return xt, torch.nn.functional.mse_loss(pred.float(), eps.float())

    def run(forward):
        def step():
            pred.grad = None
            _, loss = forward(x0, pred, t)
            loss.backward()
        return step

    cmp.add("eager", run(eager_forward))
    if compile_:
        compiled = torch.compile(eager_forward)
        run(compiled)()
        cmp.add("torch.compile", run(compiled))
    try:
        from fastgen.ops import add_noise, diffusion_loss
    except ImportError as e:
        cmp.skip("fastgen", f"fastgen.ops.diffusion_loss is not available ({e})")
        return cmp
    for impl, reason in op_impls("diffusion_loss", case.device):
        if impl == "reference" and not reference:
            continue
        noise_reason = dict(op_impls("add_noise", case.device)).get(impl, "add_noise has no such impl")
        if reason or noise_reason:
            cmp.skip(f"fastgen[{impl}]", reason or noise_reason)
            continue

        def fused(x0, pred, t, impl=impl):
            xt = add_noise(x0, t, abar, seed=case.rng, impl=impl)
            return xt, diffusion_loss(pred, x0, t, abar, seed=case.rng, impl=impl)
        cmp.add(f"fastgen[{impl}]", run(fused), note="eps regenerated from the seed")
    return cmp


def diffusion_comparisons(device, shape=DEFAULT_SHAPE, dtype=torch.float32, steps: int = 50, *,
                          timing: dict | None = None, compile_: bool = True, copy_nbytes: int | None = None,
                          repeats: int = 1, log=print):
    """Run every diffusion comparison; returns (rows with speedups filled in, copy GB/s)."""
    device = torch.device(device)
    timing = timing or {}
    case = DiffusionCase(shape, dtype, device)
    log(f"measuring the {device} copy bandwidth ...")
    copy_gbps = benchmarking.measure_copy_bandwidth(device, copy_nbytes, **timing)
    log(f"copy bandwidth: {copy_gbps:.1f} GB/s (read + write)")
    rows = []
    log("add_noise ...")
    rows += noising(case, timing, compile_).run(copy_gbps, repeats)
    log("sampling_step ...")
    for cmp in sampling_ops(case, steps, timing, compile_):
        rows += cmp.run(copy_gbps, repeats)
    log(f"scheduler step loops ({steps} steps) ...")
    for cmp in scheduler_loops(case, steps, timing):
        rows += per_step(cmp.run(repeats=repeats), steps)
    log("noising + loss ...")
    rows += noising_loss(case, timing, compile_).run(copy_gbps, repeats)
    return rows, copy_gbps


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape must be comma-separated integers like 256,3,32,32, got {text!r}")
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"--shape needs a batch and at least one more positive dim, got {text!r}")
    return shape


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgen", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run benchmarks").add_subparsers(dest="suite", required=True)
    p = bench.add_parser("diffusion", help="noising, sampling steps, schedulers, training loss")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", type=_parse_shape, default=None,
                   help=f"tensor shape, default {','.join(map(str, DEFAULT_SHAPE))} (DDPM CIFAR-10)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    p.add_argument("--steps", type=int, default=None, help="inference steps of the scheduler loops (default 50)")
    p.add_argument("--out", default="benchmarks/results", help="directory for the CSV/JSON results")
    p.add_argument("--label", default="", help="free-text description of the machine, stored in the results")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: shape {','.join(map(str, QUICK_SHAPE))}, 5 steps, short timing, no torch.compile")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile references")
    p.add_argument("--repeats", type=int, default=1,
                   help="time each group's contenders round-robin this many times, keep the median (shared machines)")
    g = bench.add_parser("generate", help="fastgen generate's images/s vs the diffusers pipeline loop")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--model", choices=("tiny", "ddpm-cifar10"), default=None,
                   help="U-Net config with random weights: tiny (CPU default) or google/ddpm-cifar10-32's (GPU default)")
    g.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 16 on CPU")
    g.add_argument("--steps", type=int, default=None, help="DDIM steps, default 50 on CUDA, 10 on CPU")
    g.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default bfloat16 on CUDA, float32 on CPU")
    g.add_argument("--repeats", type=int, default=3, help="round-robin repeats, the median kept")
    g.add_argument("--compile", action="store_true", help="also time fastgen generate --compile")
    g.add_argument("--out", default="benchmarks/results", help="directory for the CSV/JSON results")
    g.add_argument("--label", default="", help="free-text description of the machine, stored in the results")
    _add_generate_parser(sub)
    t = sub.add_parser("tiles", help="which tile each Triton kernel launches with, and why (kernels/tuning.py)")
    t.add_argument("kernel", nargs="*", help="kernel names (default: all); see fastgen.kernels.tuning.KERNELS")
    t.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    t.add_argument("--size", type=int, default=None,
                   help="what selects the tile: elements per sample (elementwise), per (sample, group) (GroupNorm), "
                        "the head dim (attention), D (vq_nearest); default a DDPM CIFAR-10 U-Net size per family")
    t.add_argument("--device", default=None,
                   help="cuda, cuda:1, cpu, or a GPU as the table names it (\"NVIDIA H200\", sm_90); default the current one")
    from .metrics.cli import add_metrics_parser
    add_metrics_parser(sub)  # `fastgen metrics fid|stats` (fastgen.metrics.cli); sets args.handler
    from .train.cli import add_train_parser
    add_train_parser(sub)  # `fastgen train diffusion|gan2d` (fastgen.train.cli); sets args.handler
    return parser


def _add_generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate one image per seed from a model, on one or many processes",
                       description="Generate one image per seed: DIR/{seed:06d}.png or npz shards, plus "
                                   "DIR/manifest.json. Resumable; run under torchrun to shard the seeds over "
                                   "processes (torchrun --nproc_per_node=N -m fastgen generate ...).")
    p.add_argument("model", metavar="MODEL",
                   help="a diffusers pipeline folder, a UNet2DModel folder or a fastgen training checkpoint")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; resumed if it is one of "
                   "the same images)")
    p.add_argument("--seeds", required=True, help="inclusive ranges and single seeds, e.g. 0-49999 or 0-9,100")
    p.add_argument("--batch-size", type=int, default=256, help="images per model call on each process (default 256)")
    p.add_argument("--scheduler", default=None, metavar="NAME",
                   help="a fastgen scheduler by diffusers class name or alias (ddim, ddpm, dpm++2m, euler, ...); "
                        "default: the model folder's")
    p.add_argument("--steps", type=int, default=50, help="inference steps (default 50)")
    p.add_argument("--format", choices=("png", "npz"), default="png", dest="fmt")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default cuda where available")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-accelerate", action="store_true", help="leave the model's layers as they are")
    p.add_argument("--no-cuda-graph", action="store_true", help="never capture the sampling loop in a CUDA graph")
    p.add_argument("--class-labels", default=None, metavar="L",
                   help="class-conditional models: one label, or a list (seed s gets labels[s %% len]); "
                        "default seed %% num_classes")
    p.add_argument("--subdirs", action="store_true", help="PNGs in DIR/{seed//1000*1000:06d}/ folders (EDM's layout)")
    p.add_argument("--shard-size", type=int, default=1000, help="npz: seeds per shard block (default 1000)")
    p.add_argument("--model-config", default=None, metavar="FILE",
                   help="checkpoints: the architecture JSON (default fastgen_model.json beside the checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_generate(args, argv: list[str]) -> int:
    from .generation import generate, parse_seeds

    try:
        seeds = parse_seeds(args.seeds)
        if args.subdirs and args.fmt != "png":
            raise ValueError("--subdirs applies to --format png only")
        generate(args.model, args.out, seeds, batch_size=args.batch_size, scheduler=args.scheduler, steps=args.steps,
                 fmt=args.fmt, device=args.device, dtype=args.dtype, compile_=args.compile,
                 accelerate=not args.no_accelerate, cuda_graph=not args.no_cuda_graph, class_labels=args.class_labels,
                 subdirs=args.subdirs, shard_size=args.shard_size, model_config=args.model_config,
                 progress=not args.no_progress, command=shlex.join(["fastgen"] + argv))
    except ValueError as exc:
        print(f"fastgen generate: {exc}", file=sys.stderr)
        return 2
    return 0


def bench_generate(args, argv: list[str]) -> int:
    from .generation.bench import run

    return run(args, argv)


def bench_diffusion(args, argv: list[str]) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("fastgen bench diffusion: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    shape = args.shape or (QUICK_SHAPE if args.quick else DEFAULT_SHAPE)
    steps = args.steps or (5 if args.quick else 50)
    if not 1 <= steps <= 1000:
        print(f"fastgen bench diffusion: --steps must be in [1, 1000], got {steps}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print(f"fastgen bench diffusion: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    timing = {"min_run_time": 0.02, "warmup_ms": 2.0, "rep_ms": 10.0} if args.quick else {}
    rows, copy_gbps = diffusion_comparisons(args.device, shape, DTYPES[args.dtype], steps, timing=timing,
                                            compile_=not (args.quick or args.no_compile),
                                            copy_nbytes=(8 << 20) if args.quick else None, repeats=args.repeats)
    print()
    benchmarking.print_table(rows)
    prov = benchmarking.provenance(args.device, label=args.label, command=shlex.join(["fastgen"] + argv))
    prov.update(copy_gbps=copy_gbps, shape=list(shape), dtype=args.dtype, steps=steps, quick=args.quick,
                repeats=args.repeats)
    stem = f"diffusion_{benchmarking.device_slug(args.device)}" + ("_quick" if args.quick else "")
    paths = benchmarking.write_results(rows, prov, args.out, stem)
    print(f"\nresults: {paths[0]}, {paths[1]}")
    return 0


def explain_tiles(args) -> int:
    """Print tuning.explain's line per kernel: the config and which rule chose it."""
    from .kernels import tuning

    # per family, a size of the DDPM CIFAR-10 U-Net: a 3x32x32 sample, a 4x32x32 group, one 256-wide head
    sizes = {"elementwise": 3072, "group_norm": 4096, "group_norm_cl": 4096, "attention": 256, "vq_nearest": 64}
    try:
        for kernel in args.kernel or list(tuning.KERNELS):
            family = tuning.KERNELS.get(kernel)
            size = args.size if args.size is not None else sizes[family.name] if family else 1
            print(tuning.explain(kernel, args.dtype, size, device=args.device))
    except ValueError as exc:
        print(f"fastgen tiles: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.command == "bench" and args.suite == "diffusion":
        return bench_diffusion(args, argv)
    if args.command == "bench" and args.suite == "generate":
        return bench_generate(args, argv)
    if args.command == "generate":
        return run_generate(args, argv)
    if args.command == "tiles":
        return explain_tiles(args)
    if args.command == "metrics":
        return args.handler(args, argv)
    if args.command == "train":
        return args.handler(args, argv)
    raise AssertionError(args)  # argparse rejects anything else


if __name__ == "__main__":
    sys.exit(main())
