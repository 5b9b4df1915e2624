"""fastgen.ops.sampling_step: every implementation against an independent float64 evaluation of the
16-column formula (0..4 history tensors of mixed dtypes, the state output, clip, noise sources,
index broadcast), noise-free rows, absent history slots, gradients of out and state, opcheck,
torch.compile, NaN propagation, diffusers' DDIM / DDPM steps, the old keyword aliases and bad input."""
import importlib

import pytest
import torch

import fastgen
from fastgen import _layout, _rng
from fastgen.ops import NUM_COEFS, sampling_step, sampling_step_ref
from fastgen.ops.sampling_step import _sampling_step_op
from helpers import KERNEL_DTYPES, assert_close, impl_params

op_module = importlib.import_module("fastgen.ops.sampling_step")  # the function shadows the module name

# The column order of the contract, written out here rather than imported, so the float64
# evaluation below does not share a mistake with the module it checks.
COLUMNS = "PX PM EX EM E0 OX O0 OE H1 H2 H3 H4 SZ SX S0 SE".split()
HISTORY = ["H1", "H2", "H3", "H4"]
ROWS = 7
SHAPES = [
    ((1, 1, 1, 1), False),  # minimal: one element
    ((2, 3, 5, 7), False),  # odd sizes, nothing a multiple of a block or a vector
    ((3, 4, 8, 8), True),  # channels_last
    ((5, 3), False),  # 2-D toy data
    ((2, 3, 1100), False),  # a sample wider than one 1024 block
]


def coef_table(device="cpu", rows=ROWS):
    """Random rows in [-1, 1): every column matters, none is a special value by accident."""
    return (torch.rand(rows, NUM_COEFS, device=device) * 2 - 1).contiguous()


