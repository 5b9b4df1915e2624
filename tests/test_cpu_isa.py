"""The C++ CPU kernels' ISA libraries (setup.py: baseline x86-64-v2, avx2 = x86-64-v3, avx512 =
x86-64-v4, chosen at run time by fastgen/_native.py): the choice with faked CPU features, a forced
level the CPU cannot run or the build lacks, a library of another build refused; and in each
library this CPU runs, the kernels' 16-bit conversions (F16C in avx2 / avx512, arithmetic in the
baseline and in every tile's tail) bit for bit against torch (all 65536 halves, a dense float
sweep with every rounding tie), and a fast subset of the kernels' own parity tests. A single-library
FASTGEN_CPU_MARCH build skips the per-library tests (the rest of the suite tests that library)."""
import ctypes
import os

import pytest
import torch

import test_add_noise
import test_diffusion_loss
import test_sampling_step
from fastgen import _cpu_signatures, _impl, _native
from fastgen.ops import add_noise

ISAS = _native.CPU_ISAS
V4 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
V3 = {"avx", "avx2", "fma", "f16c", "bmi", "bmi2", "lzcnt", "movbe"}


def missing_for(cpu_lacks: set) -> dict:
    """What each portable library lacks on a CPU without ``cpu_lacks`` (their -march feature sets)."""
    needs = {"baseline": {"sse4.2", "popcnt"}, "avx2": {"sse4.2", "popcnt"} | V3,
             "avx512": {"sse4.2", "popcnt"} | V3 | V4}
    return {isa: needs[isa] & cpu_lacks for isa in ISAS}


@pytest.mark.parametrize("cpu_lacks,want", [
    (set(), "avx512"),
    ({"avx512vl"}, "avx2"),  # one AVX-512 extension missing is enough
    (V4, "avx2"),  # e.g. AVX-512 present but not enabled by the OS: the probe reports none of it
    ({"f16c"} | V4, "baseline"),
    ({"avx2"}, "baseline"),
])
def test_auto_picks_the_best_library_the_cpu_runs(cpu_lacks, want):
    assert _native.choose_cpu_library(ISAS, missing_for(cpu_lacks), None) == want


def test_forcing_a_level():
    assert _native.choose_cpu_library(ISAS, missing_for(V4), "baseline") == "baseline"
    assert _native.choose_cpu_library(ISAS, missing_for(set()), "avx2") == "avx2"
    with pytest.raises(RuntimeError, match=r"FASTGEN_CPU_ISA=avx512: the avx512 library needs avx512bw, avx512cd, "
                                           r"avx512dq, avx512f, avx512vl, which this CPU .* lacks; it can run baseline, avx2"):
        _native.choose_cpu_library(ISAS, missing_for(V4), "avx512")
    with pytest.raises(RuntimeError, match=r"FASTGEN_CPU_ISA must be 'auto' or one of .*, got 'sse9'"):
        _native.choose_cpu_library(ISAS, missing_for(set()), "sse9")


def test_single_library_builds():
    """FASTGEN_CPU_MARCH builds one library: no level to force, and one built for another CPU is refused."""
    built = ("march=native",)
    assert _native.choose_cpu_library(built, {"march=native": set()}, None) == "march=native"
    with pytest.raises(RuntimeError, match=r"FASTGEN_CPU_ISA=avx2: this build has no avx2 CPU library \(it has march=native\)"):
        _native.choose_cpu_library(built, {"march=native": set()}, "avx2")
    with pytest.raises(RuntimeError, match=r"can run none .* needs avx512f, .* built with FASTGEN_CPU_MARCH for another CPU"):
        _native.choose_cpu_library(built, {"march=native": {"avx512f"}}, None)


def _portable_build() -> dict:
    info = _native.cpu_library_info()
    if "error" in info:
        pytest.skip(f"the C++ CPU kernels are not built: {info['error']}")
    if tuple(info["built"]) != ISAS:
        pytest.skip(f"this build is one library ({info['built']}), not the portable x86-64 set")
    return info


