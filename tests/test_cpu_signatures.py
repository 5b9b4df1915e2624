"""The ctypes bindings of the C++ CPU kernels are checked against the argument lists the built
library exports (generated from the C++ function types by csrc/cpu/signature.h): a mismatch is
refused at load, never called."""
import ctypes

import pytest

from fastgen import _cpu_signatures, _native


@pytest.fixture
def lib():
    if _native.cpu_load_error() is not None:
        pytest.skip(f"the C++ CPU kernels are not built: {_native.cpu_load_error()}")
    return _native.cpu_lib()


def test_every_kernel_matches_its_exported_signature(lib):
    for name, argtypes in _cpu_signatures.SIGNATURES.items():
        exported = getattr(lib, name + "_signature")
        exported.restype = ctypes.c_char_p
        assert exported().decode() == _cpu_signatures.expected_signature(argtypes), name
    _cpu_signatures.declare(lib)  # and declaring them raises nothing


@pytest.mark.parametrize("change", ["drop", "swap", "widen"])
def test_a_mismatched_binding_is_refused(lib, monkeypatch, change):
    name = "fastgen_sampling_step_cpu"
    argtypes = list(_cpu_signatures.SIGNATURES[name])
    if change == "drop":
        argtypes.pop()  # one argument short
    elif change == "swap":
        argtypes[-3], argtypes[-4] = argtypes[-4], argtypes[-3]  # clip (float) and rng (pointer) swapped
    else:
        argtypes[0] = ctypes.c_int64  # the dtype code as int64
    monkeypatch.setitem(_cpu_signatures.SIGNATURES, name, argtypes)
    with pytest.raises(RuntimeError, match=f"{name} takes .* but fastgen calls it with"):
        _cpu_signatures.declare(lib)
