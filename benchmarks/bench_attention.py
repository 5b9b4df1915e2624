"""Self-attention at the U-Net's shapes: fastgen per implementation vs every SDPA backend.

Forward (under no_grad, as in sampling) and forward + backward (dq, dk, dv), float16 and bfloat16,
q, k, v of shape (B, heads, L, head_dim):

* 256,1,256,256 — diffusers' DDPM CIFAR-10 U-Net: one head of 256 channels over 16x16 positions;
* 256,1,1024,128 — attention over a 32x32 map with 128 channels.

References, all in the same run: ``torch.nn.functional.scaled_dot_product_attention`` with torch's
own backend choice (``sdpa``, the baseline) and pinned to each backend with
``torch.nn.attention.sdpa_kernel`` (``sdpa[flash]``, ``sdpa[efficient]``, ``sdpa[math]``,
``sdpa[cudnn]``). An entry that cannot run here (no such backend on this device, dtype or head
dim; Triton without a GPU) is skipped with the reason torch or fastgen gives.

Shape knob: ``FASTGEN_BENCH_ATTENTION_SHAPES`` = ``;``-separated ``B,heads,L,head_dim`` (default
``256,1,256,256;256,1,1024,128``). A quick pass on a CPU:
``FASTGEN_BENCH_ATTENTION_SHAPES=2,1,64,64 python3 -m pytest bench_attention.py --benchmark-only
--benchmark-max-time=0.05 -q -p no:cacheprovider`` (from benchmarks/). The device comes from
``FASTGEN_BENCH_DEVICE`` as for every suite (benchmarks/_suite.py).

Each result carries ``flops`` in extra_info: 4 B H L^2 D for the forward (two matmuls), 3.5x that
for forward + backward (the backward's five matmuls count 2.5x the forward, the flash-attention
convention), so TFLOP/s = flops / time.
"""
import os

import pytest
import torch
from _suite import DEVICE, run_entry
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from fastgen import _impl, benchmarking
from fastgen.ops.attention import IMPLS, attention

SHAPES = [tuple(int(n) for n in s.split(",")) for s in
          os.environ.get("FASTGEN_BENCH_ATTENTION_SHAPES", "256,1,256,256;256,1,1024,128").split(";")]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}
NAMES = ["sdpa"] + [f"sdpa[{b}]" for b in BACKENDS] + [f"fastgen[{i}]" for i in IMPLS]
MODES = ["fwd", "fwd+bwd"]


def _sdpa(backend):
    if backend is None:
        return scaled_dot_product_attention

    def pinned(q, k, v):
        with sdpa_kernel(backend):
            return scaled_dot_product_attention(q, k, v)
    return pinned


def _fastgen(impl):
    return lambda q, k, v: attention(q, k, v, impl=impl)


def _timed_call(fn, q, k, v, grad_out, mode):
    if mode == "fwd":
        def run():
            with torch.no_grad():
                fn(q, k, v)
    else:
        def run():
            for t in (q, k, v):
                t.grad = None
            fn(q, k, v).backward(grad_out)
    return run


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def build(shape, dtype_name, mode) -> benchmarking.Comparison:
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape, device=DEVICE, dtype=dtype, requires_grad=mode != "fwd") for _ in range(3))
    grad_out = torch.randn(shape, device=DEVICE, dtype=dtype)
    label = "x".join(map(str, shape))
    cmp = benchmarking.Comparison(f"attention {mode} {label} {dtype_name}", baseline="sdpa", device=DEVICE)
    contenders = [("sdpa", _sdpa(None), None)]
    contenders += [(f"sdpa[{b}]", _sdpa(backend), None) for b, backend in BACKENDS.items()]
    for impl in IMPLS:
        reason = _impl.unavailable_reason(impl, DEVICE)
        contenders.append((f"fastgen[{impl}]", _fastgen(impl), reason))
    for name, fn, reason in contenders:
        if reason is not None:
            cmp.skip(name, reason)
            continue
        run = _timed_call(fn, q, k, v, grad_out, mode)
        try:  # a backend without a kernel for this device / dtype / head dim says so here, once
            run()
        except RuntimeError as error:
            cmp.skip(name, f"no {name} kernel for {dtype_name}, head_dim {shape[-1]} on {DEVICE.type} "
                           f"({_first_line(error)})")
            continue
        cmp.add(name, run)
    return cmp


_comparisons: dict = {}


def comparison(shape, dtype_name, mode) -> benchmarking.Comparison:
    """Built on first use, so that only the inputs of the groups selected on the command line exist."""
    key = (shape, dtype_name, mode)
    if key not in _comparisons:
        _comparisons[key] = build(shape, dtype_name, mode)
    return _comparisons[key]


@pytest.mark.parametrize("impl", NAMES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_attention(benchmark, shape, dtype_name, mode, impl):
    b, heads, length, head_dim = shape
    forward_flops = 4 * b * heads * length * length * head_dim
    benchmark.extra_info["flops"] = forward_flops if mode == "fwd" else int(3.5 * forward_flops)
    run_entry(benchmark, comparison(shape, dtype_name, mode), impl)
