"""fastgen.ops.upfirdn2d: the reference against a direct float64 sum written from the definition,
the Triton kernel against the reference (StyleGAN2's 2x up / down, odd shapes, negative padding,
2-D and separable filters, flip, gain, dtypes), gradients of first and second order, the adjoint
identity, opcheck, torch.compile and bad input."""
from __future__ import annotations

import itertools

import pytest
import torch

from fastgen import _impl
from fastgen.ops.upfirdn2d import _upfirdn2d_op, upfirdn2d, upfirdn2d_ref
from helpers import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def impls():
    reason = _impl.unavailable_reason("triton", torch.device(device()))
    return [pytest.param("reference", id="reference"),
            pytest.param("triton", id="triton", marks=[pytest.mark.skip(reason=f"triton: {reason}")] if reason else [])]


def triton_only():
    return [p for p in impls() if p.id == "triton"]


def direct(x, f, up, down, pad, flip, gain):
    """The definition, element by element, in float64: y[o] = sum_t f'[t] z[o * down + t]."""
    x, f = x.double(), f.double()
    f2 = torch.outer(f, f) if f.dim() == 1 else f
    f2 = f2 * gain
    g = f2 if flip else f2.flip([0, 1])
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, pad
    B, C, H, W = x.shape
    KH, KW = g.shape
    OH = (H * upy + py0 + py1 - KH) // downy + 1
    OW = (W * upx + px0 + px1 - KW) // downx + 1
    y = torch.zeros(B, C, OH, OW, dtype=torch.float64)
    for oy, ox, ty, tx in itertools.product(range(OH), range(OW), range(KH), range(KW)):
        u, v = oy * downy + ty - py0, ox * downx + tx - px0
        if u >= 0 and v >= 0 and u % upy == 0 and v % upx == 0 and u // upy < H and v // upx < W:
            y[:, :, oy, ox] += g[ty, tx] * x[:, :, u // upy, v // upx]
    return y


FIR = torch.tensor([1.0, 3.0, 3.0, 1.0])  # StyleGAN2's default resampling filter (normalised below)
CONFIGS = [  # (shape, filter, up, down, padding [x0, x1, y0, y1], flip, gain)
    ((2, 3, 5, 4), FIR / 8, 2, 1, [2, 1, 2, 1], False, 4.0),          # StyleGAN2 upsample 2x
    ((2, 3, 8, 6), FIR / 8, 1, 2, [1, 1, 1, 1], False, 1.0),          # StyleGAN2 downsample 2x
    ((1, 2, 7, 5), torch.randn(3, 2), 1, 1, [0, 0, 0, 0], True, 1.0),  # plain 2-D correlation
    ((1, 2, 6, 7), torch.randn(3, 4), (2, 3), (1, 2), [1, 2, 0, 3], False, 2.0),  # anisotropic
    ((2, 1, 9, 9), torch.randn(5), 1, 3, [-1, -2, 2, -1], True, 0.5),  # negative padding crops
    ((1, 1, 1, 1), torch.randn(2, 2), 3, 1, [1, 1, 1, 1], False, 1.0),  # a 1x1 image
]


@pytest.mark.parametrize("shape,f,up,down,pad,flip,gain", CONFIGS)
def test_reference_matches_the_definition(shape, f, up, down, pad, flip, gain):
    x = torch.randn(shape, dtype=torch.float64)
    pairs = lambda v: tuple(v) if isinstance(v, tuple) else (v, v)  # noqa: E731
    want = direct(x, f, pairs(up), pairs(down), tuple(pad), flip, gain)
    assert_close(upfirdn2d_ref(x, f.double(), up, down, pad, flip, gain), want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("impl", triton_only())
@pytest.mark.parametrize("shape,f,up,down,pad,flip,gain", CONFIGS)
def test_kernel_matches_reference_and_its_gradient(impl, shape, f, up, down, pad, flip, gain):
    x = torch.randn(shape, device=device(), requires_grad=True)
    f = f.to(device())
    got = upfirdn2d(x, f, up, down, pad, flip, gain, impl=impl)
    want = upfirdn2d_ref(x, f, up, down, pad, flip, gain)
    assert_close(got, want, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(got)
    (got_dx,) = torch.autograd.grad(got, x, dy)
    (want_dx,) = torch.autograd.grad(want, x, dy)
    assert_close(got_dx, want_dx, atol=1e-5, rtol=1e-5, name="dx")


@pytest.mark.parametrize("impl", triton_only())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_low_precision(impl, dtype):
    x = torch.randn(2, 4, 8, 8, device=device()).to(dtype)
    f = (FIR / 8).to(device())
    want = upfirdn2d_ref(x.float(), f, 2, 1, [2, 1, 2, 1], gain=4.0)
    assert_close(upfirdn2d(x, f, 2, 1, [2, 1, 2, 1], gain=4.0, impl=impl), want, dtype)


@pytest.mark.parametrize("impl", triton_only())
def test_adjoint_identity(impl):
    """<A x, y> = <x, A^T y> with A^T from the backward: checks the adjoint padding for every axis."""
    for shape, f, up, down, pad, flip, gain in CONFIGS:
        x = torch.randn(shape, device=device(), requires_grad=True)
        y = upfirdn2d(x, f.to(device()), up, down, pad, flip, gain, impl=impl)
        r = torch.randn_like(y)
        (adj,) = torch.autograd.grad(y, x, r)
        lhs, rhs = (y.detach().double() * r.double()).sum(), (x.detach().double() * adj.double()).sum()
        assert abs(lhs - rhs) <= 1e-4 * (1 + abs(lhs)), (shape, up, down, pad)


def test_gradcheck_and_gradgradcheck_float64():
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    f = (FIR / 8).double()
    fn = lambda x: upfirdn2d(x, f, 2, 1, [2, 1, 2, 1], gain=4.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("impl", triton_only())
def test_second_order_matches_reference(impl):
    """R1-style: the gradient of a squared gradient norm through a 2x downsampling discriminator layer."""
    x = torch.randn(2, 3, 8, 8, device=device(), requires_grad=True)
    f = (FIR / 8).to(device())

    def penalty(fn):
        (g,) = torch.autograd.grad(fn(x).square().sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), x)[0]

    got = penalty(lambda x: upfirdn2d(x, f, 1, 2, 1, impl=impl))
    want = penalty(lambda x: upfirdn2d_ref(x, f, 1, 2, 1))
    assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", triton_only())
def test_opcheck(impl):
    x = torch.randn(1, 2, 5, 4, device=device(), requires_grad=True)
    g = torch.randn(4, 4, device=device())
    torch.library.opcheck(_upfirdn2d_op, (x, g, 2, 2, 1, 1, 2, 1, 2, 1, 10, 8))


@pytest.mark.parametrize("impl", impls())
def test_compile_fullgraph_forward_and_backward(impl):
    x = torch.randn(2, 3, 6, 6, device=device(), requires_grad=True)
    f = (FIR / 8).to(device())

    def block(x):
        return upfirdn2d(x, f, 2, 1, [2, 1, 2, 1], gain=4.0, impl=impl) * 2

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    (got_grad,) = torch.autograd.grad(got.sum(), x)
    want = block(x)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    assert_close(got, want)
    assert_close(got_grad, want_grad)


def test_identity_filter_and_float64():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    assert torch.equal(upfirdn2d(x, None), x)
    with pytest.raises(_impl.ImplUnavailableError, match="float64"):
        upfirdn2d(x, None, impl="triton")


@pytest.mark.parametrize("call, error, match", [
    (lambda x: upfirdn2d(x[0], FIR), ValueError, r"x must have shape \(B, C, H, W\)"),
    (lambda x: upfirdn2d(x, torch.ones(2, 2, 2)), ValueError, "f must be a 1-D .* or 2-D FIR filter"),
    (lambda x: upfirdn2d(x, torch.ones(0)), ValueError, "at least one tap"),
    (lambda x: upfirdn2d(x, torch.ones(3, dtype=torch.int64)), TypeError, "f must be a floating tensor"),
    (lambda x: upfirdn2d(x, FIR.clone().requires_grad_(True)), ValueError, "treats the filter as a constant"),
    (lambda x: upfirdn2d(x, FIR, up=0), ValueError, "up must be >= 1"),
    (lambda x: upfirdn2d(x, FIR, down=[1, 2, 3]), ValueError, r"down must be an int or a pair"),
    (lambda x: upfirdn2d(x, FIR, padding=[1, 2, 3]), ValueError, "padding must be an int"),
    (lambda x: upfirdn2d(x, FIR, padding=1.5), TypeError, "padding must be an int"),
    (lambda x: upfirdn2d(x, FIR, padding=-3), ValueError, "nothing is left"),
    (lambda x: upfirdn2d(x, FIR, flip_filter=1), TypeError, "flip_filter must be a bool"),
    (lambda x: upfirdn2d(x, FIR, impl="cuda"), _impl.ImplUnavailableError, "no 'cuda' implementation"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(1, 2, 4, 4))
