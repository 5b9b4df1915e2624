"""Shared test helpers: devices, the implementations to run on each, tolerances, verbose checks."""
from __future__ import annotations

import os

import pytest
import torch

from fastgen import _impl

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
KERNEL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (atol, rtol) of a kernel against the float32 reference computed from the same rounded inputs:
# the kernel computes in float32 too, so the only difference is the final rounding to the dtype.
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2),
             torch.float64: (1e-12, 1e-12)}


def impls_on(device: str) -> list[str]:
    """Every implementation that can run on ``device`` here; the others are reported as skips."""
    out = []
    for impl in _impl.IMPLS:
        if _impl.unavailable_reason(impl, torch.device(device)) is None:
            out.append(impl)
    return out


def impl_params():
    """(device, impl) pairs for parametrize, with a reason on each that cannot run here."""
    params = []
    for device in ["cpu", "cuda"]:
        for impl in _impl.IMPLS:
            reason = None if device in DEVICES else "no CUDA device"
            if reason is None:
                reason = _impl.unavailable_reason(impl, torch.device(device))
            marks = [pytest.mark.skip(reason=f"{impl} on {device}: {reason}")] if reason else []
            params.append(pytest.param(device, impl, id=f"{device}-{impl}", marks=marks))
    return params


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, *, atol=None,
                 rtol=None, name: str = "output") -> None:
    """allclose that says how many elements differ, the worst one and where."""
    default_atol, default_rtol = TOLERANCE[dtype or actual.dtype]
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.double(), expected.double()
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        err = (a - e).abs().nan_to_num(float("inf"))
        worst = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements differ beyond atol={atol}, rtol={rtol}; worst at "
            f"{worst}: {a[worst].item()} vs {e[worst].item()} (|diff|={err.max().item():.3g})")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"
