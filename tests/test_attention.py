"""fastgen.ops.attention: every implementation against attention_ref (forward and dq, dk, dv),
several ragged blocks in the kernels, the second-order fallback, opcheck, torch.compile and bad input.

Low precision is judged as flash-attention judges it: the error of an implementation against the
float32 reference must be at most twice the error of plain torch computing the same math in that
dtype, plus a small atol. Interpreter shapes stay small (B = 1-2, heads 1-2, L <= 100).
"""
import logging
import math

import pytest
import torch

from fastgen import _impl
from fastgen.kernels import attention as kernel
from fastgen.nn import SelfAttention2d
from fastgen.ops.attention import (IMPLS, MAX_HEAD_DIM, _attention_backward_op, _attention_op,
                                   _log_second_order_once, attention, attention_backward_ref, attention_ref)
from helpers import DEVICES, KERNEL_DTYPES, assert_close

DTYPES = KERNEL_DTYPES
SHAPES = [
    (1, 2, 17, 32),  # two heads, L smaller than every block
    (1, 1, 100, 64),  # L not a multiple of any block
    (1, 1, 40, 256),  # the DDPM CIFAR-10 head width, smaller K/V blocks
    (2, 1, 1, 32),  # minimal sequence: one position
]
# Extra absolute slack on top of 2x torch's own low-precision error (and the float32 tolerance).
ATOL = {torch.float32: 2e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}


def impl_params():
    params = []
    for device in ["cpu", "cuda"]:
        for impl in IMPLS:
            reason = None if device in DEVICES else "no CUDA device"
            reason = reason or _impl.unavailable_reason(impl, torch.device(device))
            marks = [pytest.mark.skip(reason=f"{impl} on {device}: {reason}")] if reason else []
            params.append(pytest.param(device, impl, id=f"{device}-{impl}", marks=marks))
    return params


def triton_devices():
    """Devices the Triton kernels run on here, each skipped with the reason where they cannot."""
    params = []
    for device in ["cpu", "cuda"]:
        reason = None if device in DEVICES else "no CUDA device"
        reason = reason or _impl.unavailable_reason("triton", torch.device(device))
        marks = [pytest.mark.skip(reason=f"triton: {reason}")] if reason else []
        params.append(pytest.param(device, id=device, marks=marks))
    return params


def qkv(shape, dtype, device="cpu", lk=None, requires_grad=True):
    b, h, lq, d = shape
    lk = lq if lk is None else lk
    shapes = [(b, h, lq, d), (b, h, lk, d), (b, h, lk, d)]
    return [torch.randn(s, device=device).to(dtype).requires_grad_(requires_grad) for s in shapes]


def torch_low_precision(q, k, v, scale):
    """The same math as plain torch does it in the inputs' dtype: the yardstick for 16-bit error."""
    return torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * scale, dim=-1) @ v


def outputs_and_grads(fn, tensors, grad_out):
    out = fn(*tensors)
    return (out, *torch.autograd.grad(out, tensors, grad_out))


def check(got, want32, low, dtype, names=("out", "dq", "dk", "dv")):
    """got vs the float32 reference; for 16-bit dtypes, no worse than 2x torch's own error + atol."""
    for g, w, lo, name in zip(got, want32, low, names):
        assert g.dtype == dtype and g.shape == w.shape, f"{name}: {g.dtype} {tuple(g.shape)}"
        if dtype == torch.float32:
            assert_close(g, w, atol=ATOL[dtype], rtol=1e-4, name=name)
            continue
        err = (g.float() - w).abs().max().item()
        base = (lo.float() - w).abs().max().item()
        assert err <= 2 * base + ATOL[dtype], \
            f"{name}: error {err:.3g} > 2 x torch {dtype}'s error {base:.3g} + {ATOL[dtype]}"


def run_case(shape, dtype, device, fn, lk=None, scale=None):
    q, k, v = qkv(shape, dtype, device, lk)
    grad_out = torch.randn(q.shape, device=device).to(dtype)
    s = 1.0 / math.sqrt(shape[-1]) if scale is None else scale
    got = outputs_and_grads(fn, (q, k, v), grad_out)
    ref = [t.detach().float().requires_grad_() for t in (q, k, v)]
    want = outputs_and_grads(lambda a, b, c: attention_ref(a, b, c, s), ref, grad_out.float())
    low = outputs_and_grads(lambda a, b, c: torch_low_precision(a, b, c, s), (q, k, v), grad_out)
    check(got, want, low, dtype)


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_reference(device, impl, dtype, shape):
    run_case(shape, dtype, device, lambda q, k, v: attention(q, k, v, impl=impl))


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_inference_forward_matches_reference(device, impl, dtype):
    """Without autograd the reference path is torch's fused SDPA kernel: judged the same way."""
    q, k, v = qkv((1, 2, 100, 64), dtype, device, requires_grad=False)
    scale = 64 ** -0.5
    with torch.no_grad():
        got = attention(q, k, v, impl=impl)
    want = attention_ref(q.float(), k.float(), v.float())
    check((got,), (want,), (torch_low_precision(q, k, v, scale),), dtype, names=("out",))


