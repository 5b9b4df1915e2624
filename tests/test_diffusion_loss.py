"""fastgen.ops.diffusion_loss: every implementation against diffusion_loss_ref, the regenerated eps
against add_noise's, every prediction type against a textbook F.mse_loss, gradients, opcheck,
torch.compile and bad input."""
import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen.ops import add_noise, diffusion_loss, diffusion_loss_ref
from fastgen.ops.diffusion_loss import _diffusion_loss_backward_op, _diffusion_loss_op
from helpers import KERNEL_DTYPES, assert_close, impl_params

T = 1000
PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]
SHAPES = [
    ((1, 1, 1, 1), False),  # minimal
    ((2, 3, 5, 7), False),  # odd sizes, nothing a multiple of a block
    ((3, 4, 8, 8), True),  # channels_last
    ((5, 2), False),  # 2-D toy data
    ((2, 3, 1100), False),  # a sample wider than one 1024 block: several partial sums per sample
]
STATE = (2**40 + 17, 2**32 - 3)  # the counter crosses 2**32 inside the tensor


def loss_impl_params():
    """impl_params() without "cuda": the Triton kernel serves CUDA tensors (no CUDA C++ kernel for the loss)."""
    return [p for p in impl_params() if p.values[1] != "cuda"]


def alphas_cumprod(device="cpu"):
    return torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).float().to(device)


def make(shape, channels_last, dtype, device, requires_grad=False):
    x = torch.randn(shape, device=device).to(dtype)
    x = x.to(memory_format=torch.channels_last) if channels_last else x
    return x.requires_grad_(requires_grad)


def textbook(model_output, x0, t, table, eps, prediction_type, reduction="mean"):
    """The loss as training scripts write it: the target built explicitly, then F.mse_loss (float64)."""
    a = table.double()[t].view(-1, *([1] * (x0.dim() - 1)))
    x0, eps = x0.double(), eps.double()
    target = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction_type]
    loss = F.mse_loss(model_output.double(), target, reduction="none")
    return loss.mean() if reduction == "mean" else loss.flatten(1).mean(1)


# the loss is a float32 sum over the same rounded inputs: only the summation order differs
LOSS_TOL = dict(atol=1e-6, rtol=2e-5)


@pytest.mark.parametrize("device,impl", loss_impl_params())
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("shape,channels_last", SHAPES)
def test_matches_reference_with_seed(device, impl, dtype, prediction_type, shape, channels_last):
    pred = make(shape, channels_last, dtype, device, requires_grad=True)
    x0 = make(shape, channels_last, dtype, device, requires_grad=True)
    t = torch.randint(0, T, (shape[0],), device=device)
    table = alphas_cumprod(device)
    state = torch.tensor(STATE, device=device)
    for reduction in ["mean", "none"]:
        got = diffusion_loss(pred, x0, t, table, seed=state, prediction_type=prediction_type, reduction=reduction,
                             impl=impl)
        want = diffusion_loss_ref(pred, x0, t, table, rng=state, prediction_type=prediction_type, reduction=reduction)
        assert got.dtype == torch.float32
        assert_close(got, want, **LOSS_TOL, name=f"loss ({reduction})")
    grad = torch.rand(shape[0], device=device)  # an arbitrary upstream gradient per sample
    got = torch.autograd.grad((got * grad).sum(), (pred, x0), allow_unused=True)
    want = torch.autograd.grad((want * grad).sum(), (pred, x0), allow_unused=True)
    for g, w, name in zip(got, want, ["grad model_output", "grad x0"]):
        if prediction_type == "epsilon" and name == "grad x0":
            assert g is None and w is None  # epsilon's target does not depend on x0
            continue
        assert g.dtype == dtype and g.stride() == pred.stride()
        # float32 math on the same rounded inputs; in-kernel eps may differ by an ulp of log/cos
        assert_close(g, w, dtype, name=name)


