"""ctypes signatures of the C++ CPU kernels (csrc/cpu/*.cpp), and how to pass tensors to them."""
from __future__ import annotations

import ctypes

import torch

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int
_F32 = ctypes.c_float

# name -> argument types; every kernel returns int (0 on success)
SIGNATURES = {
    "fastgen_add_noise_cpu": [_INT, _P, _P, _P, _P, _I64, _P, _I64, _P, _I64, _I64],
    # dtype, sample, model, h1, h2, h3, h4, h1_dtype, h2_dtype, h3_dtype, h4_dtype, noise, out, state, index,
    # index_stride, coefs, num_rows, rng, clip, batch, per_sample
    "fastgen_sampling_step_cpu": [_INT, _P, _P, _P, _P, _P, _P, _INT, _INT, _INT, _INT, _P, _P, _P, _P, _I64, _P, _I64,
                                  _P, _F32, _I64, _I64],
    # mode, pred_dtype, x_dtype, pred, x0, noise, t, t_stride, abar, num_train, rng, batch, per_sample, sums,
    # residual
    "fastgen_diffusion_loss_fwd_cpu": [_INT, _INT, _INT, _P, _P, _P, _P, _I64, _P, _I64, _P, _I64, _I64, _P, _P],
    # mode, pred_dtype, x_dtype, pred, x0, noise, t, t_stride, abar, num_train, rng, scale, batch, per_sample,
    # grad_pred, grad_x0
    "fastgen_diffusion_loss_bwd_cpu": [_INT, _INT, _INT, _P, _P, _P, _P, _I64, _P, _I64, _P, _P, _I64, _I64, _P, _P],
    # from_dtype, to_dtype, in, out, n: the kernels' element conversions (tests/test_cpu_isa.py)
    "fastgen_convert_cpu": [_INT, _INT, _P, _P, _I64],
}

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


_CODES = {_P: "p", _I64: "l", _INT: "i", _F32: "f"}


def expected_signature(argtypes) -> str:
    """The signature string csrc/cpu/signature.h generates for a kernel returning int with these
    ctypes argument types (one letter per argument)."""
    return "i:" + "".join(_CODES[t] for t in argtypes)


def declare(lib: ctypes.CDLL) -> None:
    """Set every kernel's argtypes, after checking them against the signature the library itself
    exports for that kernel (generated from the C++ function type): calling a C function with
    other arguments than it takes corrupts memory instead of raising, so a stale or mismatched
    build is refused here, loudly, before any call."""
    for name, argtypes in SIGNATURES.items():
        try:
            exported = getattr(lib, name + "_signature")
        except AttributeError:
            raise RuntimeError(f"the CPU kernel library has no {name}_signature: it was built from other sources "
                               f"than this fastgen; rebuild it (pip install --no-build-isolation -e .)") from None
        exported.argtypes, exported.restype = [], ctypes.c_char_p
        built, expected = exported().decode(), expected_signature(argtypes)
        if built != expected:
            raise RuntimeError(f"{name} takes ({built}) in the built CPU library but fastgen calls it with ({expected}) "
                               f"(letters: i int, l int64, f float, p pointer); rebuild it (pip install "
                               f"--no-build-isolation -e .) or fix fastgen/_cpu_signatures.py")
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = _INT


def ptr(x: torch.Tensor | None) -> int | None:
    """The data pointer for a C argument (None for a missing optional tensor)."""
    return None if x is None else x.data_ptr()


def call(lib: ctypes.CDLL, name: str, *args) -> None:
    status = getattr(lib, name)(*args)
    if status != 0:
        raise RuntimeError(f"{name} failed with status {status}")
