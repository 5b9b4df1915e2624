"""Lazy loading of the compiled parts: triton, the CUDA extension ``fastgen._C`` and the C++ CPU
library. Nothing here runs at ``import fastgen``; each loader runs once, on first use, and keeps
its error so that an explicit request for that implementation can say exactly what went wrong.
"""
from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.machinery
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


# The CPU kernel libraries setup.py builds on x86-64, best last (FASTGEN_CPU_ISA names them): the
# baseline is fastgen/_fastgen_cpu*.so for x86-64-v2, the others fastgen/_fastgen_cpu_<isa>*.so for
# x86-64-v3 (AVX2, FMA, F16C) and x86-64-v4 (AVX-512). A FASTGEN_CPU_MARCH build, and any build
# off x86-64, is one library, the baseline file, named after its -march ("march=native") or "generic".
CPU_ISAS = ("baseline", "avx2", "avx512")


def _library_file(here: str, isa: str, baseline: bool) -> str | None:
    name = "_fastgen_cpu" + ("" if baseline else "_" + isa)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.exists(os.path.join(here, name + suffix)):
            return os.path.join(here, name + suffix)
    return None


def _cpu_features(lib: ctypes.CDLL) -> tuple[frozenset, frozenset]:
    """(features the library was compiled to use, features this CPU and OS support), by name, as the
    library's probes (csrc/cpu/isa.cpp, compiled for plain x86-64 whatever the library's -march) say."""
    lib.fastgen_cpu_feature_names.restype = ctypes.c_char_p
    lib.fastgen_cpu_required_features.restype = ctypes.c_uint32
    lib.fastgen_cpu_available_features.restype = ctypes.c_uint32
    names = lib.fastgen_cpu_feature_names().decode().split()

    def named(mask: int) -> frozenset:
        return frozenset(name for k, name in enumerate(names) if mask >> k & 1)

    return named(lib.fastgen_cpu_required_features()), named(lib.fastgen_cpu_available_features())


def _build_string(lib: ctypes.CDLL) -> dict:
    """csrc/cpu/isa.cpp's "isa=..;march=..;set=a,b,c;id=.." as a dict (set as a tuple)."""
    lib.fastgen_cpu_build.restype = ctypes.c_char_p
    info = dict(item.split("=", 1) for item in lib.fastgen_cpu_build().decode().split(";"))
    info["set"] = tuple(info["set"].split(","))
    return info


def choose_cpu_library(built: tuple, missing: dict, forced: str | None) -> str:
    """The ISA of the library to load: ``forced`` (FASTGEN_CPU_ISA) if given, else the best one
    (last in ``built``) whose ``missing`` features (those it was compiled to use that this CPU
    lacks) are none. Raises RuntimeError saying what was asked, what exists and what is missing."""
    runnable = [isa for isa in built if not missing[isa]]

    def lacks(isa: str) -> str:
        return f"the {isa} library needs {', '.join(sorted(missing[isa]))}, which this CPU (or its OS) lacks"

    if forced is None:
        if not runnable:
            hint = ("; it was built with FASTGEN_CPU_MARCH for another CPU: rebuild here, or without "
                    "FASTGEN_CPU_MARCH for the portable set" if built[0].startswith("march=") else "")
            raise RuntimeError(f"this CPU can run none of the C++ CPU kernel libraries built: "
                               f"{'; '.join(lacks(isa) for isa in built)}{hint}")
        return runnable[-1]
    if forced not in built:
        if forced not in CPU_ISAS:
            raise RuntimeError(f"FASTGEN_CPU_ISA must be 'auto' or one of {CPU_ISAS}, got {forced!r}")
        raise RuntimeError(f"FASTGEN_CPU_ISA={forced}: this build has no {forced} CPU library (it has "
                           f"{', '.join(built)}); setup.py builds {', '.join(CPU_ISAS)} on x86-64 unless "
                           f"FASTGEN_CPU_MARCH is set")
    if missing[forced]:
        raise RuntimeError(f"FASTGEN_CPU_ISA={forced}: {lacks(forced)}; it can run "
                           f"{', '.join(runnable) or 'none of the libraries built'}")
    return forced