@pytest.mark.parametrize("device,impl", loss_impl_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_kernel_eps_at_every_offset_residue(device, impl, dtype):
    """The kernels draw eps four stream positions per Philox call (two calls where a group of four
    straddles counters): offsets of every residue mod 4, a sample size that is a multiple of 4
    (every group aligned when the offset is) and one that is not, 16-bit rows of 8 elements."""
    table = alphas_cumprod(device)
    for shape in [(2, 3, 8, 8), (3, 5, 7)]:
        pred = make(shape, False, dtype, device, requires_grad=True)
        x0 = make(shape, False, dtype, device, requires_grad=True)
        t = torch.randint(0, T, (shape[0],), device=device)
        for offset in range(2**32 - 4, 2**32):
            state = torch.tensor([STATE[0], offset], device=device)
            got = diffusion_loss(pred, x0, t, table, seed=state, prediction_type="v_prediction", reduction="none",
                                 impl=impl)
            want = diffusion_loss_ref(pred, x0, t, table, rng=state, prediction_type="v_prediction",
                                      reduction="none")
            assert_close(got, want, **LOSS_TOL, name=f"loss at offset {offset}")
            grads = torch.autograd.grad(got.sum(), (pred, x0)), torch.autograd.grad(want.sum(), (pred, x0))
            for g, w, name in zip(*grads, ["grad model_output", "grad x0"]):
                assert_close(g, w, dtype, name=f"{name} at offset {offset}")


@pytest.mark.parametrize("device,impl", loss_impl_params())
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_matches_reference_with_noise(device, impl, dtype, prediction_type):
    shape = (3, 4, 8, 8)
    pred, x0, noise = (make(shape, True, dtype, device, requires_grad=True) for _ in range(3))
    t = torch.randint(0, T, (3,), device=device)
    table = alphas_cumprod(device)
    got = diffusion_loss(pred, x0, t, table, noise.detach(), prediction_type=prediction_type, impl=impl)
    want = diffusion_loss_ref(pred, x0, t, table, noise.detach(), prediction_type=prediction_type)
    assert_close(got, want, **LOSS_TOL)
    g = torch.autograd.grad(got, pred)[0]
    w = torch.autograd.grad(want, pred)[0]
    assert_close(g, w, dtype, atol=1e-7 if dtype == torch.float32 else None)


def test_mixed_dtypes_model_output_bf16_x0_fp32():
    pred = torch.randn(2, 3, 4, 4).bfloat16().requires_grad_()
    x0 = torch.randn(2, 3, 4, 4, requires_grad=True)
    t, table = torch.tensor([5, 600]), alphas_cumprod()
    want = textbook(pred, x0, t, table, torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)),
                    "v_prediction")
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    for impl in ["cpu", "reference"]:
        got = diffusion_loss(pred, x0, t, table, noise, prediction_type="v_prediction", impl=impl)
        assert_close(got, want.float(), atol=1e-6, rtol=1e-5)
        g_pred, g_x0 = torch.autograd.grad(got, (pred, x0))
        assert g_pred.dtype == torch.bfloat16 and g_x0.dtype == torch.float32


@pytest.mark.parametrize("device,impl", loss_impl_params())
def test_regenerated_eps_is_add_noises_eps(device, impl):
    """abar = 0 makes x_t = eps, so the epsilon loss of model_output = x_t is 0 exactly when the loss
    regenerates the eps add_noise generated (the same seed, offset and storage index)."""
    table = torch.zeros(T, device=device)
    for shape, channels_last in [((2, 3, 5, 7), False), ((3, 4, 8, 8), True), ((2, 3, 1100), False)]:
        x0 = torch.zeros(shape, device=device)
        x0 = x0.to(memory_format=torch.channels_last) if channels_last else x0
        state = torch.tensor(STATE, device=device)
        xt = add_noise(x0, 7, table, seed=state, impl=impl)
        loss = diffusion_loss(xt, x0, 7, table, seed=state, impl=impl, reduction="none")
        # the same implementation computes the same float32 numbers: exactly zero, not merely small
        assert (loss == 0).all(), f"{shape}: eps differs from add_noise's, per-sample mse {loss.tolist()}"
        # and a different seed or offset gives eps of variance ~1 against it: the check can fail
        other = diffusion_loss(xt, x0, 7, table, seed=torch.tensor([STATE[0], STATE[1] + 1], device=device),
                               impl=impl)
        assert other > 0.5
    # a plain int seed is the state [seed, 0], as in add_noise
    x0 = torch.zeros(2, 8, device=device)
    assert diffusion_loss(add_noise(x0, 0, table, seed=11, impl=impl), x0, 0, table, seed=11, impl=impl) == 0


