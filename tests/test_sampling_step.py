"""fastgen.ops.sampling_step: every implementation against sampling_step_ref, the switches (clip,
prev_x0, noise source, x0 output, index broadcast), noise-free rows, gradients, opcheck,
torch.compile, NaN propagation, diffusers' DDIM / DDPM steps and bad input."""
import pytest
import torch

import fastgen
from fastgen.ops import NUM_COEFS, sampling_step, sampling_step_ref
from fastgen.ops.sampling_step import SZ, _sampling_step_op
from helpers import KERNEL_DTYPES, assert_close, impl_params

ROWS = 7
SHAPES = [
    ((1, 1, 1, 1), False),  # minimal
    ((2, 3, 5, 7), False),  # odd sizes, nothing a multiple of a block or a vector
    ((3, 4, 8, 8), True),  # channels_last
    ((5, 2), False),  # 2-D toy data
    ((2, 3, 1100), False),  # a sample wider than one 1024 block
]


def coef_table(device="cpu", rows=ROWS):
    """Random rows in [-1, 1): every column matters, none is a special value by accident."""
    return (torch.rand(rows, NUM_COEFS, device=device) * 2 - 1).contiguous()


def make(shape, channels_last, dtype, device):
    x = torch.randn(shape, device=device).to(dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def reference(x, m, coefs, index, prev=None, noise=None, rng=None, clip=None):
    """The float32 reference, with the index in the (B,) form the op takes."""
    index = torch.as_tensor(index, device=x.device).reshape(-1).expand(x.shape[0])
    return sampling_step_ref(x, m, coefs, index, prev, noise, rng, clip, return_x0=True)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("shape,channels_last", SHAPES)
@pytest.mark.parametrize("prev_dtype", ["same", torch.float32])
def test_matches_reference(device, impl, dtype, shape, channels_last, prev_dtype):
    x, m, noise = (make(shape, channels_last, dtype, device) for _ in range(3))
    prev = make(shape, channels_last, dtype if prev_dtype == "same" else prev_dtype, device)
    coefs = coef_table(device)
    index = torch.randint(0, ROWS, (shape[0],), device=device)
    out, x0 = sampling_step(x, m, coefs, index, prev_x0=prev, noise=noise, clip_range=0.8, return_x0=True, impl=impl)
    assert out.dtype == dtype and out.stride() == x.stride() and x0.dtype == torch.float32 and x0.stride() == x.stride()
    want_out, want_x0 = reference(x, m, coefs, index, prev, noise, clip=0.8)
    assert_close(out, want_out, dtype)
    assert_close(x0, want_x0, torch.float32, name="x0")


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("noise_mode", ["none", "tensor", "philox", "generator"])
@pytest.mark.parametrize("with_prev", [False, True])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_switches(device, impl, noise_mode, with_prev, clip):
    shape = (3, 2, 5, 7)
    x, m, prev, noise = (torch.randn(shape, device=device) for _ in range(4))
    prev = prev if with_prev else None
    coefs = coef_table(device)
    state = torch.tensor([2**40 + 17, 2**32 - 3], dtype=torch.int64, device=device)  # counter crosses 2**32
    for index in [torch.tensor([6, 0, 3], device=device), torch.tensor([4], device=device), 2]:
        kwargs, ref_noise, ref_rng = {}, None, None
        if noise_mode == "tensor":
            kwargs["noise"] = ref_noise = noise
        elif noise_mode == "philox":
            kwargs["seed"] = ref_rng = state
        elif noise_mode == "generator":
            kwargs["generator"] = torch.Generator(device).manual_seed(11)
            ref_noise = torch.randn(shape, generator=torch.Generator(device).manual_seed(11), device=device)
        want_out, want_x0 = reference(x, m, coefs, index, prev, ref_noise, ref_rng, clip)
        for return_x0 in [False, True]:
            if noise_mode == "generator":
                kwargs["generator"] = torch.Generator(device).manual_seed(11)
            out, x0 = sampling_step(x, m, coefs, index, prev_x0=prev, clip_range=clip, return_x0=return_x0,
                                    impl=impl, **kwargs)
            # Philox: log/cos differ by an ulp or two between libm, CUDA and the interpreter
            assert_close(out, want_out, atol=1e-5, rtol=1e-5)
            if return_x0:
                assert_close(x0, want_x0, name="x0")
            else:
                assert x0 is None


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rows_without_noise_never_touch_it(device, impl, dtype):
    """SZ == 0 (DDIM eta = 0, DDPM's last step): NaN noise in those samples must not reach out."""
    coefs = coef_table(device)
    coefs[[1, 4], SZ] = 0.0
    index = torch.tensor([1, 0, 4, 2], device=device)
    x, m, noise = (torch.randn(4, 3, 6, 5, device=device).to(dtype) for _ in range(3))
    noise[[0, 2]] = float("nan")
    out, _ = sampling_step(x, m, coefs, index, noise=noise, impl=impl)
    assert out[[0, 2]].isfinite().all()
    assert_close(out, reference(x, m, coefs, index, noise=noise.nan_to_num(0.0))[0], dtype)
    # Philox rows with SZ == 0 equal the noise-free step
    out, _ = sampling_step(x, m, coefs, index, seed=5, impl=impl)
    assert_close(out[[0, 2]], reference(x, m, coefs, index)[0][[0, 2]], dtype)


def _loss_grads(outputs, inputs, seeds):
    grads = [torch.randn(o.shape, generator=torch.Generator().manual_seed(s)).to(o) for o, s in zip(outputs, seeds)]
    return torch.autograd.grad(outputs, inputs, grads)


@pytest.mark.parametrize("device,impl", impl_params())
def test_gradients_match_reference(device, impl):
    leaves = [torch.randn(3, 2, 5, 5, device=device, requires_grad=True) for _ in range(4)]
    coefs, index = coef_table(device), torch.tensor([0, 5, 3], device=device)
    x, m, prev, noise = leaves
    got = sampling_step(x, m, coefs, index, prev_x0=prev, noise=noise, clip_range=1.0, return_x0=True, impl=impl)
    want = sampling_step_ref(x, m, coefs, index, prev, noise, None, 1.0, True)
    for g, w, name in zip(_loss_grads(got, leaves, [1, 2]), _loss_grads(want, leaves, [1, 2]),
                          ["grad sample", "grad model_output", "grad prev_x0", "grad noise"]):
        assert_close(g, w, name=name)


def test_gradcheck_and_gradgradcheck_float64():
    args = [torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    coefs, index = coef_table().double().float(), torch.tensor([1, 6])

    def fn(x, m, prev, noise):
        return sampling_step(x, m, coefs, index, prev_x0=prev, noise=noise, clip_range=1.0, return_x0=True)

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("device,impl", impl_params())
def test_opcheck(device, impl):
    x = torch.randn(2, 3, 4, 4, device=device, requires_grad=True)
    m, prev, noise = torch.randn_like(x), torch.randn_like(x), torch.randn_like(x)
    coefs, index = coef_table(device), torch.tensor([1, 2], device=device)
    torch.library.opcheck(_sampling_step_op, (x, m, coefs, index, prev, noise, None, 1.0, True, impl))
    state = torch.tensor([1, 0], device=device)
    torch.library.opcheck(_sampling_step_op, (x.detach(), m, coefs, index.expand(2), None, None, state, None, False, impl),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_compile_fullgraph():
    x, m, prev, noise = (torch.randn(2, 3, 4, 4) for _ in range(4))
    coefs, index = coef_table(), torch.tensor([1, 5])

    def step(x, m, prev, noise):
        out, x0 = sampling_step(x, m, coefs, index, prev_x0=prev, noise=noise, clip_range=1.0, return_x0=True)
        again, _ = sampling_step(out, m, coefs, 3, prev_x0=x0, seed=7)
        return again * 2 + x0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert_close(compiled(x, m, prev, noise), step(x, m, prev, noise))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, under the interpreter
@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("clip", [None, 1.0])
def test_nan_and_inf_in_model_output_propagate(device, impl, clip):
    x, m = torch.randn(2, 3, 4, device=device), torch.randn(2, 3, 4, device=device)
    m[0, 1, 2], m[1, 0, 0] = float("nan"), float("inf")
    coefs, index = coef_table(device), torch.tensor([2, 3], device=device)
    out, x0 = sampling_step(x, m, coefs, index, clip_range=clip, return_x0=True, impl=impl)
    want_out, want_x0 = reference(x, m, coefs, index, clip=clip)
    assert out[0, 1, 2].isnan() and x0[0, 1, 2].isnan() and not out[1, 0, 0].isfinite()
    assert_close(out, want_out)
    assert_close(x0, want_x0, name="x0")


def _ddim_coefs(abar_t, abar_prev, clip):
    """DDIM (eta = 0, epsilon prediction) as a coefficient row (Song et al. 2021, eq. 12)."""
    row = torch.zeros(NUM_COEFS, dtype=torch.float64)
    row[0], row[1] = 1 / abar_t.sqrt(), -(1 - abar_t).sqrt() / abar_t.sqrt()  # x0 = (x - sqrt(1-a) e) / sqrt(a)
    if clip:  # eps recomputed from the clipped x0 (diffusers' use_clipped_model_output)
        row[2], row[4] = 1 / (1 - abar_t).sqrt(), -abar_t.sqrt() / (1 - abar_t).sqrt()
    else:
        row[3] = 1.0
    row[6], row[7] = abar_prev.sqrt(), (1 - abar_prev).sqrt()
    return row.float()


@pytest.mark.parametrize("impl", ["cpu", "reference"])
@pytest.mark.parametrize("clip", [False, True])
def test_matches_diffusers_ddim_step(impl, clip):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=clip)
    sched.set_timesteps(50)
    x, m = torch.randn(4, 3, 8, 8) * 3, torch.randn(4, 3, 8, 8)
    t = int(sched.timesteps[10])
    expected = sched.step(m, t, x, use_clipped_model_output=clip)
    abar = sched.alphas_cumprod.double()
    coefs = _ddim_coefs(abar[t], abar[t - 1000 // 50], clip)[None]
    out, x0 = sampling_step(x, m, coefs, 0, clip_range=1.0 if clip else None, return_x0=True, impl=impl)
    assert_close(out, expected.prev_sample, atol=2e-5, rtol=2e-5)
    assert_close(x0, expected.pred_original_sample, atol=2e-5, rtol=2e-5, name="x0")


@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_matches_diffusers_ddpm_step_with_generator(impl):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    sched.set_timesteps(1000)
    x, m = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t = 500
    expected = sched.step(m, t, x, generator=torch.Generator().manual_seed(3)).prev_sample
    abar = sched.alphas_cumprod.double()
    a_t, a_prev = abar[t], abar[t - 1]
    alpha, beta = a_t / a_prev, 1 - a_t / a_prev
    row = torch.zeros(NUM_COEFS, dtype=torch.float64)
    row[0], row[1] = 1 / a_t.sqrt(), -(1 - a_t).sqrt() / a_t.sqrt()
    row[6], row[5] = a_prev.sqrt() * beta / (1 - a_t), alpha.sqrt() * (1 - a_prev) / (1 - a_t)
    row[SZ] = ((1 - a_prev) / (1 - a_t) * beta).sqrt()
    out, _ = sampling_step(x, m, row.float()[None], 0, generator=torch.Generator().manual_seed(3), impl=impl)
    assert_close(out, expected, atol=2e-5, rtol=2e-5)


def test_mixed_dtypes_are_converted_for_the_kernels():
    x = torch.randn(2, 3, 4).half()
    m, prev = torch.randn(2, 3, 4), torch.randn(2, 3, 4).bfloat16()  # float32 model, bfloat16 prev_x0
    coefs = coef_table()
    out, _ = sampling_step(x, m, coefs, 1, prev_x0=prev, impl="cpu")
    assert out.dtype == torch.float16
    assert_close(out, reference(x, m.half(), coefs, 1, prev)[0], torch.float16)
    assert_close(sampling_step(x, m, coefs, 1, prev_x0=prev, impl="reference")[0], reference(x, m, coefs, 1, prev)[0])


def test_empty_batch_float64_and_non_dense():
    coefs = coef_table()
    out, x0 = sampling_step(torch.randn(0, 3), torch.randn(0, 3), coefs, torch.zeros(0, dtype=torch.long),
                            return_x0=True, impl="cpu")
    assert out.shape == (0, 3) and x0.shape == (0, 3)
    x = torch.randn(2, 4, dtype=torch.float64)
    assert sampling_step(x, x, coefs, 1)[0].dtype == torch.float64
    with pytest.raises(fastgen.ImplUnavailableError, match="float64"):
        sampling_step(x, x, coefs, 1, impl="cpu")
    x, m = torch.randn(4, 6, 8)[:, ::2], torch.randn(4, 8, 3).transpose(1, 2)  # strided views
    assert_close(sampling_step(x, m, coefs, 3, impl="cpu")[0], reference(x.contiguous(), m.contiguous(), coefs, 3)[0])


def _bad(**kw):
    x = torch.randn(2, 4)
    args = dict(sample=x, model_output=torch.randn(2, 4), coefs=coef_table(), index=torch.tensor([0, 1]))
    args.update(kw)
    return lambda: sampling_step(**args)


@pytest.mark.parametrize("call,error,match", [
    (_bad(coefs=torch.rand(ROWS, 9)), ValueError, r"coefs must be a float32 table of shape \(N, 10\)"),
    (_bad(coefs=torch.rand(ROWS, NUM_COEFS, dtype=torch.float64)), ValueError, "coefs must be a float32 table"),
    (_bad(coefs=torch.rand(0, NUM_COEFS)), ValueError, "coefs must be a float32 table"),
    (_bad(coefs=[0.0] * NUM_COEFS), TypeError, "coefs must be a torch.Tensor"),
    (_bad(coefs=torch.rand(ROWS, NUM_COEFS, device="meta")), ValueError, "coefs is on meta"),
    (_bad(index=torch.tensor([0, ROWS])), ValueError, r"index must lie in \[0, 6\]"),
    (_bad(index=-1), ValueError, r"index must lie in \[0, 6\]"),
    (_bad(index=torch.tensor([0.0, 1.0])), TypeError, "index must be an integer tensor"),
    (_bad(index=torch.tensor([0, 1, 2])), ValueError, r"index must be a scalar or of shape \(2,\)"),
    (_bad(model_output=torch.randn(2, 5)), ValueError, r"model_output must have the shape of sample \(2, 4\)"),
    (_bad(model_output=torch.randn(2, 4, device="meta")), ValueError, "model_output is on meta"),
    (_bad(prev_x0=torch.randn(4, 2)), ValueError, "prev_x0 must have the shape of sample"),
    (_bad(noise=torch.randn(2, 4, device="meta")), ValueError, "noise is on meta"),
    (_bad(sample=torch.ones(2, 4, dtype=torch.long)), TypeError, "sample must be a floating tensor"),
    (_bad(clip_range=0.0), ValueError, "clip_range must be a positive number"),
    (_bad(clip_range=float("nan")), ValueError, "clip_range must be a positive number"),
    (_bad(clip_range="1"), TypeError, "clip_range must be a positive number"),
    (_bad(noise=torch.randn(2, 4), seed=3), ValueError, "seed must be None"),
    (_bad(generator=torch.Generator(), seed=3), ValueError, "seed must be None"),
    (_bad(seed=torch.tensor([1])), ValueError, "Philox state"),
    (_bad(impl="cuda"), fastgen.ImplUnavailableError, "cuda"),
    (_bad(impl="fast"), ValueError, "impl must be 'auto' or one of"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_cpu_philox_matches_reference_over_many_tiles():
    """The vectorised CPU Philox (libmvec log/cos) against the reference across tiles, chunks and samples."""
    x, m = torch.randn(2, 40001), torch.randn(2, 40001)  # 3 chunks of 16384 per sample, 158 tiles of 512 in all
    coefs = torch.zeros(1, NUM_COEFS)
    coefs[0, SZ] = 1.0  # out = z
    state = torch.tensor([987654321, 2**32 - 5000], dtype=torch.int64)
    out, _ = sampling_step(x, m, coefs, 0, seed=state, impl="cpu")
    assert_close(out, sampling_step_ref(x, m, coefs, torch.zeros(2, dtype=torch.long), rng=state)[0], atol=1e-5, rtol=1e-5)
