"""``fastgen bench generate``: images/s of ``fastgen generate`` vs the diffusers pipeline loop, one run.

Both sides make the same images end to end, noise -> PNG files, for one batch of B seeds: the
same random-weight UNet2DModel, DDIM with the same config and steps, the same dtype and device.

* ``diffusers``: ``DDIMPipeline(batch_size=B, generator=..., num_inference_steps=steps,
  output_type="pil")`` with the stock (eager) UNet, then ``image.save`` for each image (the baseline);
* ``fastgen``: the batch of ``fastgen generate`` (per-seed noise, ``fastgen.accelerate``, on CUDA
  channels_last and the loop captured in one CUDA graph), then its atomic PNG writes, in the same
  thread (the command overlaps a batch's writes with the next batch; that gain is not counted here);
* ``fastgen --no-accelerate`` (what the loop alone gives) and, with ``--compile``, ``fastgen --compile``.

Models (random weights; nothing is downloaded): ``ddpm-cifar10``, google/ddpm-cifar10-32's UNet2DModel
config (35.7M parameters, 32x32; the GPU default, batch 256, 50 steps, bfloat16: the issue's target is
>= 2x diffusers there), and ``tiny`` (16x16, two levels; the CPU default, batch 16, 10 steps, float32).
Results: ``<out>/generate_<device>.{csv,json}`` with provenance; the note of a row gives images/s.
"""
from __future__ import annotations

import copy
import shlex
import tempfile

import torch

from .. import benchmarking

__all__ = ["run", "comparison", "unet_config"]

TINY_CONFIG = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                   norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def unet_config(name: str) -> dict:
    if name == "tiny":
        return dict(TINY_CONFIG)
    from ..models.unet_diffusers import DDPM_CIFAR10_DIFFUSERS_CONFIG

    return dict(DDPM_CIFAR10_DIFFUSERS_CONFIG)


def comparison(model: str, device: torch.device, batch: int, steps: int, dtype: torch.dtype, *,
               compile_: bool = False, timing: dict | None = None) -> benchmarking.Comparison:
    """The contenders for one batch of ``batch`` images, as a :class:`fastgen.benchmarking.Comparison`."""
    import diffusers

    import fastgen.diffusion as fd

    from .loop import _Sampler
    from .models import _from_unet
    from .writers import PngWriter

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**unet_config(model)).eval().requires_grad_(False)
    ddim = diffusers.DDIMScheduler()
    work = tempfile.mkdtemp(prefix="fastgen-bench-generate-")
    label = f"{model} {batch}x{unet.config.in_channels}x{unet.config.sample_size}x{unet.config.sample_size} " \
            f"{str(dtype).replace('torch.', '')} DDIM {steps} steps"
    cmp = benchmarking.Comparison(f"generate {label}", baseline="diffusers", device=device, **(timing or {}))

    pipe = diffusers.DDIMPipeline(unet=copy.deepcopy(unet), scheduler=copy.deepcopy(ddim)).to(device)
    pipe.unet.to(dtype)
    pipe.set_progress_bar_config(disable=True)

    def diffusers_batch():
        images = pipe(batch_size=batch, generator=torch.Generator(device).manual_seed(0), num_inference_steps=steps,
                      output_type="pil").images
        for i, image in enumerate(images):
            image.save(f"{work}/d{i:06d}.png")

    cmp.add("diffusers", diffusers_batch)
    seeds = list(range(batch))
    writer = PngWriter(work, subdirs=False)
    variants = [("fastgen", True, False), ("fastgen --no-accelerate", False, False)]
    if compile_:
        variants.append(("fastgen --compile", True, True))
    for name, accelerate, compile_this in variants:
        loaded = _from_unet(copy.deepcopy(unet), fd.DDIMScheduler.from_config(ddim.config), {})
        sampler = _Sampler(loaded, device, dtype, steps, None, accelerate, compile_this, cuda_graph=True)

        def fastgen_batch(sampler=sampler):
            images = sampler.images(seeds)
            for s, image in zip(seeds, images):
                writer.write([s], image[None])

        fastgen_batch()  # capture / compile outside the timing
        cmp.add(name, fastgen_batch)
    return cmp


def run(args, argv: list[str]) -> int:
    """``fastgen bench generate`` (arguments: see fastgen/cli.py)."""
    import sys

    if args.device == "cuda" and not torch.cuda.is_available():
        print("fastgen bench generate: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    model = args.model or ("ddpm-cifar10" if cuda else "tiny")
    batch = args.batch_size or (256 if cuda else 16)
    steps = args.steps or (50 if cuda else 10)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        args.dtype or ("bfloat16" if cuda else "float32")]
    for name, value in (("--batch-size", batch), ("--steps", steps), ("--repeats", args.repeats)):
        if value < 1:
            print(f"fastgen bench generate: {name} must be >= 1, got {value}", file=sys.stderr)
            return 2
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    timing = {"warmup_ms": 200.0, "rep_ms": 2000.0} if cuda else {"min_run_time": 2.0}
    cmp = comparison(model, device, batch, steps, dtype, compile_=args.compile, timing=timing)
    rows = cmp.run(repeats=args.repeats)
    for r in rows:
        if r.median_s == r.median_s:  # not a skipped row (NaN)
            r.note = benchmarking._join_notes(f"{batch / r.median_s:.1f} images/s", r.note)
    print()
    benchmarking.print_table(rows)
    prov = benchmarking.provenance(device, label=args.label, command=shlex.join(["fastgen"] + argv))
    prov.update(model=model, batch_size=batch, steps=steps, dtype=str(dtype).replace("torch.", ""),
                repeats=args.repeats, target="GPU: fastgen >= 2x diffusers eager bf16 (ddpm-cifar10, 256, DDIM 50)")
    paths = benchmarking.write_results(rows, prov, args.out, f"generate_{benchmarking.device_slug(device)}")
    print(f"\nresults: {paths[0]}, {paths[1]}")
    return 0
