"""fastgen.ops.bias_act: the reference against independent float64 math (StyleGAN2-ADA's defaults),
the Triton kernel against the reference (every activation, both launch shapes, clamp, dtypes), first
and second order gradients, opcheck, torch.compile and bad input."""
from __future__ import annotations

import math

import pytest
import torch

from fastgen import _impl
from fastgen.ops.bias_act import ACTIVATIONS, _bias_act_backward_op, _bias_act_op, bias_act, bias_act_ref
from helpers import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")
ACTS = list(ACTIVATIONS)


def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def impls():
    reason = _impl.unavailable_reason("triton", torch.device(device()))
    return [pytest.param("reference", id="reference"),
            pytest.param("triton", id="triton", marks=[pytest.mark.skip(reason=f"triton: {reason}")] if reason else [])]


def triton_only():
    return [p for p in impls() if p.id == "triton"]


def independent(x: torch.Tensor, act: str, alpha: float, gain: float) -> torch.Tensor:
    """float64 formulas written out, not torch's activation functions."""
    x = x.double()
    e = torch.exp
    formulas = {
        "linear": lambda h: h,
        "relu": lambda h: torch.where(h > 0, h, 0 * h),
        "lrelu": lambda h: torch.where(h > 0, h, alpha * h),
        "tanh": lambda h: (e(h) - e(-h)) / (e(h) + e(-h)),
        "sigmoid": lambda h: 1 / (1 + e(-h)),
        "elu": lambda h: torch.where(h > 0, h, e(h) - 1),
        "selu": lambda h: 1.0507009873554805 * torch.where(h > 0, h, 1.6732632423543772 * (e(h) - 1)),
        "softplus": lambda h: torch.log(1 + e(h)),
        "swish": lambda h: h / (1 + e(-h)),
    }
    return formulas[act](x) * gain


# StyleGAN2-ADA's table of defaults (torch_utils/ops/bias_act.py, activation_funcs): (alpha, gain).
DEFAULTS = {"linear": (0, 1), "relu": (0, math.sqrt(2)), "lrelu": (0.2, math.sqrt(2)), "tanh": (0, 1),
            "sigmoid": (0, 1), "elu": (0, 1), "selu": (0, 1), "softplus": (0, 1), "swish": (0, math.sqrt(2))}


@pytest.mark.parametrize("act", ACTS)
def test_reference_matches_independent_math_with_defaults(act):
    x = torch.randn(3, 5, 4, dtype=torch.float64) * 3
    b = torch.randn(5, dtype=torch.float64)
    alpha, gain = DEFAULTS[act]
    want = independent(x + b.view(1, 5, 1), act, alpha, gain)
    assert_close(bias_act_ref(x, b, dim=1, act=act), want, atol=1e-12, rtol=1e-12)
    # explicit alpha / gain / clamp, bias along the last dim
    b2 = torch.randn(4, dtype=torch.float64)
    want = independent(x + b2, act, 0.1, 0.7).clamp(-0.5, 0.5)
    assert_close(bias_act_ref(x, b2, dim=-1, act=act, alpha=0.1, gain=0.7, clamp=0.5), want, atol=1e-12, rtol=1e-12)


SHAPES = [  # (shape, dim): rows launch (inner >= 256), flat launch, tails, bias along each dim
    ((2, 3, 16, 17), 1),
    ((5, 7), 1),
    ((5, 7), 0),
    ((3, 4, 5), -1),
    ((1, 1, 1, 1), 1),
    ((2, 300), 0),
]


def make(shape, dtype, bias=True, dim=1):
    x = (torch.randn(shape) * 3).to(device(), dtype)
    b = torch.randn(shape[dim], device=device()).to(dtype) if bias else None
    return x, b


