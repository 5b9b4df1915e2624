"""The DDPM CIFAR-10 U-Net: fastgen's ``UNet.ddpm_cifar10()`` against diffusers' ``UNet2DModel``.

    python benchmarks/run_unet.py [--device cpu|cuda] [--batch B] [--compile auto|on|off] [--repeats N]
                                  [--threads N] [--out benchmarks/results] [--label TEXT] [--quick]

Both models have the same architecture (35.7M parameters) and the same weights: the diffusers
model is built locally from google/ddpm-cifar10-32's config with seeded random weights (nothing is
downloaded) and fastgen's is ``UNet.from_diffusers`` of it. Timed in one process, round-robin:

* forward, inference mode, float32 and bfloat16 (weights and input cast), eager and
  ``torch.compile`` (default backend; a compile that fails is recorded with its reason);
* a training step at float32: the textbook step (randn eps, diffusers' ``add_noise``, MSE,
  backward, clip at 1, AdamW) with each model, and fastgen's ``DiffusionTrainer.train_step``
  (fused noising + loss, same clip and optimizer, no EMA) with fastgen's model;
* sampling: 50-step DDIM (eta 0) and 1000-step DDPM; baseline diffusers' model and scheduler in
  the loop its pipelines run, against fastgen's model and scheduler in
  :func:`fastgen.diffusion.sample` (CUDA-graph captured on a GPU).

Speedups are ``baseline_time / time`` per group (baseline: diffusers); the notes give images/s.
Defaults: on a GPU batch 256, compile on, DDIM 50 and DDPM 1000; on a CPU batch 4, compile off
(inductor needs minutes for this model on a small CPU: ``--compile on`` to try), DDIM with 3 steps
and no DDPM run. ``--quick``: batch 2, one dtype, 2 DDIM steps, short timing; for smoke tests.
Results: ``<out>/unet_<device>[_quick].{csv,json}`` with provenance.
"""
import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F

from fastgen import benchmarking
from fastgen.diffusion import sample
from fastgen.diffusion.scheduling_ddim import DDIMScheduler
from fastgen.diffusion.scheduling_ddpm import DDPMScheduler
from fastgen.diffusion.trainer import DiffusionTrainer
from fastgen.models import UNet
from fastgen.models.unet_diffusers import DDPM_CIFAR10_DIFFUSERS_CONFIG

DDPM_CIFAR10 = DDPM_CIFAR10_DIFFUSERS_CONFIG
BASELINE = "diffusers"


