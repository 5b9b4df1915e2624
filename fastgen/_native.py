"""Lazy loading of the compiled parts: triton, the CUDA extension ``fastgen._C`` and the C++ CPU
library. Nothing here runs at ``import fastgen``; each loader runs once, on first use, and keeps
its error so that an explicit request for that implementation can say exactly what went wrong.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import importlib
import os

import torch


@functools.lru_cache(maxsize=None)
def triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # keep any import failure: it is reported, never swallowed
        return f"triton cannot be imported: {type(exc).__name__}: {exc}"
    return None


@functools.lru_cache(maxsize=None)
def _load_cuda():
    """Import ``fastgen._C``; returns (module or None, error or None)."""
    if os.environ.get("FASTGEN_DISABLE_CUDA_EXT") == "1":
        return None, "disabled by FASTGEN_DISABLE_CUDA_EXT=1"
    try:
        return importlib.import_module("fastgen._C"), None
    except Exception as exc:
        built_for = _read_build_info()
        return None, (
            f"fastgen._C failed to load ({type(exc).__name__}: {exc}); built for {built_for}, running torch "
            f"{torch.__version__} with CUDA {torch.version.cuda}. It is built by `pip install .` only where torch "
            f"has CUDA and FASTGEN_SKIP_CUDA_BUILD is unset."
        )


def _read_build_info() -> str:
    path = os.path.join(os.path.dirname(__file__), "_build_info.txt")
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "unknown (no build info: the extension was probably never built)"


def cuda_load_error() -> str | None:
    if not torch.cuda.is_available():
        return "torch reports no usable CUDA device"
    return _load_cuda()[1]


def cuda_ext():
    module, error = _load_cuda()
    if module is None:
        raise RuntimeError(error)
    return module


@functools.lru_cache(maxsize=None)
def _load_cpu():
    """Load the C++ CPU kernels (a plain shared library driven through ctypes, no torch ABI)."""
    here = os.path.dirname(__file__)
    candidates = sorted(glob.glob(os.path.join(here, "_fastgen_cpu*.so")))
    if not candidates:
        return None, f"no _fastgen_cpu*.so in {here}: the C++ CPU kernels are built by `pip install .`"
    try:
        lib = ctypes.CDLL(candidates[0])
    except OSError as exc:
        return None, f"{candidates[0]} failed to load: {exc}"
    from . import _cpu_signatures

    try:
        _cpu_signatures.declare(lib)
    except RuntimeError as exc:  # a build that does not match these bindings must never be called
        return None, f"{candidates[0]}: {exc}"
    return lib, None


def cpu_load_error() -> str | None:
    return _load_cpu()[1]


def cpu_lib():
    lib, error = _load_cpu()
    if lib is None:
        raise RuntimeError(error)
    return lib