@pytest.mark.parametrize("impl", triton_only())
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape,dim", SHAPES)
def test_kernel_matches_reference_forward_and_gradients(impl, act, shape, dim):
    x, b = make(shape, torch.float32, dim=dim)
    clamp = 1.5 if act in ("relu", "swish", "linear") else None
    x.requires_grad_(True)
    b.requires_grad_(True)
    got = bias_act(x, b, dim, act, clamp=clamp, impl=impl)
    want = bias_act_ref(x, b, dim, act, clamp=clamp)
    assert_close(got, want)
    dy = torch.randn_like(got)
    got_grads = torch.autograd.grad(got, (x, b), dy)
    want_grads = torch.autograd.grad(want, (x, b), dy)
    assert_close(got_grads[0], want_grads[0], atol=1e-5, rtol=1e-4, name="dx")
    assert_close(got_grads[1], want_grads[1], atol=1e-4, rtol=1e-4, name="db")


@pytest.mark.parametrize("impl", triton_only())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", ["lrelu", "tanh", "softplus"])
def test_kernel_low_precision(impl, dtype, act):
    x, b = make((2, 3, 16, 17), dtype)
    want = bias_act_ref(x.float(), b.float(), 1, act)  # float32 truth from the same rounded inputs
    assert_close(bias_act(x, b, 1, act, impl=impl), want, dtype)


@pytest.mark.parametrize("impl", triton_only())
def test_kernel_without_bias_and_large_inputs(impl):
    x = torch.tensor([-1e4, -100.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 100.0, 1e4], device=device())
    for act in ACTS:
        assert_close(bias_act(x, None, act=act, impl=impl), bias_act_ref(x, None, act=act), name=act)
        assert not bias_act(x, None, act=act, impl=impl).isnan().any()


@pytest.mark.parametrize("impl", triton_only())
@pytest.mark.parametrize("act", ["relu", "lrelu"])
def test_gradient_conventions_at_the_kink_and_clamp_edges(impl, act):
    """relu' = 0 and lrelu' = alpha at 0 (torch's); the clamp passes the gradient at its edges."""
    x = torch.tensor([0.0, 1.0, -1.0, 2.0], device=device(), requires_grad=True)
    (got,) = torch.autograd.grad(bias_act(x, None, act=act, gain=1.0, clamp=1.0, impl=impl).sum(), x)
    (want,) = torch.autograd.grad(bias_act_ref(x, None, act=act, gain=1.0, clamp=1.0).sum(), x)
    assert torch.equal(got, want)
    assert got[1] == 1.0 and got[3] == 0.0  # y = 1 = clamp passes; y = 2 > clamp does not


@pytest.mark.parametrize("act", ACTS)
def test_gradcheck_and_gradgradcheck_float64(act):
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    x.data += 0.1 * torch.sign(x.data)  # keep away from relu / lrelu kinks, where the check is ill-posed
    fn = lambda x, b: bias_act(x, b, 1, act, clamp=2.0 if act == "linear" else None)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("impl", triton_only())
@pytest.mark.parametrize("act", ["lrelu", "swish", "tanh"])
def test_second_order_matches_reference(impl, act):
    """R1 / path-length style: the gradient of a gradient through the op, kernel vs reference."""
    x, b = make((2, 3, 4, 4), torch.float32)
    x.requires_grad_(True)
    b.requires_grad_(True)

    def penalty(fn):
        (g,) = torch.autograd.grad(fn(x, b, 1, act).pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), (x, b))

    got = penalty(lambda *a: bias_act(*a, impl=impl))
    want = penalty(bias_act_ref)
    for g, w, name in zip(got, want, ("x", "b")):
        assert_close(g, w, atol=1e-4, rtol=1e-4, name=f"second-order grad {name}")


@pytest.mark.parametrize("impl", triton_only())
def test_first_order_runs_the_kernel_and_second_order_the_reference(impl, monkeypatch):
    from fastgen.kernels import bias_act as kernel

    calls = []
    launch = kernel.backward
    monkeypatch.setattr(kernel, "backward", lambda *a: calls.append(1) or launch(*a))
    x, b = make((2, 3, 4), torch.float32)
    x.requires_grad_(True)
    torch.autograd.grad(bias_act(x, b, 1, "lrelu", impl=impl).sum(), x)
    assert len(calls) == 1
    (g,) = torch.autograd.grad(bias_act(x, b, 1, "lrelu", impl=impl).sum(), x, create_graph=True)
    assert len(calls) == 1 and g.requires_grad