def build_models(device: torch.device):
    """(diffusers UNet2DModel, fastgen UNet) with identical seeded weights, eval mode, on ``device``."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    ref = UNet2DModel(**DDPM_CIFAR10).to(device).eval()
    ours = UNet.from_diffusers(ref).eval()
    with torch.no_grad():  # the same function, checked once: a ratio between different models means nothing
        x, t = torch.randn(2, 3, 32, 32, device=device), torch.tensor([10, 500], device=device)
        err = (ours(x, t) - ref(x, t).sample).abs().max().item()
    if err > 1e-3:
        raise RuntimeError(f"fastgen's UNet and diffusers' disagree (max |diff| {err:.3g}): not the same model")
    return ref, ours


def forward_fn(model, x, t):
    def run():
        with torch.inference_mode():
            out = model(x, t)
        return out.sample if hasattr(out, "sample") else out
    return run


def add_forward(cmp, name, model, x, t, compile_mode: str, device: torch.device):
    cmp.add(f"{name} eager", forward_fn(model, x, t))
    if compile_mode == "off":
        cmp.skip(f"{name} torch.compile", "compile off (on a CPU inductor needs minutes for this model; --compile on)")
        return
    try:
        compiled = torch.compile(model)
        forward_fn(compiled, x, t)()  # compile outside the timing
        cmp.add(f"{name} torch.compile", forward_fn(compiled, x, t))
    except Exception as e:  # noqa: BLE001 - a failed compile is a result to record, not a crash
        cmp.skip(f"{name} torch.compile", f"compile failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")


def forward_comparisons(ref, ours, device, batch, dtypes, compile_mode, timing) -> list[benchmarking.Comparison]:
    out = []
    for dtype in dtypes:
        r = ref if dtype == torch.float32 else copy.deepcopy(ref).to(dtype)
        o = ours if dtype == torch.float32 else copy.deepcopy(ours).to(dtype)
        x = torch.randn(batch, 3, 32, 32, device=device, dtype=dtype)
        t = torch.randint(0, 1000, (batch,), device=device)
        cmp = benchmarking.Comparison(f"forward {batch}x3x32x32 {str(dtype).split('.')[-1]}",
                                      baseline=f"{BASELINE} eager", device=device, **timing)
        add_forward(cmp, BASELINE, r, x, t, compile_mode, device)
        add_forward(cmp, "fastgen", o, x, t, compile_mode, device)
        out.append(cmp)
    return out


def textbook_step(model, x0, scheduler, optimizer):
    """The usual DDPM training step, as diffusers' train_unconditional example writes it."""
    abar = scheduler.alphas_cumprod.to(x0.device)

    def run():
        noise = torch.randn_like(x0)
        t = torch.randint(0, len(abar), (x0.shape[0],), device=x0.device)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise  # diffusers' add_noise
        out = model(x_t, t)
        loss = F.mse_loss(out.sample if hasattr(out, "sample") else out, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.detach()
    return run


def training_comparison(ref, ours, device, batch, timing) -> benchmarking.Comparison:
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    x0 = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1
    cmp = benchmarking.Comparison(f"train step {batch}x3x32x32 float32 (AdamW, clip 1)",
                                  baseline=f"{BASELINE} textbook", device=device, **timing)
    r, o1, o2 = (copy.deepcopy(m).train() for m in (ref, ours, ours))
    cmp.add(f"{BASELINE} textbook", textbook_step(r, x0, scheduler, torch.optim.AdamW(r.parameters(), lr=2e-4,
                                                                                         weight_decay=0.0)))
    cmp.add("fastgen UNet textbook", textbook_step(o1, x0, scheduler, torch.optim.AdamW(o1.parameters(), lr=2e-4,
                                                                                          weight_decay=0.0)))
    trainer = DiffusionTrainer(o2, scheduler, lr=2e-4, ema_decay=None, grad_clip=1.0)
    cmp.add("fastgen DiffusionTrainer", lambda: trainer.train_step(x0), note="fused noising + loss, Philox eps")
    return cmp


def diffusers_loop(model, scheduler, shape, steps, device):
    """diffusers' DDPMPipeline / DDIMPipeline loop (randn, then model + step per timestep), no postprocessing."""
    def run():
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(shape, generator=g, device=device)
        scheduler.set_timesteps(steps)
        with torch.inference_mode():
            for t in scheduler.timesteps:
                x = scheduler.step(model(x, t).sample, t, x, generator=g).prev_sample
        return x
    return run


def sampling_comparisons(ref, ours, device, batch, runs: dict, timing) -> list[benchmarking.Comparison]:
    import diffusers

    out = []
    for kind, steps in runs.items():
        d_cls, f_cls = {"DDIM": (diffusers.DDIMScheduler, DDIMScheduler),
                        "DDPM": (diffusers.DDPMScheduler, DDPMScheduler)}[kind]
        shape = (batch, 3, 32, 32)
        cmp = benchmarking.Comparison(f"sample {kind} {steps} steps {batch}x3x32x32 float32",
                                      baseline=f"{BASELINE} pipeline loop", device=device, **timing)
        cmp.add(f"{BASELINE} pipeline loop", diffusers_loop(ref, d_cls(num_train_timesteps=1000), shape, steps, device))
        f_sched = f_cls(num_train_timesteps=1000)
        # default arguments bind this iteration's scheduler and steps: the runs happen after the loop
        cmp.add("fastgen sample", lambda s=f_sched, n=steps: sample(ours, s, shape, num_inference_steps=n, seed=0,
                                                                     progress=False),
                note="CUDA graph" if device.type == "cuda" else "")
        out.append(cmp)
    return out


def add_images_per_second(rows, batch: int) -> None:
    for r in rows:
        if r.median_s == r.median_s:  # not NaN (a skipped row)
            r.note = "; ".join(filter(None, [r.note, f"{batch / r.median_s:.3g} img/s"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 256 on a GPU, 4 on a CPU")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="auto: on for CUDA only")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin repeats per comparison (median kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default torch's)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true", help="batch 2, float32 only, 2 DDIM steps, short timing")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batch = args.batch or (2 if args.quick else 256 if gpu else 4)
    if batch < 1 or args.repeats < 1:
        parser.error("--batch and --repeats must be >= 1")
    compile_mode = args.compile if args.compile != "auto" else ("on" if gpu and not args.quick else "off")
    timing = dict(min_run_time=0.2, rep_ms=50.0) if args.quick else dict(min_run_time=1.0)
    repeats = 1 if args.quick else args.repeats
    dtypes = [torch.float32] if args.quick else [torch.float32, torch.bfloat16]
    sampling = {"DDIM": 2} if args.quick else ({"DDIM": 50, "DDPM": 1000} if gpu else {"DDIM": 3})

    ref, ours = build_models(device)
    cmps = forward_comparisons(ref, ours, device, batch, dtypes, compile_mode, timing)
    cmps.append(training_comparison(ref, ours, device, batch, timing))
    # a sampling run is many forwards: time each one a few times, not for a minimum duration
    cmps += sampling_comparisons(ref, ours, device, batch, sampling, {**timing, "min_run_time": 0.0})
    rows = []
    for cmp in cmps:
        got = cmp.run(repeats=repeats)
        add_images_per_second(got, batch)
        benchmarking.print_table(got)
        rows += got
    if not gpu and "DDPM" not in sampling:
        rows.append(benchmarking.Row(f"sample DDPM 1000 steps {batch}x3x32x32 float32", "(all)", float("nan"),
                                     float("nan"), float("nan"),
                                     note="skipped: 1000 model calls per run are for a GPU"))
    stem = f"unet_{benchmarking.device_slug(device)}" + ("_quick" if args.quick else "")
    paths = benchmarking.write_results(rows, benchmarking.provenance(device, label=args.label), args.out, stem)
    fwd = [r for r in rows
           if r.group.startswith("forward") and r.group.endswith("float32") and r.impl == "fastgen eager"]
    if fwd:
        print(f"fastgen eager forward vs diffusers eager, float32 batch {batch}: {fwd[0].speedup:.3f}x "
              f"(> 1: fastgen faster)")
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