@pytest.fixture
def reload_cpu(monkeypatch):
    """Load the CPU library afresh under the environment a test sets, and again after it."""
    def reload(isa: str | None):
        if isa is None:
            monkeypatch.delenv("FASTGEN_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("FASTGEN_CPU_ISA", isa)
        _native._load_cpu.cache_clear()
        return _native.cpu_library_info()

    yield reload
    monkeypatch.undo()
    _native._load_cpu.cache_clear()


def test_loader_on_a_cpu_without_avx512(reload_cpu, monkeypatch):
    """The real libraries, with the CPU probe's answer stripped of AVX-512: auto loads avx2, and
    forcing avx512 makes impl="cpu" and impl="auto" raise the loader's message (a setting the user
    made must not quietly turn into the reference's speed)."""
    _portable_build()
    probe = _native._cpu_features
    monkeypatch.setattr(_native, "_cpu_features", lambda lib: (probe(lib)[0], probe(lib)[1] - V4))
    info = reload_cpu(None)
    assert info["isa"] == "avx2" and info["runnable"] == ["baseline", "avx2"], info
    info = reload_cpu("avx512")
    assert "FASTGEN_CPU_ISA=avx512: the avx512 library needs avx512bw" in info["error"]
    x = torch.randn(2, 3, 4, 4)
    for impl in ("cpu", "auto"):
        with pytest.raises(_impl.ImplUnavailableError, match="FASTGEN_CPU_ISA=avx512: the avx512 library needs"):
            add_noise(x, torch.tensor([3, 7]), torch.linspace(0.99, 0.01, 10), torch.randn_like(x), impl=impl)
    reload_cpu("avx-512")  # a typo: a clear error under auto too
    with pytest.raises(_impl.ImplUnavailableError, match="FASTGEN_CPU_ISA must be 'auto' or one of"):
        add_noise(x, torch.tensor([3, 7]), torch.linspace(0.99, 0.01, 10), torch.randn_like(x), impl="auto")


def test_a_library_of_another_build_is_refused(reload_cpu, monkeypatch):
    _portable_build()
    build_string = _native._build_string

    def stale_avx2(lib):
        info = build_string(lib)
        return dict(info, id="0" * 16) if info["isa"] == "avx2" else info

    monkeypatch.setattr(_native, "_build_string", stale_avx2)
    assert "_fastgen_cpu_avx2" in reload_cpu("baseline")["error"]
    assert "is from another build" in _native.cpu_load_error()


@pytest.fixture(params=ISAS)
def isa(request, reload_cpu):
    """Each portable library in turn, skipped where this CPU cannot run it."""
    runnable = _portable_build()["runnable"]
    if request.param not in runnable:
        pytest.skip(f"this CPU runs only {runnable}")
    info = reload_cpu(request.param)
    assert info["isa"] == request.param and info["march"] == f"x86-64-v{ISAS.index(request.param) + 2}", info
    return request.param


CODES = _cpu_signatures.DTYPE_CODES


def convert(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x converted by the loaded library's fastgen_convert_cpu (the kernels' to_float / from_float)."""
    out = torch.empty(x.shape, dtype=dtype)
    _cpu_signatures.call(_native.cpu_lib(), "fastgen_convert_cpu", CODES[x.dtype], CODES[dtype], x.data_ptr(),
                         out.data_ptr(), x.numel())
    return out


def float_sweep() -> torch.Tensor:
    """Floats of every sign and exponent with each top-10-bit mantissa (a half's) and low 13 bits
    0, 1, just below / at / just above the half-ulp tie, all ones: every rounding tie of a normal
    half, and with the top bits those of the subnormal halves, and NaN / inf patterns; plus the
    overflow threshold and NaN payloads."""
    top = torch.arange(1024, dtype=torch.int64) << 13
    low = torch.tensor([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF], dtype=torch.int64)
    exponent = torch.arange(256, dtype=torch.int64) << 23
    bits = (exponent[:, None, None] | top[None, :, None] | low[None, None, :]).flatten()
    bits = torch.cat([bits, bits | (1 << 31)])
    f = (bits - ((bits >> 31) << 32)).to(torch.int32).view(torch.float32)  # two's complement int32
    extra = torch.tensor([65504.0, 65519.996, 65520.0, 65536.0, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 2.0**-26,
                          float("inf"), -float("inf"), float("nan")])
    return torch.cat([f, extra, -extra, torch.randn(4099) * 1000])  # a length no vector width divides


def test_half_and_bfloat16_conversions_are_torchs(isa):
    halves = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16)
    got, want = convert(halves, torch.float32), halves.float()
    # bit for bit, NaN payloads included (torch's vcvtph2ps keeps them and so does fastgen)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32)), isa
    f = float_sweep()
    nan = torch.isnan(f)
    for dtype in (torch.float16, torch.bfloat16):
        got, want = convert(f, dtype), f.to(dtype)
        same = got.view(torch.int16) == want.view(torch.int16)
        assert bool(same[~nan].all()), (isa, dtype, f[~nan][~same[~nan]][:8])
        assert bool(torch.isnan(got[nan]).all())
        if dtype == torch.float16:  # sign and top payload bits kept, made quiet: vcvtps2ph's (torch's) bits
            assert bool(same[nan].all()), (isa, f.view(torch.int32)[nan][~same[nan]][:8])


def test_kernels_match_their_references_in_each_library(isa):
    """A fast subset of the kernels' own parity tests, run with this library loaded."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for shape in [(1, 1, 1, 1), (2, 3, 5, 7), (2, 3, 1100)]:
            for num_history in (0, 1, 4):
                test_sampling_step.test_matches_float64_formula("cpu", "cpu", dtype, shape, False, num_history)
            test_add_noise.test_given_noise_matches_reference("cpu", "cpu", dtype, shape, False)
            test_diffusion_loss.test_matches_reference_with_seed("cpu", "cpu", dtype, "v_prediction", shape, False)
        test_sampling_step.test_philox_noise_at_every_offset_residue("cpu", "cpu", dtype)
        test_diffusion_loss.test_matches_reference_with_noise("cpu", "cpu", dtype, "epsilon")
    test_add_noise.test_in_kernel_noise_matches_reference("cpu", "cpu", (2, 3, 5, 7), False)
    for history in ("1.3.", "1234"):
        test_sampling_step.test_switches("cpu", "cpu", "philox", history, 0.5)
