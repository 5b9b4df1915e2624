"""GroupNorm + SiLU of a U-Net ResBlock (and with the time-embedding add as prologue), forward and
forward + backward: fastgen per implementation vs eager torch (F.group_norm + F.silu) and
torch.compile of the same math, NCHW and channels_last.

Shapes: 256x128x32x32 and 256x256x16x16 (training batches) and 1x320x64x64 (sampling one
Stable-Diffusion-sized image: 32 (sample, group) pairs, the case of the split reduction in both
layouts: kernels/group_norm.py's SPLIT_MIN_PROGRAMS; its nchw and channels_last rows time the split
kernels) with 32 groups by default. No GPU has run these rows yet. FASTGEN_BENCH_SHAPE (the
suite's knob, e.g. ``4,8,8,8``) replaces them with that one shape; FASTGEN_BENCH_GN_GROUPS
(default 32) sets the group count, reduced to gcd(groups, C) where it does not divide C (so
4,8,8,8 runs 8 groups). FASTGEN_BENCH_DTYPE and FASTGEN_BENCH_DEVICE as in _suite.py.

bytes_moved is the minimum traffic: the forward reads x and writes y (2 tensors of x's size);
forward + backward also reads x and dy and writes dx (5 in all). The (C,) and (B, C) operands
and the (B, G) statistics are negligible beside them.
"""
import functools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from _suite import DEVICE, DTYPE, run_entry

from fastgen import benchmarking, cli
from fastgen.ops.group_norm import IMPLS, group_norm

UNET_SHAPES = [(256, 128, 32, 32), (256, 256, 16, 16), (1, 320, 64, 64)]
SHAPES = ([tuple(int(s) for s in os.environ["FASTGEN_BENCH_SHAPE"].split(","))]
          if "FASTGEN_BENCH_SHAPE" in os.environ else UNET_SHAPES)
GROUPS = int(os.environ.get("FASTGEN_BENCH_GN_GROUPS", "32"))
NAMES = ["eager", "torch.compile"] + [f"fastgen[{i}]" for i in IMPLS]


def eager(x, num_groups, weight, bias, emb):
    """The math as a U-Net writes it: (x + emb) -> F.group_norm -> F.silu."""
    if emb is not None:
        x = x + emb.view(emb.shape + (1,) * (x.dim() - 2))
    return F.silu(F.group_norm(x, num_groups, weight, bias))


@functools.lru_cache(maxsize=None)
def comparison(shape: tuple, layout: str, variant: str, passes: str) -> benchmarking.Comparison:
    """One Comparison, built on first use so that a ``-k`` selection compiles only what it runs."""
    torch.manual_seed(0)
    B, C = shape[:2]
    groups = math.gcd(GROUPS, C)
    train = passes == "fwd+bwd"
    x = torch.randn(shape, device=DEVICE, dtype=DTYPE)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(C, device=DEVICE, dtype=DTYPE)
    bias = torch.randn(C, device=DEVICE, dtype=DTYPE)
    emb = torch.randn(B, C, device=DEVICE, dtype=DTYPE) if variant == "emb+silu" else None
    leaves = [t.requires_grad_(train) for t in (x, weight, bias, emb) if t is not None]
    dy = torch.randn_like(x)
    nbytes = x.numel() * x.element_size()
    dtype = str(DTYPE).replace("torch.", "")
    label = f"group_norm[{variant}] {passes} {'x'.join(map(str, shape))} {dtype} G={groups} {layout}"
    cmp = benchmarking.Comparison(label, baseline="eager", device=DEVICE, bytes_moved=(5 if train else 2) * nbytes)

    def timed(fn):
        if not train:
            return lambda: fn(x, groups, weight, bias, emb)

        def step():
            for t in leaves:
                t.grad = None
            fn(x, groups, weight, bias, emb).backward(dy)
        return step

    cmp.add("eager", timed(eager))
    compiled = timed(torch.compile(eager))
    try:
        compiled()  # compile (forward and backward) outside the timing
    except Exception as exc:  # reported as the entry's skip reason, never silently dropped
        cmp.skip("torch.compile", f"torch.compile failed here: {type(exc).__name__}: {exc}")
    else:
        cmp.add("torch.compile", compiled)
    for impl, reason in cli.op_impls("group_norm", DEVICE):
        if reason is not None:
            cmp.skip(f"fastgen[{impl}]", reason)
            continue
        fused = timed(lambda x, g, w, b, e, impl=impl: group_norm(x, g, w, b, emb=e, activation="silu", impl=impl))
        fused()  # first call outside the timing: kernel compilation
        cmp.add(f"fastgen[{impl}]", fused)
    return cmp


@pytest.mark.parametrize("impl", NAMES)
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("variant", ["silu", "emb+silu"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_group_norm(benchmark, shape, layout, variant, passes, impl):
    if layout == "channels_last" and len(shape) != 4:
        pytest.skip(f"channels_last needs a 4-D shape, got {shape}")
    run_entry(benchmark, comparison(shape, layout, variant, passes), impl)