_cpu_info: dict = {}  # what _load_cpu chose, for cpu_library_info()


@functools.lru_cache(maxsize=None)
def _load_cpu():
    """Load the C++ CPU kernels (plain shared libraries driven through ctypes, no torch ABI): the
    library of the best ISA level this CPU runs, or the one FASTGEN_CPU_ISA names. Returns (library
    or None, error or None); nothing in a library is called before its features were checked."""
    _cpu_info.clear()
    here = os.path.dirname(__file__)
    forced = os.environ.get("FASTGEN_CPU_ISA", "auto").strip() or "auto"
    forced = None if forced == "auto" else forced
    path = _library_file(here, CPU_ISAS[0], baseline=True)
    if path is None:
        return None, f"no _fastgen_cpu library in {here}: the C++ CPU kernels are built by `pip install .`"
    try:
        baseline = ctypes.CDLL(path)
        build = _build_string(baseline)
    except (OSError, AttributeError, ValueError) as exc:
        return None, (f"{path} cannot be used ({type(exc).__name__}: {exc}); it is probably from an older "
                      f"fastgen: rebuild it (pip install --no-build-isolation -e .)")
    libs, missing = {}, {}
    for k, isa in enumerate(build["set"]):
        file = path if k == 0 else _library_file(here, isa, baseline=False)
        if file is None:
            return None, (f"the CPU kernel build lists {isa} but {here} has no _fastgen_cpu_{isa} library: "
                          f"rebuild it (pip install --no-build-isolation -e .)")
        try:
            # Loading runs none of the library's ISA-specific code (csrc/cpu/isa.cpp): safe on any CPU.
            lib = baseline if k == 0 else ctypes.CDLL(file)
            other = _build_string(lib)
        except (OSError, AttributeError, ValueError) as exc:
            return None, f"{file} cannot be used ({type(exc).__name__}: {exc}); rebuild it"
        if (other["id"], other["set"], other["isa"]) != (build["id"], build["set"], isa):
            return None, (f"{file} is from another build than {path} (build {other['id']} vs {build['id']}): "
                          f"rebuild them together (pip install --no-build-isolation -e .)")
        required, available = _cpu_features(lib)
        libs[isa], missing[isa] = (lib, file, other["march"]), required - available
    try:
        isa = choose_cpu_library(build["set"], missing, forced)
    except RuntimeError as exc:
        if forced is not None:  # the user's own setting failed: impl="auto" must not hide it
            _cpu_info["setting_error"] = True
        return None, str(exc)
    lib, file, march = libs[isa]
    from . import _cpu_signatures

    try:
        _cpu_signatures.declare(lib)
    except RuntimeError as exc:  # a build that does not match these bindings must never be called
        return None, f"{file}: {exc}"
    _cpu_info.update(isa=isa, march=march or None, library=os.path.basename(file), built=list(build["set"]),
                     runnable=[i for i in build["set"] if not missing[i]], forced=forced, build_id=build["id"])
    return lib, None


def cpu_load_error() -> str | None:
    return _load_cpu()[1]


def cpu_setting_error() -> str | None:
    """The CPU library's load error where FASTGEN_CPU_ISA caused it (a typo, a level this CPU or
    this build lacks), else None: impl="auto" raises this instead of quietly running the reference."""
    error = _load_cpu()[1]
    return error if error is not None and _cpu_info.get("setting_error") else None


def cpu_lib():
    lib, error = _load_cpu()
    if lib is None:
        raise RuntimeError(error)
    return lib


def cpu_library_info() -> dict:
    """Which C++ CPU kernel library is loaded: ``isa`` (baseline / avx2 / avx512, or the
    ``march=...`` of a single-library build), its ``march``, file, the ISAs ``built`` together, those
    this CPU can ``runnable``, and ``forced`` (FASTGEN_CPU_ISA); ``{"error": ...}`` where none loads."""
    lib, error = _load_cpu()
    return dict(_cpu_info) if lib is not None else {"error": error}
