"""StyleGAN2's resampling: fastgen.ops.upfirdn2d per implementation vs its pure-torch reference
(reshape + pad + depthwise conv2d + slicing, the way StyleGAN2's reference path computes it) eager
and under torch.compile, forward and forward + backward, at the 2x up / down shapes of StyleGAN2's
synthesis and discriminator layers with its 4-tap [1, 3, 3, 1] filter.

The issue-11 GPU target: the Triton kernel >= 2x the reference at these shapes (the speedup column
on a GPU). On a CPU only the reference runs. bytes_moved is the minimum traffic: read x, write y
(forward); also read dy and write dx (forward + backward).
"""
import functools
import os

import pytest
import torch
from _suite import DEVICE, DTYPE, run_entry

from fastgen import benchmarking, cli
from fastgen.ops.upfirdn2d import IMPLS, upfirdn2d, upfirdn2d_ref

FIR = [1.0, 3.0, 3.0, 1.0]
# (shape, up, down, padding): StyleGAN2 config-f at batch 16 — synthesis 32 -> 64 and 128 -> 256
# (upsample 2x: pad [2, 1, 2, 1], gain up^2), discriminator 64 -> 32 (downsample 2x: pad 1).
CASES = [((16, 512, 32, 32), 2, 1, [2, 1, 2, 1]), ((16, 128, 128, 128), 2, 1, [2, 1, 2, 1]),
         ((16, 512, 64, 64), 1, 2, [1, 1, 1, 1])]
if "FASTGEN_BENCH_SHAPE" in os.environ:
    CASES = [(tuple(int(s) for s in os.environ["FASTGEN_BENCH_SHAPE"].split(",")), 2, 1, [2, 1, 2, 1])]
NAMES = ["eager", "torch.compile"] + [f"fastgen[{i}]" for i in IMPLS if i != "reference"]


@functools.lru_cache(maxsize=None)
def comparison(case: int, passes: str) -> benchmarking.Comparison:
    torch.manual_seed(0)
    shape, up, down, pad = CASES[case]
    train = passes == "fwd+bwd"
    f = torch.tensor(FIR, device=DEVICE) / sum(FIR)
    gain = float(up * up)
    x = torch.randn(shape, device=DEVICE, dtype=DTYPE).requires_grad_(train)
    y = upfirdn2d_ref(x.detach(), f, up, down, pad, gain=gain)
    dy = torch.randn_like(y)
    nbytes = (x.numel() + y.numel()) * x.element_size()
    dtype = str(DTYPE).replace("torch.", "")
    label = f"upfirdn2d[up={up},down={down}] {passes} {'x'.join(map(str, shape))} {dtype}"
    cmp = benchmarking.Comparison(label, baseline="eager", device=DEVICE, bytes_moved=(2 if train else 1) * nbytes)

    def timed(fn):
        if not train:
            return lambda: fn(x)

        def step():
            x.grad = None
            fn(x).backward(dy)
        return step

    def reference(x):
        return upfirdn2d_ref(x, f, up, down, pad, gain=gain)

    cmp.add("eager", timed(reference))
    compiled = timed(torch.compile(reference))
    try:
        compiled()
    except Exception as exc:  # reported as the entry's skip reason, never silently dropped
        cmp.skip("torch.compile", f"torch.compile failed here: {type(exc).__name__}: {exc}")
    else:
        cmp.add("torch.compile", compiled)
    for impl, reason in cli.op_impls("upfirdn2d", DEVICE):
        if impl == "reference":
            continue  # it is the eager row
        if reason is not None:
            cmp.skip(f"fastgen[{impl}]", reason)
            continue
        fused = timed(lambda x, impl=impl: upfirdn2d(x, f, up, down, pad, gain=gain, impl=impl))
        fused()  # first call outside the timing: kernel compilation
        cmp.add(f"fastgen[{impl}]", fused)
    return cmp


@pytest.mark.parametrize("impl", NAMES)
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: "x".join(map(str, CASES[i][0])) + f"-up{CASES[i][1]}-down{CASES[i][2]}")
def test_upfirdn2d(benchmark, case, passes, impl):
    run_entry(benchmark, comparison(case, passes), impl)