def make(shape, channels_last, dtype, device="cpu"):
    x = torch.randn(shape, device=device).to(dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def history_of(n, shape, channels_last, dtype, device="cpu"):
    """n history tensors, alternating the sample's dtype and float32."""
    return tuple(make(shape, channels_last, dtype if i % 2 == 0 else torch.float32, device) for i in range(n))


def expected(x, m, coefs, index, history=(), z=None, clip=None):
    """(out, state) in float64, straight from the formula, from the inputs as the op reads them."""
    batch = x.shape[0]
    index = torch.as_tensor(index, device=x.device).reshape(-1).expand(batch).clamp(0, coefs.shape[0] - 1)
    rows = coefs.double()[index]

    def col(name):
        return rows[:, COLUMNS.index(name)].reshape((batch,) + (1,) * (x.dim() - 1))

    xd, md = x.double(), m.double()
    x0 = col("PX") * xd + col("PM") * md
    if clip is not None:
        x0 = torch.where(x0 < -clip, -clip, torch.where(x0 > clip, clip, x0))
    eps = col("EX") * xd + col("EM") * md + col("E0") * x0
    out = col("OX") * xd + col("O0") * x0 + col("OE") * eps
    for name, h in zip(HISTORY, history):
        if h is not None:
            out = out + col(name) * h.double()
    if z is not None:
        out = out + torch.where(col("SZ") == 0, 0.0, col("SZ") * z.double())
    return out, col("SX") * xd + col("S0") * x0 + col("SE") * eps


def test_column_constants():
    assert NUM_COEFS == 16 and op_module.NUM_COEFS == 16
    assert [getattr(op_module, name) for name in COLUMNS] == list(range(16))


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("shape,channels_last", SHAPES)
@pytest.mark.parametrize("num_history", [0, 1, 2, 3, 4])
def test_matches_float64_formula(device, impl, dtype, shape, channels_last, num_history):
    x, m, noise = (make(shape, channels_last, dtype, device) for _ in range(3))
    history = history_of(num_history, shape, channels_last, dtype, device)
    coefs = coef_table(device)
    index = torch.randint(0, ROWS, (shape[0],), device=device)  # a row per sample
    out, state = sampling_step(x, m, coefs, index, history=history, noise=noise, clip_range=0.8, return_state=True,
                               impl=impl)
    assert out.dtype == dtype and out.stride() == x.stride()
    assert state.dtype == torch.float32 and state.stride() == x.stride()
    want_out, want_state = expected(x, m, coefs, index, history, noise, clip=0.8)
    assert_close(out, want_out, dtype)
    assert_close(state, want_state, torch.float32, name="state")


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("noise_mode", ["none", "tensor", "philox", "generator"])
@pytest.mark.parametrize("history_slots", ["", "1", "1.3.", "1234"])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_switches(device, impl, noise_mode, history_slots, clip):
    """Noise sources, history patterns (a '.' is an absent slot), clip, index forms, state or not."""
    shape = (3, 2, 5, 7)
    x, m, noise = (torch.randn(shape, device=device) for _ in range(3))
    history = tuple(None if s == "." else torch.randn(shape, device=device) for s in history_slots)
    coefs = coef_table(device)
    state = torch.tensor([2**40 + 17, 2**32 - 3], dtype=torch.int64, device=device)  # counter crosses 2**32
    for index in [torch.tensor([6, 0, 3], device=device), torch.tensor([4], device=device), 2]:
        kwargs, z = {}, None
        if noise_mode == "tensor":
            kwargs["noise"] = z = noise
        elif noise_mode == "philox":
            kwargs["seed"] = state
            z = _layout.flat_as(_rng.philox_normal_ref(state, x.numel()), x)
        elif noise_mode == "generator":
            z = torch.randn(shape, generator=torch.Generator(device).manual_seed(11), device=device)
        want_out, want_state = expected(x, m, coefs, index, history, z, clip)
        for return_state in [False, True]:
            if noise_mode == "generator":
                kwargs["generator"] = torch.Generator(device).manual_seed(11)
            out, got_state = sampling_step(x, m, coefs, index, history=history, clip_range=clip,
                                           return_state=return_state, impl=impl, **kwargs)
            # Philox: log/cos differ by an ulp or two between libm, CUDA and the interpreter
            assert_close(out, want_out, atol=1e-5, rtol=1e-5)
            if return_state:
                assert_close(got_state, want_state, name="state")
            else:
                assert got_state is None


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_philox_noise_at_every_offset_residue(device, impl, dtype):
    """The kernels draw z four stream positions per Philox call (two calls where a group of four
    straddles counters; 16-bit rows of 8): offsets of every residue mod 4, a sample size that is a
    multiple of 4 and one that is not, a history slot and the state."""
    coefs = coef_table(device)
    for shape in [(2, 3, 8, 8), (3, 5, 7)]:
        x, m, h = (torch.randn(shape, device=device).to(dtype) for _ in range(3))
        index = torch.arange(shape[0], device=device) * 3  # rows 0, 3, 6: all three have SZ != 0
        for offset in range(2**32 - 4, 2**32):
            state = torch.tensor([2**40 + 17, offset], dtype=torch.int64, device=device)
            z = _layout.flat_as(_rng.philox_normal_ref(state, x.numel()), x)
            want_out, want_state = expected(x, m, coefs, index, (h,), z, None)
            out, got_state = sampling_step(x, m, coefs, index, history=(h,), seed=state, return_state=True, impl=impl)
            assert_close(out, want_out, dtype, name=f"out at offset {offset}")
            assert_close(got_state, want_state, torch.float32, name=f"state at offset {offset}")


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rows_without_noise_never_touch_it(device, impl, dtype):
    """SZ == 0 (DDIM eta = 0, DDPM's last step): NaN noise in those samples must not reach out."""
    coefs = coef_table(device)
    coefs[[1, 4], op_module.SZ] = 0.0
    index = torch.tensor([1, 0, 4, 2], device=device)
    x, m, noise, h = (torch.randn(4, 3, 6, 5, device=device).to(dtype) for _ in range(4))
    noise[[0, 2]] = float("nan")
    out, _ = sampling_step(x, m, coefs, index, history=(h,), noise=noise, impl=impl)
    assert out[[0, 2]].isfinite().all()
    assert_close(out, expected(x, m, coefs, index, (h,), noise)[0], dtype)
    # Philox rows with SZ == 0 equal the noise-free step
    out, _ = sampling_step(x, m, coefs, index, history=(h,), seed=5, impl=impl)
    assert_close(out[[0, 2]], expected(x, m, coefs, index, (h,))[0][[0, 2]], dtype)


@pytest.mark.parametrize("device,impl", impl_params())
def test_absent_history_slots_are_not_read_and_zero_state_rows(device, impl):
    """An absent slot adds nothing even where its column is NaN (so the kernel never read a stand-in),
    and rows whose SX, S0, SE are zero give state 0."""
    coefs = coef_table(device)
    coefs[:, [op_module.H1, op_module.H3, op_module.H4]] = float("nan")
    coefs[2, [op_module.SX, op_module.S0, op_module.SE]] = 0.0
    x, m, h2 = (torch.randn(2, 3, 9, device=device) for _ in range(3))
    out, state = sampling_step(x, m, coefs, torch.tensor([2, 5], device=device), history=(None, h2), return_state=True,
                               impl=impl)
    assert out.isfinite().all()
    assert_close(out, expected(x, m, coefs, torch.tensor([2, 5]), (None, h2))[0])
    assert torch.equal(state[0], torch.zeros_like(state[0]))


@pytest.mark.parametrize("device,impl", impl_params())
def test_index_out_of_table_is_clamped(device, impl):
    """The op below the validation (a device index is not range-checked) clamps rows into the table."""
    x, m = torch.randn(3, 10, device=device), torch.randn(3, 10, device=device)
    coefs, index = coef_table(device), torch.tensor([-4, 3, 99], device=device)
    out, state = _sampling_step_op(x, m, coefs, index, None, None, None, None, None, None, None, True, impl)
    want_out, want_state = expected(x, m, coefs, index)
    assert_close(out, want_out)
    assert_close(state, want_state, name="state")


def _loss_grads(outputs, inputs, seeds):
    grads = [torch.randn(o.shape, generator=torch.Generator().manual_seed(s)).to(o) for o, s in zip(outputs, seeds)]
    return torch.autograd.grad(outputs, inputs, grads)


@pytest.mark.parametrize("device,impl", impl_params())
def test_gradients_match_reference(device, impl):
    """Gradients of out and state w.r.t. sample, model_output, every history tensor and noise."""
    leaves = [torch.randn(3, 2, 5, 5, device=device, requires_grad=True) for _ in range(7)]
    coefs, index = coef_table(device), torch.tensor([0, 5, 3], device=device)
    x, m, h1, h2, h3, h4, noise = leaves
    got = sampling_step(x, m, coefs, index, history=(h1, h2, h3, h4), noise=noise, clip_range=1.0, return_state=True,
                        impl=impl)
    want = sampling_step_ref(x, m, coefs, index, (h1, h2, h3, h4), noise, None, 1.0, True)
    names = ["sample", "model_output", "history[0]", "history[1]", "history[2]", "history[3]", "noise"]
    for g, w, name in zip(_loss_grads(got, leaves, [1, 2]), _loss_grads(want, leaves, [1, 2]), names):
        assert_close(g, w, name=f"grad {name}")
    # and through state alone (out unused), with an absent slot in the middle
    got = sampling_step(x, m, coefs, index, history=(h1, None, h3), clip_range=1.0, return_state=True, impl=impl)[1]
    gx, gm = torch.autograd.grad(got.sum(), [x, m])
    wx, wm = torch.autograd.grad(sampling_step_ref(x, m, coefs, index, (h1, None, h3), None, None, 1.0, True)[1].sum(),
                                 [x, m])
    assert_close(gx, wx, name="grad sample via state")
    assert_close(gm, wm, name="grad model_output via state")


def test_gradcheck_and_gradgradcheck_float64():
    args = [torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(7)]
    coefs, index = coef_table(), torch.tensor([1, 6])

    def fn(x, m, h1, h2, h3, h4, noise):
        return sampling_step(x, m, coefs, index, history=(h1, h2, h3, h4), noise=noise, clip_range=1.0,
                             return_state=True)

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("device,impl", impl_params())
def test_opcheck(device, impl):
    x = torch.randn(2, 3, 4, 4, device=device, requires_grad=True)
    m, h1, h3, noise = (torch.randn_like(x) for _ in range(4))
    coefs, index = coef_table(device), torch.tensor([1, 2], device=device)
    torch.library.opcheck(_sampling_step_op, (x, m, coefs, index, h1, None, h3, None, noise, None, 1.0, True, impl))
    state = torch.tensor([1, 0], device=device)
    torch.library.opcheck(_sampling_step_op, (x.detach(), m, coefs, index.expand(2), None, None, None, h3.float(), None,
                                              state, None, False, impl),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_compile_fullgraph():
    x, m, h1, h2, noise = (torch.randn(2, 3, 4, 4) for _ in range(5))
    coefs, index = coef_table(), torch.tensor([1, 5])

    def step(x, m, h1, h2, noise):
        out, state = sampling_step(x, m, coefs, index, history=(h1, h2), noise=noise, clip_range=1.0, return_state=True)
        again, _ = sampling_step(out, m, coefs, 3, history=[state, None, h1, h2], seed=7)
        return again * 2 + state

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert_close(compiled(x, m, h1, h2, noise), step(x, m, h1, h2, noise))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, under the interpreter
@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("clip", [None, 1.0])
def test_nan_and_inf_propagate(device, impl, clip):
    x, m, h = (torch.randn(2, 3, 4, device=device) for _ in range(3))
    m[0, 1, 2], m[1, 0, 0], h[1, 2, 3] = float("nan"), float("inf"), float("nan")
    coefs, index = coef_table(device), torch.tensor([2, 3], device=device)
    out, state = sampling_step(x, m, coefs, index, history=(h,), clip_range=clip, return_state=True, impl=impl)
    want_out, want_state = expected(x, m, coefs, index, (h,), clip=clip)
    assert out[0, 1, 2].isnan() and state[0, 1, 2].isnan() and not out[1, 0, 0].isfinite() and out[1, 2, 3].isnan()
    assert_close(out, want_out)
    assert_close(state, want_state, name="state")


def _row(**cols):
    row = torch.zeros(NUM_COEFS, dtype=torch.float64)
    for name, value in cols.items():
        row[COLUMNS.index(name)] = value
    return row.float()[None]


@pytest.mark.parametrize("impl", ["cpu", "reference"])
@pytest.mark.parametrize("clip", [False, True])
def test_matches_diffusers_ddim_step(impl, clip):
    """DDIM (eta = 0, epsilon prediction) as a hand-built row (Song et al. 2021, eq. 12), state = x0."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=clip)
    sched.set_timesteps(50)
    x, m = torch.randn(4, 3, 8, 8) * 3, torch.randn(4, 3, 8, 8)
    t = int(sched.timesteps[10])
    expected_step = sched.step(m, t, x, use_clipped_model_output=clip)
    abar = sched.alphas_cumprod.double()
    a_t, a_prev = abar[t], abar[t - 1000 // 50]
    cols = dict(PX=1 / a_t.sqrt(), PM=-(1 - a_t).sqrt() / a_t.sqrt(), O0=a_prev.sqrt(), OE=(1 - a_prev).sqrt(), S0=1.0)
    if clip:  # eps recomputed from the clipped x0 (diffusers' use_clipped_model_output)
        cols.update(EX=1 / (1 - a_t).sqrt(), E0=-a_t.sqrt() / (1 - a_t).sqrt())
    else:
        cols.update(EM=1.0)
    out, x0 = sampling_step(x, m, _row(**cols), 0, clip_range=1.0 if clip else None, return_state=True, impl=impl)
    assert_close(out, expected_step.prev_sample, atol=2e-5, rtol=2e-5)
    assert_close(x0, expected_step.pred_original_sample, atol=2e-5, rtol=2e-5, name="x0")


@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_matches_diffusers_ddpm_step_with_generator(impl):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    sched.set_timesteps(1000)
    x, m = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t = 500
    expected_step = sched.step(m, t, x, generator=torch.Generator().manual_seed(3)).prev_sample
    abar = sched.alphas_cumprod.double()
    a_t, a_prev = abar[t], abar[t - 1]
    alpha, beta = a_t / a_prev, 1 - a_t / a_prev
    row = _row(PX=1 / a_t.sqrt(), PM=-(1 - a_t).sqrt() / a_t.sqrt(), O0=a_prev.sqrt() * beta / (1 - a_t),
               OX=alpha.sqrt() * (1 - a_prev) / (1 - a_t), SZ=((1 - a_prev) / (1 - a_t) * beta).sqrt())
    out, _ = sampling_step(x, m, row, 0, generator=torch.Generator().manual_seed(3), impl=impl)
    assert_close(out, expected_step, atol=2e-5, rtol=2e-5)


def test_mixed_dtypes_are_converted_for_the_kernels():
    x = torch.randn(2, 3, 4).half()
    m = torch.randn(2, 3, 4)  # float32 model output: read in the sample's dtype by the kernels
    history = (torch.randn(2, 3, 4).bfloat16(), torch.randn(2, 3, 4).double(), torch.randn(2, 3, 4).half())
    coefs = coef_table()
    out, state = sampling_step(x, m, coefs, 1, history=history, return_state=True, impl="cpu")
    assert out.dtype == torch.float16 and state.dtype == torch.float32
    assert_close(out, expected(x, m.half(), coefs, 1, history)[0], torch.float16)
    out, _ = sampling_step(x, m, coefs, 1, history=history, impl="reference")
    assert_close(out, expected(x, m, coefs, 1, history)[0], torch.float16)


def test_empty_batch_float64_and_non_dense():
    coefs = coef_table()
    out, state = sampling_step(torch.randn(0, 3), torch.randn(0, 3), coefs, torch.zeros(0, dtype=torch.long),
                               history=(torch.randn(0, 3),), return_state=True, impl="cpu")
    assert out.shape == (0, 3) and state.shape == (0, 3)
    x = torch.randn(2, 4, dtype=torch.float64)
    out, state = sampling_step(x, x, coefs, 1, history=(x, x.float()), return_state=True)
    assert out.dtype == torch.float64
    assert_close(out, expected(x, x, coefs, 1, (x, x.float()))[0])
    with pytest.raises(fastgen.ImplUnavailableError, match="float64"):
        sampling_step(x, x, coefs, 1, impl="cpu")
    x, m = torch.randn(4, 6, 8)[:, ::2], torch.randn(4, 8, 3).transpose(1, 2)  # strided views
    h = torch.randn(3, 4, 8).transpose(0, 1)
    assert_close(sampling_step(x, m, coefs, 3, history=(h,), impl="cpu")[0], expected(x, m, coefs, 3, (h,))[0])


def _bad(**kw):
    x = torch.randn(2, 4)
    args = dict(sample=x, model_output=torch.randn(2, 4), coefs=coef_table(), index=torch.tensor([0, 1]))
    args.update(kw)
    return lambda: sampling_step(**args)


H = torch.randn(2, 4)


@pytest.mark.parametrize("call,error,match", [
    (_bad(coefs=torch.rand(ROWS, 10)), ValueError, r"coefs must be a float32 table of shape \(N, 16\)"),
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
    (_bad(history=(H, H, torch.randn(4, 2))), ValueError, r"history\[2\] must have the shape of sample \(2, 4\)"),
    (_bad(history=(H, torch.ones(2, 4, dtype=torch.long))), TypeError, r"history\[1\] must be a floating tensor"),
    (_bad(history=(H, torch.randn(2, 4, device="meta"))), ValueError, r"history\[1\] is on meta"),
    (_bad(history=(H,) * 5), ValueError, "history must hold at most 4 tensors"),
    (_bad(history=H), TypeError, "history must be a tuple or list"),
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


def test_cpu_philox_and_history_over_many_tiles():
    """The vectorised CPU Philox against the Philox reference across tiles, chunks and samples, with
    history added tile by tile."""
    x, m, h, g = (torch.randn(2, 40001) for _ in range(4))  # 3 chunks of 16384 per sample
    coefs = torch.zeros(1, NUM_COEFS)
    coefs[0, op_module.SZ], coefs[0, op_module.H2], coefs[0, op_module.H4] = 1.0, 0.5, -0.25  # out = z + h/2 - g/4
    state = torch.tensor([987654321, 2**32 - 5000], dtype=torch.int64)
    z = _rng.philox_normal_ref(state, x.numel()).view_as(x)
    for history in [(None, h), (None, h, None, g.half())]:  # one slot fused; a second one added per tile
        out, _ = sampling_step(x, m, coefs, 0, history=history, seed=state, impl="cpu")
        assert_close(out, expected(x, m, coefs, 0, history, z)[0], atol=1e-5, rtol=1e-5)


def test_auto_prefers_the_cuda_step_on_cuda(monkeypatch):
    """The measured exceptions to 'triton first on CUDA' (fastgen/_impl.py AUTO_ORDER_BY_OP): with every
    implementation available, auto picks the CUDA kernels for the step and the noising, Triton elsewhere."""
    from fastgen import _impl
    from fastgen.ops.sampling_step import IMPLS

    monkeypatch.setattr(_impl, "unavailable_reason", lambda impl, device: None)
    assert _impl._resolve_cached("sampling_step", "auto", "cuda", 0, IMPLS) == "cuda"
    assert _impl._resolve_cached("add_noise", "auto", "cuda", 0, ("triton", "cuda", "reference")) == "cuda"
    assert _impl._resolve_cached("group_norm", "auto", "cuda", 0, ("triton", "cuda", "reference")) == "triton"


def test_cpu_kernel_above_the_parallel_grain():
    """The CPU kernel runs on the calling thread below 32768 elements (csrc/cpu/parallel.h) and every
    other test is smaller: this one takes the OpenMP path (several chunks per sample), with the
    folded eps path, two history slots, and a row whose x0 nothing reads (the loop that skips it)."""
    shape = (3, 5, 4096)
    x, m = torch.randn(shape), torch.randn(shape)
    history = (torch.randn(shape), torch.randn(shape).double().float())
    coefs = coef_table()
    coefs[2, COLUMNS.index("O0")] = coefs[2, COLUMNS.index("E0")] = 0.0  # row 2: C = 0 and no state
    index = torch.tensor([0, 2, 5])
    out, state = sampling_step(x, m, coefs, index, history=history, return_state=True, impl="cpu")
    want_out, want_state = expected(x, m, coefs, index, history)
    assert_close(out, want_out)
    assert_close(state, want_state, name="state")
    out, _ = sampling_step(x, m, coefs, index, clip_range=0.5, impl="cpu")
    assert_close(out, expected(x, m, coefs, index, clip=0.5)[0])
