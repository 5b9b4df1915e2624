"""fastgen.ops.add_noise: every implementation against add_noise_ref, noise statistics, gradients,
opcheck, torch.compile and bad input."""
import ctypes
import os
import shutil
import subprocess

import pytest
import torch

import fastgen
from fastgen import _rng
from fastgen.ops import add_noise, add_noise_ref
from fastgen.ops.add_noise import _add_noise_op
from helpers import KERNEL_DTYPES, TOLERANCE, assert_close, impl_params

T = 1000
SHAPES = [
    ((1, 1, 1, 1), False),  # minimal
    ((2, 3, 5, 7), False),  # odd sizes, nothing a multiple of a block
    ((3, 4, 8, 8), True),  # channels_last
    ((5, 2), False),  # 2-D toy data
    ((2, 3, 1100), False),  # a sample wider than one 1024 block
]


def alphas_cumprod(device="cpu"):
    return torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).float().to(device)


def make(shape, channels_last, dtype, device):
    x = torch.randn(shape, device=device).to(dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("shape,channels_last", SHAPES)
def test_given_noise_matches_reference(device, impl, dtype, shape, channels_last):
    x0 = make(shape, channels_last, dtype, device)
    noise = make(shape, channels_last, dtype, device)
    t = torch.randint(0, T, (shape[0],), device=device)
    table = alphas_cumprod(device)
    out = add_noise(x0, t, table, noise, impl=impl)
    assert out.dtype == dtype and out.stride() == x0.stride()
    assert_close(out, add_noise_ref(x0, t, table, noise), dtype)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("shape,channels_last", SHAPES)
def test_in_kernel_noise_matches_reference(device, impl, shape, channels_last):
    x0 = make(shape, channels_last, torch.float32, device)
    t = torch.randint(0, T, (shape[0],), device=device)
    table = alphas_cumprod(device)
    # offsets whose stream position crosses 2**32 and whose Philox call index (position >> 2) crosses
    # 2**32, one of each residue mod 4: the kernels draw four positions per Philox call, two calls
    # where a group of four straddles counters (offset or sample start not a multiple of 4)
    for offset in (2**32 - 3, 2**34 - 4 * 20 - 1, 2**33 + 2, 2**34 - 4 * 20):
        state = torch.tensor([2**40 + 17, offset], dtype=torch.int64, device=device)
        out = add_noise(x0, t, table, seed=state, impl=impl)
        # log/cos differ by an ulp or two between libm, CUDA, the interpreter and the CPU polynomials
        assert_close(out, add_noise_ref(x0, t, table, rng=state), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_in_kernel_noise_16bit(device, impl, dtype):
    """16-bit samples (the Triton kernel draws rows of 8 = two Philox calls, the CUDA one 8-wide
    vectors): every offset residue mod 4, a sample size that is a multiple of 4 and one that is not."""
    table = alphas_cumprod(device)
    for shape in [(2, 3, 8, 8), (3, 5, 7)]:
        x0 = make(shape, False, dtype, device)
        t = torch.randint(0, T, (shape[0],), device=device)
        for offset in range(2**32 - 4, 2**32):
            state = torch.tensor([2**40 + 17, offset], dtype=torch.int64, device=device)
            out = add_noise(x0, t, table, seed=state, impl=impl)
            assert_close(out, add_noise_ref(x0, t, table, rng=state), dtype)


def test_scalar_timestep_broadcasts_and_first_last_steps():
    x0, noise, table = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2), alphas_cumprod()
    assert_close(add_noise(x0, 0, table, noise), add_noise(x0, torch.zeros(4, dtype=torch.long), table, noise))
    abar = table.double()
    expected = abar[T - 1].sqrt() * x0.double() + (1 - abar[T - 1]).sqrt() * noise.double()
    assert_close(add_noise(x0, torch.tensor(T - 1), table, noise, impl="reference"), expected.float())


def test_matches_diffusers_add_noise():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
    x0, noise = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    t = torch.randint(0, T, (6,))
    expected = sched.add_noise(x0, noise, t)
    for impl in ["reference", "cpu"]:
        assert_close(add_noise(x0, t, sched.alphas_cumprod, noise, impl=impl), expected, atol=2e-6, rtol=2e-6)


def test_generator_noise_is_the_generators():
    x0, table = torch.randn(3, 2, 4, 4), alphas_cumprod()
    t = torch.tensor([1, 50, 900])
    out = add_noise(x0, t, table, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    assert_close(out, add_noise_ref(x0, t, table, noise))


@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_in_kernel_noise_statistics(impl):
    """eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar) at x0 = 0: N(0, 1), independent across elements and calls."""
    n = 1 << 20
    x0 = torch.zeros(4, n // 4)
    table = torch.zeros(T)  # abar = 0: x_t is eps itself
    eps = add_noise(x0, 0, table, seed=123, impl=impl).flatten().double()
    assert abs(eps.mean()) < 5 / n**0.5  # 5 standard errors
    assert abs(eps.var() - 1) < 5 * (2 / n) ** 0.5
    for q, z in [(0.5, 0.0), (0.8413, 1.0), (0.9772, 2.0), (0.0228, -2.0)]:
        assert abs((eps < z).double().mean() - q) < 3e-3, f"P(eps < {z}) is off"
    assert abs(torch.corrcoef(torch.stack([eps[:-1], eps[1:]]))[0, 1]) < 5 / n**0.5  # neighbours
    nxt = add_noise(x0, 0, table, seed=torch.tensor([123, n]), impl=impl).flatten().double()
    assert abs(torch.corrcoef(torch.stack([eps, nxt]))[0, 1]) < 5 / n**0.5  # the next offset: a new stream
    other = add_noise(x0, 0, table, seed=124, impl=impl).flatten().double()
    assert abs(torch.corrcoef(torch.stack([eps, other]))[0, 1]) < 5 / n**0.5  # another seed
    again = add_noise(x0, 0, table, seed=123, impl=impl).flatten().double()
    assert torch.equal(eps, again)  # same seed, same numbers
    # The state [seed, offset] continues the stream: offset k gives element k's number.
    shifted = add_noise(torch.zeros(1, 100), 0, table, seed=torch.tensor([123, 1000]), impl=impl).flatten().double()
    assert_close(shifted, eps[1000:1100], torch.float32)


@pytest.mark.skipif(shutil.which("g++") is None,
                    reason="g++ is not installed: csrc/philox.h cannot be built for the host")
def test_cuda_generator_header_matches_reference(tmp_path):
    """csrc/philox.h (the CUDA kernels' generator, host-compilable) against philox_normal_ref: four
    normals per call at every start residue mod 4, the one-element form, high seed and counter bits."""
    source = tmp_path / "philox_host.cpp"
    source.write_text(
        '#include "philox.h"\n'
        'extern "C" void normals4_at(uint64_t seed, const uint64_t* pos, int n, float* out) {\n'
        '  for (int i = 0; i < n; ++i) { const fastgen::Normal4 z = fastgen::philox_normal4_at(seed, pos[i]);\n'
        '    for (int j = 0; j < 4; ++j) out[4 * i + j] = z.v[j]; } }\n'
        'extern "C" void normal1(uint64_t seed, const uint64_t* pos, int n, float* out) {\n'
        '  for (int i = 0; i < n; ++i) out[i] = fastgen::philox_normal(seed, pos[i]); }\n')
    csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    lib_path = tmp_path / "philox_host.so"
    subprocess.run([shutil.which("g++"), "-O2", "-std=c++17", "-shared", "-fPIC", "-I", csrc, str(source), "-o",
                    str(lib_path)], check=True, capture_output=True)
    lib = ctypes.CDLL(str(lib_path))
    seed = 2**40 + 17
    for first in (0, 2**32 - 3, 2**34 - 6, 2**34 - 1, 2**35 + 4):  # residues 0, 1, 2, 3, 0; calls past 2**32
        positions = torch.arange(first, first + 64, dtype=torch.int64)
        got4, got1 = torch.empty(64, 4), torch.empty(64)
        pos = ctypes.c_void_p(positions.data_ptr())
        lib.normals4_at(ctypes.c_uint64(seed), pos, 64, ctypes.c_void_p(got4.data_ptr()))
        lib.normal1(ctypes.c_uint64(seed), pos, 64, ctypes.c_void_p(got1.data_ptr()))
        ref = _rng.philox_normal_ref(torch.tensor([seed, first]), 64 + 3)
        expected4 = torch.stack([ref[j:j + 64] for j in range(4)], dim=1)  # row i: positions first + i .. + 3
        assert_close(got4, expected4, atol=1e-5, rtol=1e-5)
        assert_close(got1, ref[:64], atol=1e-5, rtol=1e-5)


def test_seed_none_follows_torch_manual_seed():
    x0, table = torch.randn(2, 8), alphas_cumprod()
    torch.manual_seed(3)
    a = add_noise(x0, 5, table)
    torch.manual_seed(3)
    assert torch.equal(a, add_noise(x0, 5, table))
    assert not torch.equal(a, add_noise(x0, 5, table))


def test_philox_reference_known_answer():
    # Philox4x32-10 known-answer vector of Salmon et al. (Random123 kat_vectors): counter
    # (0, 0, 0, 0), key (0, 0) -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8.
    out = _rng.philox4x32_ref(torch.tensor(0), torch.tensor([0]))
    assert [int(v) for v in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("device,impl", impl_params())
def test_gradients_match_reference(device, impl):
    x0 = torch.randn(3, 2, 5, 5, device=device, requires_grad=True)
    noise = torch.randn(3, 2, 5, 5, device=device, requires_grad=True)
    t, table = torch.tensor([3, 400, 999], device=device), alphas_cumprod(device)
    grad = torch.randn(3, 2, 5, 5, device=device)
    got = torch.autograd.grad(add_noise(x0, t, table, noise, impl=impl), (x0, noise), grad)
    want = torch.autograd.grad(add_noise_ref(x0, t, table, noise), (x0, noise), grad)
    for g, w, name in zip(got, want, ["grad x0", "grad noise"]):
        assert_close(g, w, name=name)


def test_gradcheck_and_gradgradcheck_float64():
    x0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    t, table = torch.tensor([10, 700]), alphas_cumprod()
    fn = lambda a, b: add_noise(a, t, table, b)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x0, noise))
    assert torch.autograd.gradgradcheck(fn, (x0, noise))


@pytest.mark.parametrize("device,impl", impl_params())
def test_opcheck(device, impl):
    x0 = torch.randn(2, 3, 4, 4, device=device, requires_grad=True)
    t = torch.tensor([1, 2], device=device)
    table = alphas_cumprod(device)
    torch.library.opcheck(_add_noise_op, (x0, t, table, torch.randn_like(x0), None, impl))
    state = torch.tensor([1, 0], device=device)
    torch.library.opcheck(_add_noise_op, (x0.detach(), t, table, None, state, impl),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_compile_fullgraph():
    x0, t, table = torch.randn(2, 3, 4, 4), torch.tensor([1, 900]), alphas_cumprod()
    noise = torch.randn_like(x0)

    def step(x, n):
        return add_noise(x, t, table, n) * 2 + add_noise(x, t, table, seed=7)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert_close(compiled(x0, noise), step(x0, noise))


def test_nan_in_input_propagates_without_crash():
    x0 = torch.randn(2, 3, 4)
    x0[0, 1, 2] = float("nan")
    x0[1, 0, 0] = float("inf")
    for impl in ["reference", "cpu"]:
        out = add_noise(x0, 10, alphas_cumprod(), torch.zeros_like(x0), impl=impl)
        assert out[0, 1, 2].isnan() and out[1, 0, 0].isinf() and out.isfinite().sum() == out.numel() - 2


def test_float64_runs_reference_and_explicit_kernel_refuses():
    x0 = torch.randn(2, 4, dtype=torch.float64)
    out = add_noise(x0, 1, alphas_cumprod(), torch.randn_like(x0))
    assert out.dtype == torch.float64
    with pytest.raises(fastgen.ImplUnavailableError, match="float64"):
        add_noise(x0, 1, alphas_cumprod(), torch.randn_like(x0), impl="cpu")


@pytest.mark.parametrize("call,error,match", [
    (lambda x, tb: add_noise(x, torch.tensor([1, 2, 3]), tb), ValueError, r"timesteps must be a scalar or of shape \(2,\)"),
    (lambda x, tb: add_noise(x, 1000, tb), ValueError, r"timesteps must lie in \[0, 999\]"),
    (lambda x, tb: add_noise(x, torch.tensor([-1, 3]), tb), ValueError, r"timesteps must lie in"),
    (lambda x, tb: add_noise(x, torch.tensor([1.0, 2.0]), tb), TypeError, "integer tensor"),
    (lambda x, tb: add_noise(x, 1.5, tb), TypeError, "timesteps must be an int"),
    (lambda x, tb: add_noise(x.long(), 1, tb), TypeError, "x0 must be a floating tensor"),
    (lambda x, tb: add_noise(x, 1, tb, torch.randn(2, 3)), ValueError, r"noise must have the shape of x0 \(2, 4\)"),
    (lambda x, tb: add_noise(x, 1, tb, torch.randn(2, 4, device="meta")), ValueError, "noise is on meta"),
    (lambda x, tb: add_noise(x, 1, tb.view(10, 100)), ValueError, "alphas_cumprod must be a non-empty 1-D"),
    (lambda x, tb: add_noise(x, 1, tb, seed=-1), ValueError, r"seed must lie in \[0, 2\*\*63\)"),
    (lambda x, tb: add_noise(x, 1, tb, seed=torch.tensor([1])), ValueError, "Philox state"),
    (lambda x, tb: add_noise(x, 1, tb, torch.randn(2, 4), seed=3), ValueError, "seed must be None"),
    (lambda x, tb: add_noise(x, 1, tb, impl="fast"), ValueError, "impl must be 'auto' or one of"),
    (lambda x, tb: add_noise(x, 1, tb, impl="cuda"), fastgen.ImplUnavailableError, "cuda"),
    (lambda x, tb: add_noise(x, 1, tb, generator=[torch.Generator()]*3), ValueError, "one per sample"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(2, 4), alphas_cumprod())


def test_empty_batch():
    out = add_noise(torch.randn(0, 3), torch.zeros(0, dtype=torch.long), alphas_cumprod(), torch.randn(0, 3))
    assert out.shape == (0, 3)


def test_non_dense_input_is_handled():
    x = torch.randn(4, 6, 8)[:, ::2]  # a strided view the kernels cannot walk directly
    noise = torch.randn(4, 3, 8)
    for impl in ["cpu", "reference"]:
        assert_close(add_noise(x, 3, alphas_cumprod(), noise, impl=impl), add_noise_ref(x.contiguous(), torch.full((4,), 3), alphas_cumprod(), noise))


def test_set_impl_and_environment(monkeypatch):
    monkeypatch.setattr(fastgen._impl, "_default_impl", None)
    monkeypatch.setenv("FASTGEN_IMPL", "reference")
    assert fastgen.get_impl() == "reference"
    fastgen.set_impl("auto")
    assert fastgen.get_impl() == "auto"
    with pytest.raises(ValueError, match="impl must be"):
        fastgen.set_impl("gpu")
    monkeypatch.setattr(fastgen._impl, "_default_impl", None)
    monkeypatch.setenv("FASTGEN_IMPL", "bogus")
    with pytest.raises(ValueError, match="FASTGEN_IMPL"):
        fastgen.get_impl()
    monkeypatch.setattr(fastgen._impl, "_default_impl", None)
    assert TOLERANCE  # tolerance table is importable for other tests
