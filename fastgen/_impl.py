"""Which implementation runs a fused op: the op contract of DESIGN.md, in one place.

Every public op takes ``impl="auto" | "triton" | "cuda" | "cpu" | "reference"``:

* ``"triton"``    Triton kernels from ``fastgen.kernels``: CUDA tensors, or CPU tensors when
                  ``TRITON_INTERPRET=1`` was set before triton was imported (the test tier).
* ``"cuda"``      the CUDA C++ extension ``fastgen._C`` (built by setup.py where torch has CUDA).
* ``"cpu"``       the C++/OpenMP kernels of ``fastgen/_fastgen_cpu*.so`` for CPU tensors.
* ``"reference"`` the pure-torch ``<op>_ref`` beside the op: any device, the ground truth.

``"auto"`` (the default, or whatever :func:`set_impl` / ``FASTGEN_IMPL`` chose) takes the first
available implementation in :data:`AUTO_ORDER` for the tensor's device. Falling back past an
implementation that should have been there (say the CUDA build failed) is logged once per op and
reason; asking *explicitly* for an unavailable implementation raises :class:`ImplUnavailableError`.
"""
from __future__ import annotations

import functools
import logging
import os

import torch

from . import _native

logger = logging.getLogger("fastgen")

IMPLS = ("triton", "cuda", "cpu", "reference")
# On CUDA triton comes first: it needs no build step. The order is a policy to revisit with GPU
# benchmark results (benchmarks/results/); AUTO_ORDER_BY_OP holds the measured exceptions.
AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}
# Measured on an H200 (benchmarks/results/diffusion_nvidia-h200.json, torch 2.11, triton 3.6): at
# the DDPM CIFAR-10 shape these ops are launch-bound and the CUDA kernels run in 9.4 us (DDIM step)
# / 14.5 us (DDPM step) / 12 us (noising) against Triton's 34.5 / 33.8 / 37.8 us (Triton's
# launcher); both passed their tests there (benchmarks/results/gpu_tests_nvidia-h200.log).
AUTO_ORDER_BY_OP = {("sampling_step", "cuda"): ("cuda", "triton", "reference"),
                    ("add_noise", "cuda"): ("cuda", "triton", "reference")}
# Per-layout rows, keyed (op, device, layout) and looked up before (op, device) when the op passes
# a layout to :func:`resolve`. GroupNorm: csrc/group_norm.cu reads NHWC only; Triton reads both
# (channels_last through coalesced [BLOCK_S, groups, channels] tiles and a split reduction for
# small batches). No GPU has timed either GroupNorm yet (the H200 run, benchmarks/results/README.md
# "First GPU run", measured the sampling ops only), so both rows keep Triton first. The rule that
# flips "channels_last" to ("cuda", "triton", "reference"): benchmarks/bench_group_norm.py on the
# GPU, rows "group_norm[silu] fwd+bwd 256x128x32x32 <dtype> G=32 channels_last" and
# "... 256x256x16x16 ..." (training) and "group_norm[silu] fwd 1x320x64x64 ... channels_last"
# (sampling one image): fastgen[cuda]'s median below fastgen[triton]'s by more than both IQRs in
# float32 and bfloat16. NCHW has no CUDA kernel to flip to.
AUTO_ORDER_BY_OP.update({("group_norm", "cuda", "channels_last"): ("triton", "cuda", "reference"),
                         ("group_norm", "cuda", "nchw"): ("triton", "reference")})
# On CPU "auto" takes the C++ kernels. Measured against torch.compile (Inductor) of the same eager
# chain, 256x3x32x32 float32, 2-core AVX-512 CPU shared with other jobs (load 9), 400 interleaved
# calls, 20th percentile: DDIM update 101 us (C++) vs 120 us (Inductor); add_noise with given
# noise 110 us vs 115 us, of which the kernel is 64 us and the rest the op's argument checks. So
# no CPU rule picks Inductor (it is not an implementation of these ops either: a user compiles
# around them). Before the kernels were tightened (eps folded into the row, no OpenMP team below
# csrc/cpu/parallel.h's grain, no dispatcher in plain eager calls) the same comparison read
# 146 / 97 us and 150 / 102 us (issue 12).

_default_impl: str | None = None  # None: read FASTGEN_IMPL on first use


def _check_impl_name(impl: object, argname: str = "impl") -> str:
    if impl != "auto" and impl not in IMPLS:
        raise ValueError(f"{argname} must be 'auto' or one of {IMPLS}, got {impl!r}")
    return impl  # type: ignore[return-value]


def set_impl(impl: str) -> None:
    """Set the process-wide default used where an op is called with ``impl="auto"``."""
    global _default_impl
    _default_impl = _check_impl_name(impl)


