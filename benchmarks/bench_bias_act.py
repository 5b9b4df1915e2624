"""StyleGAN2's bias + activation (+ clamp): fastgen.ops.bias_act per implementation vs eager torch
(x + b.view(...) -> F.leaky_relu -> * gain -> clamp: four passes over x) and torch.compile of the
same math, forward and forward + backward (x and b).

Shapes: StyleGAN2 synthesis activations at 64x64 and 256x256 (32x512x64x64, 16x128x256x256) and a
mapping-network linear layer (4096x512, bias along dim 1). FASTGEN_BENCH_SHAPE replaces them with one
shape (bias along dim 1). The issue-11 GPU target is the forward at >= 85% of the measured copy
bandwidth (the frac_copy_bw column); it needs a GPU: on a CPU only the reference runs.

bytes_moved is the minimum traffic: the forward reads x and writes y (2 tensors of x's size);
forward + backward also reads dy and x and writes dx (5 in all); the (C,) bias is negligible.
"""
import functools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from _suite import DEVICE, DTYPE, run_entry

from fastgen import benchmarking, cli
from fastgen.ops.bias_act import IMPLS, bias_act

STYLEGAN2_SHAPES = [(32, 512, 64, 64), (16, 128, 256, 256), (4096, 512)]
SHAPES = ([tuple(int(s) for s in os.environ["FASTGEN_BENCH_SHAPE"].split(","))]
          if "FASTGEN_BENCH_SHAPE" in os.environ else STYLEGAN2_SHAPES)
NAMES = ["eager", "torch.compile"] + [f"fastgen[{i}]" for i in IMPLS]
GAIN, CLAMP = math.sqrt(2), 256.0  # lrelu's default gain; StyleGAN2-ADA's conv_clamp


def eager(x, b):
    """The math as StyleGAN2's reference path writes it."""
    y = F.leaky_relu(x + b.view([-1 if i == 1 else 1 for i in range(x.dim())]), 0.2) * GAIN
    return y.clamp(-CLAMP, CLAMP)


@functools.lru_cache(maxsize=None)
def comparison(shape: tuple, passes: str) -> benchmarking.Comparison:
    torch.manual_seed(0)
    train = passes == "fwd+bwd"
    x = torch.randn(shape, device=DEVICE, dtype=DTYPE).requires_grad_(train)
    b = torch.randn(shape[1], device=DEVICE, dtype=DTYPE).requires_grad_(train)
    dy = torch.randn_like(x)
    nbytes = x.numel() * x.element_size()
    dtype = str(DTYPE).replace("torch.", "")
    label = f"bias_act[lrelu,clamp] {passes} {'x'.join(map(str, shape))} {dtype}"
    cmp = benchmarking.Comparison(label, baseline="eager", device=DEVICE, bytes_moved=(5 if train else 2) * nbytes)

    def timed(fn):
        if not train:
            return lambda: fn(x, b)

        def step():
            x.grad = b.grad = None
            fn(x, b).backward(dy)
        return step

    cmp.add("eager", timed(eager))
    compiled = timed(torch.compile(eager))
    try:
        compiled()  # compile (forward and backward) outside the timing
    except Exception as exc:  # reported as the entry's skip reason, never silently dropped
        cmp.skip("torch.compile", f"torch.compile failed here: {type(exc).__name__}: {exc}")
    else:
        cmp.add("torch.compile", compiled)
    for impl, reason in cli.op_impls("bias_act", DEVICE):
        if reason is not None:
            cmp.skip(f"fastgen[{impl}]", reason)
            continue
        fused = timed(lambda x, b, impl=impl: bias_act(x, b, 1, "lrelu", clamp=CLAMP, impl=impl))
        fused()  # first call outside the timing: kernel compilation
        cmp.add(f"fastgen[{impl}]", fused)
    return cmp


@pytest.mark.parametrize("impl", NAMES)
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bias_act(benchmark, shape, passes, impl):
    run_entry(benchmark, comparison(shape, passes), impl)
