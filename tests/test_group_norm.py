"""fastgen.ops.group_norm: every implementation against group_norm_ref (forward and every gradient),
each prologue / epilogue / activation combination, float32 / float16 / bfloat16, NCHW and
channels_last, large groups, first and second order gradients, gradcheck / gradgradcheck, opcheck,
torch.compile and bad input."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen import _impl
from fastgen.ops.group_norm import _group_norm_backward_op, _group_norm_op, group_norm, group_norm_ref
from helpers import KERNEL_DTYPES, TOLERANCE, assert_close

CASES = [  # (shape, num_groups, channels_last)
    pytest.param((1, 2, 1, 1), 1, False, id="minimal"),
    pytest.param((2, 6, 5, 7), 3, False, id="odd"),  # 2 channels per group, nothing a block multiple
    pytest.param((2, 6, 5, 7), 2, True, id="odd-channels_last"),  # 3 channels per group: a masked tile row
    pytest.param((2, 64, 16, 16), 32, False, id="unet-32groups"),
    pytest.param((2, 64, 16, 16), 32, True, id="unet-32groups-channels_last"),
    pytest.param((3, 8, 10), 4, False, id="1d"),  # (B, C, L)
]
OPTIONS = ("weight", "bias", "emb", "scale", "shift")
INPUTS = ("x",) + OPTIONS
# Every subset of (emb, scale, shift) with and without the affine pair, times each activation.
COMBOS = [
    pytest.param(present, act, id="+".join(present or ("plain",)) + f"-{act}")
    for affine in [(), ("weight", "bias")]
    for extra in itertools.chain.from_iterable(itertools.combinations(("emb", "scale", "shift"), r) for r in range(4))
    for present in [affine + extra]
    for act in (None, "silu")
]


def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def impls():
    """reference always; triton on CUDA or under TRITON_INTERPRET=1, else skipped with the reason."""
    reason = _impl.unavailable_reason("triton", torch.device(device()))
    return [pytest.param("reference", id="reference"),
            pytest.param("triton", id="triton", marks=[pytest.mark.skip(reason=f"triton: {reason}")] if reason else [])]


def triton_only():
    return [p for p in impls() if p.id == "triton"]


def make_inputs(shape, channels_last, dtype, present=OPTIONS):
    """x (offset so the mean matters) and the optional operands named in ``present``, in ``dtype``."""
    B, C = shape[:2]
    x = (torch.randn(shape) * 2.0 + 0.5).to(device(), dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    make = {"weight": lambda: 1.0 + 0.5 * torch.randn(C), "bias": lambda: torch.randn(C),
            "emb": lambda: torch.randn(B, C), "scale": lambda: 0.5 * torch.randn(B, C),
            "shift": lambda: torch.randn(B, C)}
    opts = {k: (make[k]().to(device(), dtype) if k in present else None) for k in OPTIONS}
    return x, opts


def run(fn, x, opts, num_groups, activation, dy, wrt):
    """fn's output and the gradients of <out, dy> with respect to the tensors named in ``wrt``."""
    leaves = {"x": x.detach().requires_grad_(True)}
    leaves.update({k: v.detach().requires_grad_(True) for k, v in opts.items() if v is not None})
    out = fn(leaves["x"], num_groups, leaves.get("weight"), leaves.get("bias"), emb=leaves.get("emb"),
             scale=leaves.get("scale"), shift=leaves.get("shift"), activation=activation)
    names = [n for n in wrt if n in leaves]
    grads = torch.autograd.grad(out, [leaves[n] for n in names], dy)
    return out, dict(zip(names, grads))


def upcast(x, opts):
    return x.float(), {k: None if v is None else v.float() for k, v in opts.items()}


def torch_same_dtype(x, num_groups, weight, bias, *, emb, scale, shift, activation):
    """The same math in eager torch in x's own dtype: the yardstick of the low-precision check."""
    per_channel = x.shape[:2] + (1,) * (x.dim() - 2)
    h = x if emb is None else x + emb.view(per_channel)
    y = F.group_norm(h, num_groups, weight, bias)
    y = y if scale is None else y * (1 + scale.view(per_channel))
    y = y if shift is None else y + shift.view(per_channel)
    return F.silu(y) if activation == "silu" else y


def check(got, want, dtype, name, yardstick=None):
    """float32: tolerance relative to the reference's magnitude (gradients are sums over many
    elements). Low precision: error <= 2 * error of torch in the same dtype + atol, all against
    the float32 reference (DESIGN.md, op contract 6)."""
    assert got.dtype == dtype, f"{name}: dtype {got.dtype} != {dtype}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values (an unwritten, poisoned element?)"
    scale = max(1.0, want.abs().max().item())
    atol, rtol = TOLERANCE[dtype]
    if yardstick is None:
        assert_close(got.float(), want.float(), atol=atol * scale, rtol=rtol, name=name)
        return
    err = (got.float() - want.float()).abs().max().item()
    bound = 2 * (yardstick.float() - want.float()).abs().max().item() + atol * scale
    assert err <= bound, f"{name}: max error {err:.3g} > 2 * torch {dtype} error + atol = {bound:.3g}"