def get_impl() -> str:
    """The process-wide default implementation (``FASTGEN_IMPL`` unless :func:`set_impl` was called)."""
    global _default_impl
    if _default_impl is None:
        _default_impl = _check_impl_name(os.environ.get("FASTGEN_IMPL", "auto"), "FASTGEN_IMPL")
    return _default_impl


class ImplUnavailableError(RuntimeError):
    """An implementation was asked for explicitly and cannot run here; the message says why."""


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(impl: str, device: torch.device) -> str | None:
    """Why ``impl`` cannot run on ``device`` (None when it can). Touches CUDA only for CUDA tensors."""
    if impl == "reference":
        return None
    if impl == "triton":
        if device.type not in ("cuda", "cpu"):
            return f"triton kernels run on CUDA tensors, got a {device.type} tensor"
        if device.type == "cpu" and not triton_interpret():
            return "triton kernels run on CPU tensors only under TRITON_INTERPRET=1 (set before importing triton)"
        return _native.triton_import_error()
    if impl == "cuda":
        if device.type != "cuda":
            return f"the CUDA extension runs on CUDA tensors, got a {device.type} tensor"
        return _native.cuda_load_error()
    if impl == "cpu":
        if device.type != "cpu":
            return f"the C++ CPU kernels run on CPU tensors, got a {device.type} tensor"
        return _native.cpu_load_error()
    raise AssertionError(impl)


@functools.lru_cache(maxsize=None)
def _log_fallback_once(op: str, skipped: str, reason: str, chosen: str) -> None:
    logger.warning("fastgen.%s: impl='auto' skips %r (%s) and runs %r", op, skipped, reason, chosen)


# Called from inside torch.compile'd code: the answer depends only on the device, the op's
# implementations and the process state, so dynamo may treat it as a constant.
@torch.compiler.assume_constant_result
def _resolve_cached(op: str, requested: str, device_type: str, device_index: int, available: tuple,
                    layout: str | None = None) -> str:
    device = torch.device(device_type, device_index) if device_index >= 0 else torch.device(device_type)
    if requested != "auto":
        if requested not in available:
            raise ImplUnavailableError(f"fastgen.{op} has no {requested!r} implementation (it has {available})")
        reason = unavailable_reason(requested, device)
        if reason is not None:
            raise ImplUnavailableError(f"fastgen.{op}: impl={requested!r} is unavailable: {reason}")
        return requested
    preferred = AUTO_ORDER_BY_OP.get((op, device.type), AUTO_ORDER.get(device.type, ("reference",)))
    preferred = AUTO_ORDER_BY_OP.get((op, device.type, layout), preferred)
    order = [i for i in preferred if i in available] + ["reference"]
    skipped = []
    for impl in order:
        reason = unavailable_reason(impl, device)
        if impl == "cpu" and reason is not None and _native.cpu_setting_error() is not None:
            # the user's FASTGEN_CPU_ISA failed: an error, never a quiet fall-back to the reference
            raise ImplUnavailableError(f"fastgen.{op}: {reason}")
        if reason is None:
            # A missing build or import is worth a warning; an impl that never targets this device is not.
            for name, why in skipped:
                if not why.startswith(_NOT_THIS_DEVICE):
                    _log_fallback_once(op, name, why, impl)
            return impl
        skipped.append((impl, reason))
    raise AssertionError("the reference implementation is always available")


_NOT_THIS_DEVICE = ("triton kernels run on CPU tensors only", "the CUDA extension runs on", "the C++ CPU kernels run on")


KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def resolve(op: str, impl: str, device: torch.device, available: tuple[str, ...], dtype: torch.dtype,
            layout: str | None = None) -> str:
    """The implementation that runs ``op`` for tensors of ``dtype`` on ``device``.

    ``available`` lists the implementations the op has; ``layout`` (e.g. "nchw", "channels_last")
    selects a per-layout row of :data:`AUTO_ORDER_BY_OP` where the op has one. Kernels take
    float32, float16 and bfloat16; float64 (gradcheck's dtype) runs the reference. Raises ``ValueError`` for an
    unknown name and :class:`ImplUnavailableError` for an explicit request that cannot run.
    """
    impl = _check_impl_name(impl)
    if impl == "auto":
        impl = get_impl()
    if dtype not in KERNEL_DTYPES:
        if impl not in ("auto", "reference"):
            raise ImplUnavailableError(f"fastgen.{op}: impl={impl!r} takes float32, float16 or bfloat16, got {dtype}; "
                                       f"use impl='reference' (or 'auto') for {dtype}")
        return "reference"
    index = device.index if device.index is not None else -1
    return _resolve_cached(op, impl, device.type, index, tuple(available), layout)