@pytest.mark.parametrize("device,impl", impl_params())
def test_scale_and_cross_lengths(device, impl):
    run_case((1, 2, 24, 32), torch.float16, device, lambda q, k, v: attention(q, k, v, scale=0.3, impl=impl),
             lk=45, scale=0.3)


@pytest.mark.parametrize("device", triton_devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq,lk,d", [(40, 40, 32), (17, 50, 64), (33, 16, 40)])  # 40: a padded head dim
def test_kernels_with_many_ragged_blocks(device, dtype, lq, lk, d):
    """16 x 16 blocks, so every loop runs several iterations and ends on a ragged block."""
    blocks = (16, 16)
    q, k, v = qkv((1, 2, lq, d), dtype, device, lk, requires_grad=False)
    scale = 1.0 / math.sqrt(d)
    out, stats = torch.empty_like(q), torch.empty(1, 2, 2, lq, device=device)
    kernel.forward(q, k, v, scale, out, stats, blocks)
    grad_out = torch.randn_like(q)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    kernel.backward(grad_out, q, k, v, out, stats, scale, dq, dk, dv, blocks)
    ref = [t.float().requires_grad_() for t in (q, k, v)]
    want = outputs_and_grads(lambda a, b, c: attention_ref(a, b, c, scale), ref, grad_out.float())
    low = outputs_and_grads(lambda a, b, c: torch_low_precision(a, b, c, scale),
                            [t.clone().requires_grad_() for t in (q, k, v)], grad_out)
    check((out, dq, dk, dv), want, low, dtype)
    s2 = q.float() @ k.float().transpose(-2, -1) * scale * kernel.LOG2E  # the scores in base 2
    # Same rounded inputs, float32 arithmetic on both sides: only the summation order differs.
    assert_close(stats[:, :, 0], s2.amax(-1), atol=1e-4, rtol=1e-4, name="row max")
    assert_close(stats.sum(2), torch.logsumexp(s2 / kernel.LOG2E, dim=-1) * kernel.LOG2E, atol=1e-4, rtol=1e-4,
                 name="base-2 log-sum-exp")


@pytest.mark.parametrize("device", triton_devices())
@pytest.mark.parametrize("logits", [1e3, 1e4])
def test_float32_backward_keeps_precision_on_peaked_softmax(device, logits):
    """Logits of ~1e3 (a few keys share the weight) and ~1e4 (one-hot rows): the kernels' float32 out and
    dv are as close to the float64 truth as torch's float32 math (2x + 1e-6). dv was off by 2e-2 at 1e4
    when the backward rebuilt P from a log-sum-exp rounded at the logits' magnitude and from scores not
    bit-identical to the forward's. dq and dk keep an error of ~scale * eps * |dO| |V| |K| (the delta
    term, kernels/attention.py), bounded here at 2 float32 epsilons of that size (the old kernels: 9e-7
    of it at 1e3)."""
    d = 32
    q, k, v = qkv((1, 2, 33, d), torch.float32, device, 40, requires_grad=False)
    scale = logits / math.sqrt(d)
    grad_out = torch.randn_like(q)
    out, stats = torch.empty_like(q), torch.empty(1, 2, 2, 33, device=device)
    kernel.forward(q, k, v, scale, out, stats, (16, 16))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    kernel.backward(grad_out, q, k, v, out, stats, scale, dq, dk, dv, (16, 16))
    truth = outputs_and_grads(lambda a, b, c: attention_ref(a, b, c, scale),
                              [t.double().requires_grad_() for t in (q, k, v)], grad_out.double())
    torch32 = outputs_and_grads(lambda a, b, c: attention_ref(a, b, c, scale),
                                [t.clone().requires_grad_() for t in (q, k, v)], grad_out)
    for name, got, t32, want in zip(("out", "dv"), (out, dv), torch32[::3], truth[::3]):
        err, base = (got.double() - want).abs().max().item(), (t32.double() - want).abs().max().item()
        assert err <= 2 * base + 1e-6, f"{name}: error {err:.3g} > 2 x torch float32's {base:.3g} + 1e-6"
    size = scale * (grad_out.abs().max() * v.abs().max() * k.abs().max()).item()
    for name, got, want in (("dq", dq, truth[1]), ("dk", dk, truth[2])):
        err = (got.double() - want).abs().max().item()
        bound = 2 * torch.finfo(torch.float32).eps * size
        assert err <= bound, f"{name}: error {err:.3g} > 2 eps x scale |dO| |V| |K| = {bound:.3g}"


@pytest.mark.parametrize("device,impl", impl_params())
def test_strided_views_as_the_unet_makes_them(device, impl):
    """q, k, v as permuted views of one fused qkv projection (fastgen/nn/attention.py), and
    non-contiguous upstream gradients (transposed; all strides 0 from a sum): same results."""
    b, length, heads, d = 2, 20, 2, 32
    x = torch.randn(b, length, 3, heads, d, device=device, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    out = attention(*x.permute(2, 0, 3, 1, 4), impl=impl)
    want = attention_ref(*xr.permute(2, 0, 3, 1, 4))
    assert_close(out, want, atol=2e-5, rtol=1e-4)
    transposed = torch.randn(b, length, heads, d, device=device).transpose(1, 2)
    for grad_out in (transposed, torch.ones((), device=device).expand(out.shape)):
        (dx,) = torch.autograd.grad(out, x, grad_out, retain_graph=True)
        (dxr,) = torch.autograd.grad(want, xr, grad_out, retain_graph=True)
        assert_close(dx, dxr, atol=2e-5, rtol=1e-4, name="dx")


def test_gradcheck_and_gradgradcheck_float64_reference():
    q, k, v = (torch.randn(1, 2, 5, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    for fn in (lambda a, b, c: attention_ref(a, b, c, 0.4),  # the ground truth itself
               lambda a, b, c: attention(a, b, c, scale=0.4)):  # the public CPU path
        assert torch.autograd.gradcheck(fn, (q, k, v))
        assert torch.autograd.gradgradcheck(fn, (q, k, v))


def test_reference_backward_is_the_gradient_and_differentiable_float64():
    """attention_backward_ref, what the Triton path runs under create_graph=True: equal to autograd's
    gradient of attention_ref, and itself correctly differentiable (in q, k, v and dO)."""
    q, k, v, grad_out = (torch.randn(1, 2, 5, 8, dtype=torch.float64, requires_grad=True) for _ in range(4))
    want = torch.autograd.grad(attention_ref(q, k, v, 0.4), (q, k, v), grad_out)
    for g, w, name in zip(attention_backward_ref(grad_out, q, k, v, 0.4), want, ["dq", "dk", "dv"]):
        assert_close(g, w, name=name)
    assert torch.autograd.gradcheck(lambda *t: attention_backward_ref(t[3], *t[:3], 0.4), (q, k, v, grad_out))


@pytest.mark.parametrize("device,impl", impl_params())
def test_second_order_matches_reference(device, impl, caplog):
    """A gradient penalty through attention: d/d(q, k, v) of ||d(sum w * out)/dq||^2. The Triton path
    differentiates the reference math there (its backward is not differentiable), logged once."""
    q, k, v = qkv((1, 2, 17, 32), torch.float32, device)
    w = torch.randn(q.shape, device=device)

    def penalty_grads(fn, tensors):
        (gq,) = torch.autograd.grad((fn(*tensors) * w).sum(), tensors[0], create_graph=True)
        return torch.autograd.grad(gq.pow(2).sum(), tensors)

    _log_second_order_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="fastgen"):
        got = penalty_grads(lambda a, b, c: attention(a, b, c, impl=impl), (q, k, v))
        penalty_grads(lambda a, b, c: attention(a, b, c, impl=impl), (q, k, v))
    want = penalty_grads(attention_ref, [t.detach().clone().requires_grad_() for t in (q, k, v)])
    for g, r, name in zip(got, want, ["dq", "dk", "dv"]):
        assert_close(g, r, atol=1e-4, rtol=1e-4, name=f"second-order {name}")
    logged = [r for r in caplog.records if "create_graph=True" in r.getMessage()]
    assert len(logged) == (1 if impl == "triton" else 0)  # once, though two backwards fell back


@pytest.mark.parametrize("device", triton_devices())
def test_opcheck(device):
    q, k, v = qkv((1, 1, 17, 32), torch.float32, device)
    torch.library.opcheck(_attention_op, (q, k, v, 0.25))
    out, stats = _attention_op(q.detach(), k.detach(), v.detach(), 0.25)
    args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, stats, 0.25)
    torch.library.opcheck(_attention_backward_op, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])  # aot_eager traces the backward op too
@pytest.mark.parametrize("device,impl", impl_params())
def test_compile_fullgraph(device, impl, backend):
    q, k, v = qkv((1, 2, 17, 32), torch.float32, device)
    grad_out = torch.randn(q.shape, device=device)

    @torch.compile(fullgraph=True, backend=backend)
    def block(q, k, v):
        return attention(q * 2.0, k, v, impl=impl) + 1.0

    got = outputs_and_grads(block, (q, k, v), grad_out)
    want = outputs_and_grads(lambda a, b, c: attention_ref(a * 2.0, b, c) + 1.0,
                             [t.detach().clone().requires_grad_() for t in (q, k, v)], grad_out)
    for g, w, name in zip(got, want, ["out", "dq", "dk", "dv"]):
        assert_close(g, w, atol=2e-5, rtol=1e-4, name=name)


@pytest.mark.parametrize("device", triton_devices())
def test_self_attention_layer_runs_the_kernel(device, monkeypatch):
    """fastgen.nn's attention goes through the op: with triton as the default, SelfAttention2d
    (two heads of 32 over a 5x4 map, permuted qkv views) matches the reference path."""
    layer = SelfAttention2d(64, heads=2).to(device)
    x = torch.randn(2, 64, 5, 4, device=device)
    want = layer(x)
    monkeypatch.setattr(_impl, "_default_impl", "triton")
    calls = []
    launch = kernel.forward
    monkeypatch.setattr(kernel, "forward", lambda *a: calls.append(1) or launch(*a))
    got = layer(x)
    assert calls, "the Triton kernel did not run"
    assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_auto_falls_back_for_head_dims_the_kernels_cannot_take(monkeypatch, caplog):
    monkeypatch.setitem(_impl.AUTO_ORDER, "cpu", ("triton", "reference"))  # as on CUDA
    q, k, v = qkv((1, 1, 9, 12), torch.float32, requires_grad=False)
    with caplog.at_level(logging.WARNING, logger="fastgen"):
        out = attention(q, k, v)
    assert_close(out, attention_ref(q, k, v), atol=2e-5, rtol=1e-4)
    assert any("multiple of 8" in r.getMessage() for r in caplog.records)


def test_head_dim_limit_agrees_with_the_kernels():
    assert MAX_HEAD_DIM == kernel.MAX_HEAD_DIM
    with pytest.raises(ValueError, match="multiple of 8"):
        kernel.tile_config(kernel.MAX_HEAD_DIM + 8, torch.float16)


def test_bad_input():
    q, k, v = qkv((1, 2, 8, 32), torch.float32, requires_grad=False)
    with pytest.raises(TypeError, match="q must be a tensor|q must be"):
        attention(q.numpy(), k, v)
    with pytest.raises(ValueError, match=r"q must have shape \(B, heads, L, head_dim\)"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="k must have shape"):
        attention(q, k[:, :1], v)
    with pytest.raises(ValueError, match="k must have shape"):
        attention(q, k[..., :16], v)
    with pytest.raises(ValueError, match="v must have k's shape"):
        attention(q, k, v[:, :, :4])
    with pytest.raises(TypeError, match="k must have q's dtype"):
        attention(q, k.half(), v)
    with pytest.raises(TypeError, match="floating"):
        attention(q, k, v.long())
    with pytest.raises(ValueError, match="share a device"):
        attention(q, k.to("meta"), v)
    with pytest.raises(ValueError, match="at least one position"):
        attention(q[:, :, :0], k, v)
    with pytest.raises(ValueError, match="at least one position"):
        attention(q, k[:, :, :0], v[:, :, :0])
    with pytest.raises(ValueError, match="scale must be a finite number"):
        attention(q, k, v, scale=float("nan"))
    with pytest.raises(ValueError, match="impl must be"):
        attention(q, k, v, impl="flash")
    if _impl.unavailable_reason("triton", q.device) is None:
        q12, k12, v12 = qkv((1, 1, 8, 12), torch.float32, requires_grad=False)
        with pytest.raises(ValueError, match="multiple of 8 up to 256"):
            attention(q12, k12, v12, impl="triton")
        q264, k264, v264 = qkv((1, 1, 8, 264), torch.float32, requires_grad=False)
        with pytest.raises(ValueError, match="multiple of 8 up to 256"):
            attention(q264, k264, v264, impl="triton")


@pytest.mark.parametrize("device,impl", impl_params())
def test_empty_batch(device, impl):
    q, k, v = qkv((0, 2, 8, 32), torch.float32, device)
    out = attention(q, k, v, impl=impl)
    assert out.shape == (0, 2, 8, 32)
    out.sum().backward()
    assert q.grad.shape == q.shape