@pytest.mark.parametrize("impl", impls())
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape,num_groups,channels_last", CASES)
def test_matches_reference_all_gradients(impl, dtype, shape, num_groups, channels_last):
    x, opts = make_inputs(shape, channels_last, dtype)
    dy = torch.randn(shape, device=device()).to(dtype)
    out, grads = run(lambda *a, **k: group_norm(*a, **k, impl=impl), x, opts, num_groups, "silu", dy, INPUTS)
    assert out.stride() == x.stride(), "the output keeps x's memory format"
    x32, opts32 = upcast(x, opts)
    want, want_grads = run(group_norm_ref, x32, opts32, num_groups, "silu", dy.float(), INPUTS)
    lowp = dtype != torch.float32
    if lowp:
        yard, yard_grads = run(torch_same_dtype, x, opts, num_groups, "silu", dy, INPUTS)
    check(out, want, dtype, "output", yard if lowp else None)
    for name in INPUTS:
        check(grads[name], want_grads[name], dtype, f"grad {name}", yard_grads[name] if lowp else None)


@pytest.mark.parametrize("impl", impls())
@pytest.mark.parametrize("present,activation", COMBOS)
def test_every_prologue_epilogue_activation_combination(impl, present, activation):
    x, opts = make_inputs((2, 6, 3, 5), False, torch.float32, present)
    dy = torch.randn(2, 6, 3, 5, device=device())
    out, grads = run(lambda *a, **k: group_norm(*a, **k, impl=impl), x, opts, 3, activation, dy, INPUTS)
    want, want_grads = run(group_norm_ref, x, opts, 3, activation, dy, INPUTS)
    check(out, want, torch.float32, "output")
    assert grads.keys() == want_grads.keys()
    for name in grads:
        check(grads[name], want_grads[name], torch.float32, f"grad {name}")


@pytest.mark.parametrize("impl", impls())
def test_large_group_streams_through_tiles(impl):
    """C/G * H * W = 32 * 64 * 64 = 131072 elements in one group, far from zero mean: the chunked
    Welford merge must match float64 as closely as torch's float32 group_norm does."""
    x = torch.randn(1, 32, 64, 64, device=device()) * 0.5 + 30.0
    dy = torch.randn_like(x)
    out, grads = run(lambda *a, **k: group_norm(*a, **k, impl=impl), x, {}, 1, "silu", dy, ("x",))
    want, want_grads = run(group_norm_ref, x.double(), {}, 1, "silu", dy.double(), ("x",))
    yard, yard_grads = run(torch_same_dtype, x, {}, 1, "silu", dy, ("x",))
    for got, ref, tor, name in [(out, want, yard, "output"), (grads["x"], want_grads["x"], yard_grads["x"], "grad x")]:
        err = (got.double() - ref).abs().max().item()
        assert err <= 2 * (tor.double() - ref).abs().max().item() + 1e-5, f"{name}: error {err:.3g}"