@pytest.mark.parametrize("impl", triton_only())
def test_opcheck(impl):
    x, b = make((2, 3, 4), torch.float32)
    x.requires_grad_(True)
    torch.library.opcheck(_bias_act_op, (x, b, 1, 2, 0.2, math.sqrt(2), 0.5))
    torch.library.opcheck(_bias_act_op, (x, None, 0, 8, 0.0, 1.0, None))
    torch.library.opcheck(_bias_act_backward_op, (torch.randn_like(x), x.detach(), b, 1, 2, 0.2, 1.0, None, True))


@pytest.mark.parametrize("impl", impls())
def test_compile_fullgraph_forward_and_backward(impl):
    x, b = make((2, 3, 4), torch.float32)
    x.requires_grad_(True)

    def block(x):
        return bias_act(x, b, 1, "lrelu", clamp=2.0, impl=impl) * 2

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    (got_grad,) = torch.autograd.grad(got.sum(), x)
    want = block(x)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    assert_close(got, want)
    assert_close(got_grad, want_grad)


@pytest.mark.parametrize("impl", impls())
def test_non_contiguous_and_empty(impl):
    x = torch.randn(4, 6, device=device()).t()  # (6, 4), not contiguous
    b = torch.randn(4, device=device())
    assert_close(bias_act(x, b, 1, "swish", impl=impl), bias_act_ref(x, b, 1, "swish"))
    empty = torch.empty(0, 3, device=device())
    assert bias_act(empty, torch.zeros(3, device=device()), 1, "relu", impl=impl).shape == (0, 3)


def test_float64_runs_reference_and_explicit_triton_refuses():
    x = torch.randn(3, 4, dtype=torch.float64)
    assert_close(bias_act(x, None, act="tanh"), bias_act_ref(x, None, act="tanh"), atol=1e-12, rtol=1e-12)
    with pytest.raises(_impl.ImplUnavailableError, match="float64"):
        bias_act(x, None, act="tanh", impl="triton")


@pytest.mark.parametrize("call, error, match", [
    (lambda x: bias_act(x.numpy()), TypeError, "x must be a torch.Tensor"),
    (lambda x: bias_act(x.long()), TypeError, "x must be a floating tensor"),
    (lambda x: bias_act(x, act="gelu"), ValueError, "act must be one of"),
    (lambda x: bias_act(x, torch.zeros(5)), ValueError, r"b must have shape \(x.shape\[dim\],\) = \(3,\)"),
    (lambda x: bias_act(x, torch.zeros(3, dtype=torch.float64)), TypeError, "b must have x's dtype"),
    (lambda x: bias_act(x, torch.zeros(3), dim=4), ValueError, "dim must be in"),
    (lambda x: bias_act(x, torch.zeros(3), dim=1.0), TypeError, "dim must be an int"),
    (lambda x: bias_act(x, clamp=-1.0), ValueError, "clamp must be >= 0"),
    (lambda x: bias_act(x, gain=float("nan")), TypeError, "gain must be a finite number"),
    (lambda x: bias_act(x, alpha="0.2"), TypeError, "alpha must be a finite number"),
    (lambda x: bias_act(x, impl="cuda"), _impl.ImplUnavailableError, "no 'cuda' implementation"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(2, 3, 4))



@pytest.mark.parametrize("with_bias", [False, True])
def test_launch_grid_stays_within_cuda_limits(monkeypatch, with_bias):
    """A 2x64x1024x1024 activation: CUDA caps grid axes 1 and 2 at 65535, so every launch is 1-D."""
    from fastgen.kernels import bias_act as kernel

    grids = []

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *args, **kwargs: None

    monkeypatch.setattr(kernel, "_bias_act_fwd_kernel", Recorder())
    monkeypatch.setattr(kernel, "_bias_act_bwd_kernel", Recorder())
    x = torch.empty(2, 64, 1024, 1024, device="meta")
    b = torch.empty(64, device="meta") if with_bias else None
    kernel.forward(x, b, 1, 2, 0.2, 1.0, None, x)
    kernel.backward(x, x, b, 1, 2, 0.2, 1.0, None, x)
    assert len(grids) == 2 and all(len(g) == 1 for g in grids)
    assert grids[0][0] * kernel.BLOCK >= x.numel()