@pytest.mark.parametrize("impl", ["reference", "cpu"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_matches_textbook_loss_and_autograd(impl, prediction_type):
    """With the eps regenerated (it is add_noise's, so recover it from x_t) against F.mse_loss."""
    shape = (4, 3, 6, 6)
    x0 = torch.randn(shape, requires_grad=True)
    pred = torch.randn(shape, requires_grad=True)
    t, table = torch.tensor([0, 10, 500, 999]), alphas_cumprod()
    eps = add_noise(torch.zeros(shape), 0, torch.zeros(T), seed=42)  # abar = 0: x_t is eps itself
    for reduction in ["mean", "none"]:
        got = diffusion_loss(pred, x0, t, table, seed=42, prediction_type=prediction_type, reduction=reduction,
                             impl=impl)
        want = textbook(pred, x0, t, table, eps, prediction_type, reduction)
        assert_close(got, want.float(), atol=1e-6, rtol=1e-5, name=f"loss ({reduction})")
    got_g = torch.autograd.grad(got.sum(), (pred, x0), allow_unused=True)
    want_g = torch.autograd.grad(want.sum(), (pred, x0), allow_unused=True)
    assert_close(got_g[0], want_g[0].float(), atol=1e-7, rtol=1e-5, name="grad model_output")
    if prediction_type == "epsilon":
        assert got_g[1] is None
    else:
        assert_close(got_g[1], want_g[1].float(), atol=1e-7, rtol=1e-5, name="grad x0")
    # explicit noise gives the same loss as the seed it came from
    same = diffusion_loss(pred, x0, t, table, eps, prediction_type=prediction_type, reduction="none", impl=impl)
    assert_close(same, got, atol=1e-6, rtol=1e-5)


def test_noise_requiring_grad_gets_its_gradient():
    shape = (3, 2, 4, 4)
    pred, x0, eps = (torch.randn(shape, requires_grad=True) for _ in range(3))
    t, table = torch.tensor([1, 300, 900]), alphas_cumprod()
    for impl in ["cpu", "reference"]:
        got = torch.autograd.grad(diffusion_loss(pred, x0, t, table, eps, prediction_type="v_prediction", impl=impl),
                                  (pred, x0, eps))
        want = torch.autograd.grad(textbook(pred, x0, t, table, eps, "v_prediction"), (pred, x0, eps))
        for g, w in zip(got, want):
            assert_close(g, w.float(), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_gradcheck_float64(prediction_type):
    pred = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    t, table = torch.tensor([10, 700]), alphas_cumprod()
    fn = lambda p, x, n: diffusion_loss(p, x, t, table, n, prediction_type=prediction_type,  # noqa: E731
                                        reduction="none")
    assert torch.autograd.gradcheck(fn, (pred, x0, noise))
    assert torch.autograd.gradgradcheck(fn, (pred, x0, noise))
    seeded = lambda p, x: diffusion_loss(p, x, t, table, seed=3, prediction_type=prediction_type)  # noqa: E731
    assert torch.autograd.gradcheck(seeded, (pred, x0))


@pytest.mark.parametrize("device,impl", loss_impl_params())
def test_opcheck(device, impl):
    pred = torch.randn(2, 3, 4, 4, device=device, requires_grad=True)
    x0 = torch.randn(2, 3, 4, 4, device=device, requires_grad=True)
    t, table = torch.tensor([1, 2], device=device), alphas_cumprod(device)
    state = torch.tensor([1, 0], device=device)
    for save_residual in (False, True):  # True: the CPU kernel also returns the residual for its backward
        torch.library.opcheck(_diffusion_loss_op, (pred, x0, t, table, None, state, "v_prediction", save_residual, impl))
        torch.library.opcheck(_diffusion_loss_op,
                              (pred, x0, t, table, torch.randn_like(x0), None, "sample", save_residual, impl))
    if impl != "reference":
        scale = torch.rand(2, device=device)
        torch.library.opcheck(_diffusion_loss_backward_op,
                              (scale, pred.detach(), x0.detach(), t, table, None, state, "v_prediction", True, impl),
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_compile_fullgraph_noising_loss_backward():
    x0, t, table = torch.randn(2, 3, 4, 4), torch.tensor([1, 900]), alphas_cumprod()
    weight = torch.randn(3, 3, requires_grad=True)

    def step(x, w):
        state = torch.tensor([7, 0])
        xt = add_noise(x, t, table, seed=state)
        pred = torch.einsum("oc,bchw->bohw", w, xt)  # a stand-in model
        loss = diffusion_loss(pred, x, t, table, seed=state, prediction_type="v_prediction")
        (g,) = torch.autograd.grad(loss, w)
        return loss.detach(), g

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    with torch._dynamo.config.patch(trace_autograd_ops=True):  # torch.autograd.grad inside the graph
        got = compiled(x0, weight)
    want = step(x0, weight)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


def test_compile_fullgraph_backward_outside():
    x0, t, table = torch.randn(2, 3, 4, 4), torch.tensor([1, 900]), alphas_cumprod()
    pred = torch.randn(2, 3, 4, 4, requires_grad=True)

    def loss_fn(p, x):
        return diffusion_loss(p, x, t, table, seed=5, prediction_type="sample")

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    got = compiled(pred, x0)
    (g,) = torch.autograd.grad(got, pred)
    want = loss_fn(pred, x0)
    assert_close(got, want)
    assert_close(g, torch.autograd.grad(want, pred)[0])


def test_nan_in_model_output_gives_nan_loss():
    x0, table = torch.randn(2, 3, 4), alphas_cumprod()
    pred = torch.randn(2, 3, 4, requires_grad=True)
    with torch.no_grad():
        pred[0, 1, 2] = float("nan")
    for impl in ["reference", "cpu"]:
        loss = diffusion_loss(pred, x0, 10, table, seed=1, impl=impl, reduction="none")
        assert loss[0].isnan() and loss[1].isfinite()
        (g,) = torch.autograd.grad(loss.sum(), pred)
        assert g[0, 1, 2].isnan() and g.isfinite().sum() == g.numel() - 1
        assert diffusion_loss(pred, x0, 10, table, seed=1, impl=impl).isnan()


def test_epsilon_ignores_nan_in_x0():
    x0, pred, noise = torch.randn(2, 5), torch.randn(2, 5), torch.randn(2, 5)
    x0[0, 0] = float("nan")
    for impl in ["reference", "cpu"]:
        got = diffusion_loss(pred, x0, 3, alphas_cumprod(), noise, impl=impl)
        assert_close(got, F.mse_loss(pred, noise))


def test_deterministic_and_wide_sample():
    # several partial sums per sample on every implementation; bitwise the same on a rerun
    x0, pred = torch.randn(2, 40000), torch.randn(2, 40000)
    t, table = torch.tensor([3, 800]), alphas_cumprod()
    a = diffusion_loss(pred, x0, t, table, seed=9, impl="cpu", reduction="none")
    torch.set_num_threads(1)
    try:
        b = diffusion_loss(pred, x0, t, table, seed=9, impl="cpu", reduction="none")
    finally:
        torch.set_num_threads(2)
    assert torch.equal(a, b)
    assert_close(a, diffusion_loss_ref(pred, x0, t, table, rng=torch.tensor([9, 0]), reduction="none"),
                 atol=1e-6, rtol=2e-5)


def test_scalar_timestep_and_empty_batch():
    x0, pred, noise, table = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4), alphas_cumprod()
    for impl in ["cpu", "reference"]:
        assert_close(diffusion_loss(pred, x0, 5, table, noise, prediction_type="sample", impl=impl),
                     diffusion_loss(pred, x0, torch.full((3,), 5), table, noise, prediction_type="sample", impl=impl))
        empty = diffusion_loss(torch.randn(0, 4), torch.randn(0, 4), torch.zeros(0, dtype=torch.long), table, seed=1,
                               reduction="none", impl=impl)
        assert empty.shape == (0,)


def test_non_dense_inputs_are_handled():
    x0, pred = torch.randn(4, 6, 8)[:, ::2], torch.randn(4, 8, 3).transpose(1, 2)  # two different layouts
    noise = torch.randn(4, 3, 8)
    want = textbook(pred, x0, torch.full((4,), 3), alphas_cumprod(), noise, "v_prediction")
    for impl in ["cpu", "reference"]:
        got = diffusion_loss(pred, x0, 3, alphas_cumprod(), noise, prediction_type="v_prediction", impl=impl)
        assert_close(got, want.float(), atol=1e-6, rtol=1e-5)


def test_float64_runs_reference_and_explicit_kernel_refuses():
    x = torch.randn(2, 4, dtype=torch.float64)
    assert diffusion_loss(x, x, 1, alphas_cumprod(), seed=1).dtype == torch.float64
    with pytest.raises(fastgen.ImplUnavailableError, match="float64"):
        diffusion_loss(x, x, 1, alphas_cumprod(), seed=1, impl="cpu")


@pytest.mark.parametrize("call,error,match", [
    (lambda p, x, tb: diffusion_loss(p, x, 1, tb, seed=1, prediction_type="eps"), ValueError,
     r"prediction_type must be one of \('epsilon', 'sample', 'v_prediction'\), got 'eps'"),
    (lambda p, x, tb: diffusion_loss(p, x, 1, tb, seed=1, reduction="sum"), ValueError,
     r"reduction must be one of \('mean', 'none'\)"),
    (lambda p, x, tb: diffusion_loss(p, torch.randn(2, 3), 1, tb, seed=1), ValueError,
     r"x0 must have the shape of model_output \(2, 4\)"),
    (lambda p, x, tb: diffusion_loss(p, x, 1, tb, torch.randn(2, 3)), ValueError, r"noise must have the shape of x0"),
    (lambda p, x, tb: diffusion_loss(p, x, 1, tb, torch.randn(2, 4), seed=3), ValueError, "exactly one of noise and seed"),
    (lambda p, x, tb: diffusion_loss(p, x, 1, tb), ValueError, "exactly one of noise and seed"),
    (lambda p, x, tb: diffusion_loss(p, x, 1000, tb, seed=1), ValueError, r"timesteps must lie in \[0, 999\]"),
    (lambda p, x, tb: diffusion_loss(p, x, torch.tensor([1.0, 2.0]), tb, seed=1), TypeError, "integer tensor"),
    (lambda p, x, tb: diffusion_loss(p.long(), x, 1, tb, seed=1), TypeError, "model_output must be a floating"),
    (lambda p, x, tb: diffusion_loss(p, x.to("meta"), 1, tb, seed=1), ValueError, "x0 is on meta"),
    (lambda p, x, tb: diffusion_loss(p, x, 1, tb, seed=torch.tensor([1])), ValueError, "Philox state"),
    (lambda p, x, tb: diffusion_loss(p, x, 1, tb, seed=-2), ValueError, r"seed must lie in"),
    (lambda p, x, tb: diffusion_loss(p, x, 1, tb.view(10, 100), seed=1), ValueError, "alphas_cumprod must be a non-empty 1-D"),
    (lambda p, x, tb: diffusion_loss(p, x, 1, tb, seed=1, impl="cuda"), fastgen.ImplUnavailableError, "cuda"),
    (lambda p, x, tb: diffusion_loss(p, x, 1, tb, seed=1, impl="fast"), ValueError, "impl must be 'auto' or one of"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(2, 4), torch.randn(2, 4), alphas_cumprod())