def test_gradcheck_and_gradgradcheck_float64():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(4, dtype=torch.float64, requires_grad=True) for _ in range(2)] + \
        [torch.randn(2, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]

    def fn(x, w, b, emb, scale, shift):
        return group_norm(x, 2, w, b, emb=emb, scale=scale, shift=shift, activation="silu")

    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(fn, (x, *params))


@pytest.mark.parametrize("impl", impls())
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_second_order_matches_reference(impl, channels_last):
    """A gradient penalty's pattern: differentiate a function of the first-order gradient."""
    x, opts = make_inputs((2, 4, 3, 5), channels_last, torch.float32)
    dy = torch.randn(2, 4, 3, 5, device=device())

    def second_order(fn):
        leaves = [x.detach().requires_grad_(True)] + [opts[k].detach().requires_grad_(True) for k in OPTIONS]
        out = fn(leaves[0], 2, leaves[1], leaves[2], emb=leaves[3], scale=leaves[4], shift=leaves[5], activation="silu")
        first = torch.autograd.grad(out, leaves, dy, create_graph=True)
        penalty = sum((g * g).sum() for g in first)
        return first, torch.autograd.grad(penalty, leaves)

    got_first, got = second_order(lambda *a, **k: group_norm(*a, **k, impl=impl))
    want_first, want = second_order(group_norm_ref)
    for name, g, w in zip(INPUTS, got_first + got, want_first + want):
        check(g, w, torch.float32, f"grad {name}")


@pytest.mark.parametrize("impl", triton_only())
def test_opcheck(impl):
    x, opts = make_inputs((2, 4, 3, 3), False, torch.float32)
    x.requires_grad_(True)
    args = (x, opts["weight"], opts["bias"], opts["emb"], opts["scale"], opts["shift"], 2, 1e-5, True)
    torch.library.opcheck(_group_norm_op, args)
    out, mean, rstd = _group_norm_op(x.detach(), *args[1:])
    bwd_args = (torch.randn_like(out), x.detach(), opts["weight"], opts["bias"], opts["emb"], opts["scale"],
                opts["shift"], mean, rstd, 2, True)
    torch.library.opcheck(_group_norm_backward_op, bwd_args)
    cl = x.detach().to(memory_format=torch.channels_last)
    torch.library.opcheck(_group_norm_op, (cl, None, None, None, None, None, 2, 1e-5, False),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.parametrize("impl", triton_only())
def test_first_order_runs_the_kernel_and_second_order_the_reference(impl, monkeypatch):
    from fastgen.kernels import group_norm as kernel

    calls = []
    launch = kernel.backward
    monkeypatch.setattr(kernel, "backward", lambda *a: calls.append(1) or launch(*a))
    x = torch.randn(2, 4, 3, 3, device=device(), requires_grad=True)
    torch.autograd.grad(group_norm(x, 2, activation="silu", impl=impl).sum(), x)
    assert len(calls) == 1
    (g,) = torch.autograd.grad(group_norm(x, 2, activation="silu", impl=impl).sum(), x, create_graph=True)
    assert len(calls) == 1 and g.requires_grad


@pytest.mark.parametrize("impl", impls())
def test_compile_fullgraph_forward_and_backward(impl):
    x, opts = make_inputs((2, 4, 3, 3), True, torch.float32)
    x.requires_grad_(True)

    def block(x):
        return group_norm(x, 2, opts["weight"], opts["bias"], emb=opts["emb"], scale=opts["scale"],
                          shift=opts["shift"], activation="silu", impl=impl) * 2

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    want = block(x)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    assert_close(out, want)
    assert_close(grad, want_grad, atol=1e-4)


def test_float64_runs_reference_and_explicit_triton_refuses():
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    assert_close(group_norm(x, 2), group_norm_ref(x, 2))
    with pytest.raises(fastgen.ImplUnavailableError, match="float64"):
        group_norm(x, 2, impl="triton")


@pytest.mark.parametrize("impl", impls())
def test_non_dense_input_comes_out_contiguous(impl):
    x = torch.randn(2, 8, 6, 5, device=device())[:, ::2]
    out = group_norm(x, 2, impl=impl)
    assert out.is_contiguous()
    assert_close(out, group_norm_ref(x.contiguous(), 2))


@pytest.mark.parametrize("impl", impls())
def test_empty_batch_gives_empty_output(impl):
    x = torch.randn(0, 4, 3, 3, device=device(), requires_grad=True)
    out = group_norm(x, 2, activation="silu", impl=impl)
    assert out.shape == (0, 4, 3, 3)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.shape == x.shape


def _bad(**overrides):
    kwargs = {"x": torch.randn(2, 6, 3, 3), "num_groups": 3, **overrides}
    return lambda: group_norm(**kwargs)


@pytest.mark.parametrize("call,error,match", [
    (_bad(num_groups=4), ValueError, "num_groups must divide the channel count 6, got 4"),
    (_bad(num_groups=0), ValueError, "num_groups must be a positive int"),
    (_bad(num_groups=1.5), ValueError, "num_groups must be a positive int"),
    (_bad(x=torch.randn(6)), ValueError, r"x must have at least 2 dimension"),
    (_bad(x=torch.randn(2, 6, 3).long()), TypeError, "x must be a floating tensor"),
    (_bad(x=[1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
    (_bad(x=torch.randn(2, 0, 3), num_groups=1), ValueError, "at least one channel and one spatial position"),
    (_bad(x=torch.randn(2, 6, 0, 3)), ValueError, "at least one channel and one spatial position"),
    (_bad(weight=torch.randn(5)), ValueError, r"weight must have shape \(6,\), got \(5,\)"),
    (_bad(bias=torch.randn(6, 1)), ValueError, r"bias must have shape \(6,\)"),
    (_bad(emb=torch.randn(2, 6, 1, 1)), ValueError, r"emb must have shape \(2, 6\), got \(2, 6, 1, 1\)"),
    (_bad(scale=torch.randn(6)), ValueError, r"scale must have shape \(2, 6\)"),
    (_bad(shift=torch.randn(3, 6)), ValueError, r"shift must have shape \(2, 6\)"),
    (_bad(emb=torch.randn(2, 6, dtype=torch.float64)), TypeError, "emb must have x's dtype torch.float32"),
    (_bad(weight=torch.randn(6).half()), TypeError, "weight must have x's dtype"),
    (_bad(weight=torch.ones(6, dtype=torch.long)), TypeError, "weight must be a floating tensor"),
    (_bad(shift=torch.randn(2, 6, device="meta")), ValueError, "shift is on meta but x is on cpu"),
    (_bad(activation="gelu"), ValueError, "activation must be one of"),
    (_bad(eps=-1.0), ValueError, "eps must be a finite number >= 0"),
    (_bad(eps=float("nan")), ValueError, "eps must be a finite number >= 0"),
    (_bad(impl="fast"), ValueError, "impl must be 'auto' or one of"),
    (_bad(impl="cuda"), fastgen.ImplUnavailableError, "no 'cuda' implementation"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
