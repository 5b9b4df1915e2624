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
    # 3 channels per group x 41 x 37 > one 4096-element tile: the streaming kernels with a ragged
    # last tile (the cases above each fit one tile and take the single-read path); at batch 2 both
    # layouts split each group in two chunks (SPLIT_MIN_PROGRAMS; the unsplit stream: NCHW_PATHS, CL_PATHS)
    pytest.param((2, 6, 41, 37), 2, False, id="streaming"),
    pytest.param((2, 6, 41, 37), 2, True, id="streaming-channels_last"),
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


def test_cases_cover_both_triton_paths():
    """CASES must reach the single-tile kernels and the streaming ones, or one path goes untested."""
    from fastgen.kernels import group_norm as kernel

    single = set()
    for case in CASES:
        shape, groups, channels_last = case.values
        x = torch.empty(shape)
        x = x.to(memory_format=torch.channels_last) if channels_last else x
        S, block_s = kernel._geometry(x, groups)[1], kernel._geometry(x, groups)[6]
        single.add(S <= block_s)
    assert single == {True, False}


@pytest.mark.parametrize("impl", impls())
def test_large_group_streams_through_tiles(impl):
    """C/G * H * W = 32 * 64 * 64 = 131072 elements in one group, far from zero mean: the chunked
    Welford merge (here split over 32 programs: one group at batch 1) must match float64 as closely
    as torch's float32 group_norm does."""
    x = torch.randn(1, 32, 64, 64, device=device()) * 0.5 + 30.0
    dy = torch.randn_like(x)
    out, grads = run(lambda *a, **k: group_norm(*a, **k, impl=impl), x, {}, 1, "silu", dy, ("x",))
    want, want_grads = run(group_norm_ref, x.double(), {}, 1, "silu", dy.double(), ("x",))
    yard, yard_grads = run(torch_same_dtype, x, {}, 1, "silu", dy, ("x",))
    for got, ref, tor, name in [(out, want, yard, "output"), (grads["x"], want_grads["x"], yard_grads["x"], "grad x")]:
        err = (got.double() - ref).abs().max().item()
        assert err <= 2 * (tor.double() - ref).abs().max().item() + 1e-5, f"{name}: error {err:.3g}"


# --- channels_last kernels: [BLOCK_S, GB, CG] tiles, unsplit and split (two-phase) --------------------

# (shape, num_groups): channels per group c_g = 1, 3, 16, 40 (one lane per group; a ragged
# power-of-two row; a whole 16-lane row per group; 40 of 64 lanes), batch 1 and 2, spatial sizes
# that are no multiple of any block.
CL_CASES = [
    pytest.param((2, 16, 5, 7), 16, id="cg1"),
    pytest.param((1, 6, 9, 11), 2, id="cg3-B1"),
    pytest.param((2, 48, 5, 3), 3, id="cg16"),
    pytest.param((1, 80, 7, 5), 2, id="cg40-B1"),
]
# (SPLIT_MIN_PROGRAMS, CL_TILE): 0 never splits (a large batch's launch); 3 splits these 1-2 program
# launches into 2-3 chunks of several tiles; a huge one into one-tile chunks (many partials). A
# small CL_TILE cuts these shapes into several tiles, the last tile and chunk ragged.
CL_PATHS = {"single-tile": (0, 4096), "streaming": (0, 128), "split": (3, 128), "split-1-tile-chunks": (1 << 30, 64)}


def force_channels_last_path(monkeypatch, path):
    from fastgen.kernels import group_norm as kernel

    threshold, tile = CL_PATHS[path]
    monkeypatch.setattr(kernel, "SPLIT_MIN_PROGRAMS", threshold)
    monkeypatch.setattr(kernel, "CL_TILE", tile)
    monkeypatch.setattr(kernel, "TILE", tile)  # the single-tile bound
    return kernel


@pytest.mark.parametrize("impl", triton_only())
@pytest.mark.parametrize("path", list(CL_PATHS))
@pytest.mark.parametrize("shape,num_groups", CL_CASES)
def test_channels_last_paths_match_reference(impl, path, shape, num_groups, monkeypatch):
    """Every channels_last kernel path, every operand and gradient, against the float64 reference."""
    kernel = force_channels_last_path(monkeypatch, path)
    x, opts = make_inputs(shape, True, torch.float32)
    geo = kernel._cl_geometry(x, num_groups)
    split, single = geo["num_chunks"] > 1, geo["SINGLE_TILE"]
    assert (split, single) == (path.startswith("split"), path == "single-tile"), geo  # the path asked for
    if path == "split":
        assert geo["chunk"] > geo["BLOCK_S"], geo  # chunks of several tiles
    dy = torch.randn(shape, device=device())
    out, grads = run(lambda *a, **k: group_norm(*a, **k, impl=impl), x, opts, num_groups, "silu", dy, INPUTS)
    want, want_grads = run(group_norm_ref, *upcast(x, opts), num_groups, "silu", dy.float(), INPUTS)
    assert out.stride() == x.stride()
    check(out, want, torch.float32, "output")
    for name in INPUTS:
        check(grads[name], want_grads[name], torch.float32, f"grad {name}")


@pytest.mark.parametrize("impl", triton_only())
@pytest.mark.parametrize("path", ["streaming", "split"])
def test_channels_last_far_from_zero_mean(impl, path, monkeypatch):
    """Per-channel Chan merges across tiles and chunks keep float32 statistics of a group whose
    mean (30) is 60 standard deviations from zero: within 2x torch's float32 error of float64."""
    force_channels_last_path(monkeypatch, path)
    x = (torch.randn(1, 12, 33, 31, device=device()) * 0.5 + 30.0).to(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    out, grads = run(lambda *a, **k: group_norm(*a, **k, impl=impl), x, {}, 3, "silu", dy, ("x",))
    want, want_grads = run(group_norm_ref, x.double(), {}, 3, "silu", dy.double(), ("x",))
    yard, yard_grads = run(torch_same_dtype, x, {}, 3, "silu", dy, ("x",))
    for got, ref, tor, name in [(out, want, yard, "output"), (grads["x"], want_grads["x"], yard_grads["x"], "grad x")]:
        err = (got.double() - ref).abs().max().item()
        assert err <= 2 * (tor.double() - ref).abs().max().item() + 1e-5, f"{name}: error {err:.3g}"


@pytest.mark.parametrize("impl", triton_only())
def test_channels_last_split_is_deterministic_and_second_order_works(impl, monkeypatch):
    """The split path gives bit-identical results on a rerun (fixed merge order, no atomics), and a
    gradient penalty through it matches the reference."""
    force_channels_last_path(monkeypatch, "split")
    x, opts = make_inputs((1, 6, 9, 11), True, torch.float32)
    dy = torch.randn(1, 6, 9, 11, device=device())
    first = run(lambda *a, **k: group_norm(*a, **k, impl=impl), x, opts, 2, "silu", dy, INPUTS)
    again = run(lambda *a, **k: group_norm(*a, **k, impl=impl), x, opts, 2, "silu", dy, INPUTS)
    assert torch.equal(first[0], again[0]) and all(torch.equal(first[1][n], again[1][n]) for n in INPUTS)

    def penalty_grads(fn):
        leaves = [x.detach().requires_grad_(True)] + [opts[k].detach().requires_grad_(True) for k in OPTIONS]
        out = fn(leaves[0], 2, leaves[1], leaves[2], emb=leaves[3], scale=leaves[4], shift=leaves[5], activation="silu")
        grads = torch.autograd.grad(out, leaves, dy, create_graph=True)
        return torch.autograd.grad(sum((g * g).sum() for g in grads), leaves)

    for name, g, w in zip(INPUTS, penalty_grads(lambda *a, **k: group_norm(*a, **k, impl=impl)),
                          penalty_grads(group_norm_ref)):
        check(g, w, torch.float32, f"second-order grad {name}")


def test_channels_last_split_fills_the_gpu_only_for_small_batches():
    """Sampling one 320-channel 64x64 image is cut into chunks to about SPLIT_MIN_PROGRAMS programs;
    a training batch of 256 is not split. Reads stay whole row segments of 64 channels."""
    from fastgen.kernels import group_norm as kernel

    one = kernel._cl_geometry(torch.empty(1, 320, 64, 64, device="meta").to(memory_format=torch.channels_last), 32)
    assert one["GB"] * one["CG"] == kernel.CL_CHANNELS and one["num_chunks"] > 1
    assert kernel.SPLIT_MIN_PROGRAMS // 2 <= one["grid"][0] <= 2 * kernel.SPLIT_MIN_PROGRAMS
    assert one["chunk"] % one["BLOCK_S"] == 0 and (one["num_chunks"] - 1) * one["chunk"] < 64 * 64
    batch = kernel._cl_geometry(torch.empty(256, 128, 32, 32, device="meta").to(memory_format=torch.channels_last), 32)
    assert batch["num_chunks"] == 1 and batch["grid"][0] >= kernel.SPLIT_MIN_PROGRAMS


# --- NCHW split: a group's positions cut into chunks of whole tiles (two-phase reduction) -------------

# (shape, num_groups): 4 channels per group over 8 x 8; 5 channels per group (a masked tile row) over
# 7 x 5, nothing a block multiple.
NCHW_SPLIT_CASES = [pytest.param((1, 32, 8, 8), 8, id="1x32x8x8-G8"), pytest.param((1, 20, 7, 5), 4, id="1x20x7x5-G4")]
# (SPLIT_MIN_PROGRAMS, TILE): 0 never splits; a TILE of 64 cuts these groups into 4-5 tiles of 16 / 8
# positions; 16 splits their 8 / 4-program launches into 2-3 chunks of two tiles (the last one
# ragged); a huge threshold into one-tile chunks (one partial per tile).
NCHW_PATHS = {"single-tile": (0, 4096), "streaming": (0, 64), "split": (16, 64), "split-1-tile-chunks": (1 << 30, 64)}


def force_nchw_path(monkeypatch, path, x, num_groups):
    """Set the module knobs for ``path``; the NCHW geometry x gets, checked to be that path."""
    from fastgen.kernels import group_norm as kernel

    threshold, tile = NCHW_PATHS[path]
    monkeypatch.setattr(kernel, "SPLIT_MIN_PROGRAMS", threshold)
    monkeypatch.setattr(kernel, "TILE", tile)
    geo = kernel._nchw_geometry(x, num_groups)
    assert (geo["num_chunks"] > 1, geo["SINGLE_TILE"]) == (path.startswith("split"), path == "single-tile"), geo
    if path == "split":
        assert geo["chunk"] > geo["BLOCK_S"] and (geo["num_chunks"] - 1) * geo["chunk"] < geo["S"], geo
    return geo


def run_vs_float64(impl, x, opts, num_groups, activation, dy):
    """The kernel's output and gradients, checked against the float64 reference (float32 within
    TOLERANCE; float16 / bfloat16 within 2x torch's own error in that dtype + atol)."""
    out, grads = run(lambda *a, **k: group_norm(*a, **k, impl=impl), x, opts, num_groups, activation, dy, INPUTS)
    x64, opts64 = x.double(), {k: None if v is None else v.double() for k, v in opts.items()}
    want, want_grads = run(group_norm_ref, x64, opts64, num_groups, activation, dy.double(), INPUTS)
    lowp = x.dtype != torch.float32
    if lowp:
        yard, yard_grads = run(torch_same_dtype, x, opts, num_groups, activation, dy, INPUTS)
    assert out.stride() == x.stride()
    check(out, want, x.dtype, "output", yard if lowp else None)
    assert grads.keys() == want_grads.keys()
    for name in grads:
        check(grads[name], want_grads[name], x.dtype, f"grad {name}", yard_grads[name] if lowp else None)
    return out, grads


@pytest.mark.parametrize("impl", triton_only())
@pytest.mark.parametrize("extras", ["all", "plain"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape,num_groups", NCHW_SPLIT_CASES)
def test_nchw_split_matches_reference(impl, shape, num_groups, dtype, extras, monkeypatch):
    """The split kernels (chunks of two tiles, a ragged last chunk), forward and every gradient, with
    every operand and SiLU or none of them, against float64."""
    present, activation = (OPTIONS, "silu") if extras == "all" else ((), None)
    x, opts = make_inputs(shape, False, dtype, present)
    force_nchw_path(monkeypatch, "split", x, num_groups)
    run_vs_float64(impl, x, opts, num_groups, activation, torch.randn(shape, device=device()).to(dtype))


@pytest.mark.parametrize("impl", triton_only())
@pytest.mark.parametrize("path", ["single-tile", "streaming", "split-1-tile-chunks"])
@pytest.mark.parametrize("shape,num_groups", NCHW_SPLIT_CASES)
def test_nchw_paths_match_reference(impl, path, shape, num_groups, monkeypatch):
    """The other NCHW kernel paths at the same shapes: one tile, the unsplit two-pass stream, and a
    split into one-tile chunks; every operand and gradient against float64."""
    x, opts = make_inputs(shape, False, torch.float32)
    force_nchw_path(monkeypatch, path, x, num_groups)
    run_vs_float64(impl, x, opts, num_groups, "silu", torch.randn(shape, device=device()))


@pytest.mark.parametrize("impl", triton_only())
def test_nchw_split_agrees_with_unsplit_and_is_deterministic(impl, monkeypatch):
    """Split and unsplit streams differ only in summation order; a rerun of the split is bit for bit
    the same (fixed merge order, no atomics)."""
    x, opts = make_inputs((1, 20, 7, 5), False, torch.float32)
    dy = torch.randn(1, 20, 7, 5, device=device())
    fused = lambda *a, **k: group_norm(*a, **k, impl=impl)  # noqa: E731
    force_nchw_path(monkeypatch, "split", x, 4)
    first, again = (run(fused, x, opts, 4, "silu", dy, INPUTS) for _ in range(2))
    assert torch.equal(first[0], again[0]) and all(torch.equal(first[1][n], again[1][n]) for n in INPUTS)
    force_nchw_path(monkeypatch, "streaming", x, 4)
    unsplit = run(fused, x, opts, 4, "silu", dy, INPUTS)
    check(first[0], unsplit[0], torch.float32, "split vs unsplit output")
    for name in INPUTS:
        check(first[1][name], unsplit[1][name], torch.float32, f"split vs unsplit grad {name}")


@pytest.mark.parametrize("impl", triton_only())
@pytest.mark.parametrize("path", ["streaming", "split"])
def test_nchw_far_from_zero_mean(impl, path, monkeypatch):
    """A group whose mean (30) is 60 standard deviations from zero: the pivot-shifted Chan merges
    across tiles and chunks stay within 2x torch's float32 error of float64."""
    x = torch.randn(1, 12, 17, 15, device=device()) * 0.5 + 30.0
    force_nchw_path(monkeypatch, path, x, 3)
    dy = torch.randn_like(x)
    out, grads = run(lambda *a, **k: group_norm(*a, **k, impl=impl), x, {}, 3, "silu", dy, ("x",))
    want, want_grads = run(group_norm_ref, x.double(), {}, 3, "silu", dy.double(), ("x",))
    yard, yard_grads = run(torch_same_dtype, x, {}, 3, "silu", dy, ("x",))
    for got, ref, tor, name in [(out, want, yard, "output"), (grads["x"], want_grads["x"], yard_grads["x"], "grad x")]:
        err = (got.double() - ref).abs().max().item()
        assert err <= 2 * (tor.double() - ref).abs().max().item() + 1e-5, f"{name}: error {err:.3g}"


def test_nchw_split_fills_the_gpu_only_for_small_batches():
    """Sampling one 320-channel 64x64 image (32 groups: 32 programs unsplit) is cut into chunks of
    whole tiles to about SPLIT_MIN_PROGRAMS programs; a training batch is not split."""
    from fastgen.kernels import group_norm as kernel

    one = kernel._nchw_geometry(torch.empty(1, 320, 64, 64, device="meta"), 32)
    assert one["num_chunks"] > 1 and not one["SINGLE_TILE"]
    assert kernel.SPLIT_MIN_PROGRAMS // 2 <= one["grid"][0] <= 2 * kernel.SPLIT_MIN_PROGRAMS
    assert one["chunk"] % one["BLOCK_S"] == 0 and (one["num_chunks"] - 1) * one["chunk"] < 64 * 64
    for shape in ((256, 128, 32, 32), (16, 320, 64, 64)):  # 8192 and 512 (sample, group) programs
        batch = kernel._nchw_geometry(torch.empty(shape, device="meta"), 32)
        assert batch["num_chunks"] == 1 and batch["grid"][0] == shape[0] * 32


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
    args = (x, opts["weight"], opts["bias"], opts["emb"], opts["scale"], opts["shift"], 2, 1e-5, True, impl)
    torch.library.opcheck(_group_norm_op, args)
    out, mean, rstd = _group_norm_op(x.detach(), *args[1:])
    bwd_args = (torch.randn_like(out), x.detach(), opts["weight"], opts["bias"], opts["emb"], opts["scale"],
                opts["shift"], mean, rstd, 2, True, impl)
    torch.library.opcheck(_group_norm_backward_op, bwd_args)
    cl = x.detach().to(memory_format=torch.channels_last)
    torch.library.opcheck(_group_norm_op, (cl, None, None, None, None, None, 2, 1e-5, False, impl),
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


def assert_compiles_like_eager(block, x):
    """torch.compile(fullgraph=True) of ``block`` gives eager's output and gradient w.r.t. x."""
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    (got_grad,) = torch.autograd.grad(got.sum(), x)
    want = block(x)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    assert_close(got, want)
    assert_close(got_grad, want_grad, atol=1e-4)


@pytest.mark.parametrize("impl", impls())
def test_compile_fullgraph_forward_and_backward(impl):
    x, opts = make_inputs((2, 4, 3, 3), True, torch.float32)
    x.requires_grad_(True)

    def block(x):
        return group_norm(x, 2, opts["weight"], opts["bias"], emb=opts["emb"], scale=opts["scale"],
                          shift=opts["shift"], activation="silu", impl=impl) * 2

    assert_compiles_like_eager(block, x)


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
    (_bad(impl="cuda"), fastgen.ImplUnavailableError, r"impl='cuda' takes a 4-D channels_last x \(NHWC storage\)"),
    (_bad(x=torch.randn(2, 6, 3, 3).to(memory_format=torch.channels_last), impl="cuda"), fastgen.ImplUnavailableError,
     "the CUDA extension runs on CUDA tensors, got a cpu tensor"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- impl="cuda": csrc/group_norm.cu, 4-D channels_last x only -----------------------------------------

def _cuda_kernel_reason():
    if not torch.cuda.is_available():
        return "no CUDA device"
    return _impl.unavailable_reason("cuda", torch.device("cuda"))


needs_cuda_kernel = pytest.mark.skipif(_cuda_kernel_reason() is not None,
                                       reason=f"impl='cuda' cannot run here: {_cuda_kernel_reason()}")

# (shape, num_groups): each names the kernel path it stresses (V = channels per vector load).
CUDA_CASES = [
    pytest.param((1, 2, 1, 1), 1, id="minimal-B1-HW1"),
    pytest.param((4, 64, 1, 1), 32, id="HW1-32groups"),
    pytest.param((2, 6, 5, 7), 2, id="Cg3-odd-spatial"),  # C = 6: V = 2
    pytest.param((2, 96, 5, 7), 32, id="C=3G"),  # Cg = 3: 16-byte vectors straddle groups
    pytest.param((3, 15, 4, 3), 5, id="odd-C"),  # V = 1
    pytest.param((3, 40, 7, 9), 8, id="Cg5"),  # groups of 5 inside 8-channel vectors
    pytest.param((2, 128, 16, 16), 32, id="unet"),
    pytest.param((1, 32, 64, 64), 1, id="B1-large-HW"),  # one group of 131072: many chunks
    pytest.param((2, 1536, 2, 3), 32, id="C1536-tiles-of-whole-groups"),  # C > 1024: 2 tiles of 16 groups
    pytest.param((2, 2048, 3, 5), 4, id="C2048-Cg512"),  # 2 groups per 1024-channel tile
    pytest.param((1, 2560, 3, 3), 1, id="Cg2560-split-over-tiles"),  # one group over 3 tiles
    pytest.param((2, 1030, 3, 3), 2, id="Cg515-groups-straddle-tiles"),  # tile 0 holds group 0 and part of 1
]


def reference64(x, opts, num_groups, activation, dy, wrt=INPUTS):
    """The float64 reference on the same (rounded) inputs."""
    opts64 = {k: None if v is None else v.double() for k, v in opts.items()}
    return run(group_norm_ref, x.double(), opts64, num_groups, activation, dy.double(), wrt)


def yardstick(x, opts, num_groups, activation, dy, wrt=INPUTS):
    """torch in x's dtype (float32: the reference's own float32 math): the error to compare with."""
    if x.dtype == torch.float32:
        return run(group_norm_ref, x, opts, num_groups, activation, dy, wrt)
    return run(torch_same_dtype, x, opts, num_groups, activation, dy, wrt)


def check64(got, want64, yard, dtype, name):
    """error(kernel, float64) <= 2 * error(torch in dtype, float64) + atol * magnitude."""
    assert got.dtype == dtype, f"{name}: dtype {got.dtype} != {dtype}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values (an unwritten, poisoned element?)"
    scale = max(1.0, want64.abs().max().item())
    err = (got.double() - want64).abs().max().item()
    bound = 2 * (yard.double() - want64).abs().max().item() + TOLERANCE[dtype][0] * scale
    assert err <= bound, f"{name}: max error {err:.3g} > 2 * torch {dtype} error + atol = {bound:.3g}"


def cuda_group_norm(*args, **kwargs):
    return group_norm(*args, **kwargs, impl="cuda")


@needs_cuda_kernel
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape,num_groups", CUDA_CASES)
def test_cuda_matches_float64_reference_all_gradients(dtype, shape, num_groups):
    x, opts = make_inputs(shape, True, dtype)
    dy = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
    out, grads = run(cuda_group_norm, x, opts, num_groups, "silu", dy, INPUTS)
    assert out.stride() == x.stride() and out.is_contiguous(memory_format=torch.channels_last)
    assert grads["x"].is_contiguous(memory_format=torch.channels_last), "grad x keeps channels_last"
    want, want_grads = reference64(x, opts, num_groups, "silu", dy)
    yard, yard_grads = yardstick(x, opts, num_groups, "silu", dy)
    check64(out, want, yard, dtype, "output")
    for name in INPUTS:
        check64(grads[name], want_grads[name], yard_grads[name], dtype, f"grad {name}")


@needs_cuda_kernel
@pytest.mark.parametrize("present,activation", COMBOS)
def test_cuda_every_prologue_epilogue_activation_combination(present, activation):
    x, opts = make_inputs((2, 40, 3, 5), True, torch.float32, present)
    dy = torch.randn(2, 40, 3, 5, device="cuda")  # NCHW: the backward must bring it to x's layout
    out, grads = run(cuda_group_norm, x, opts, 8, activation, dy, INPUTS)
    want, want_grads = reference64(x, opts, 8, activation, dy)
    yard, yard_grads = yardstick(x, opts, 8, activation, dy)
    check64(out, want, yard, torch.float32, "output")
    assert grads.keys() == want_grads.keys()
    for name in grads:
        check64(grads[name], want_grads[name], yard_grads[name], torch.float32, f"grad {name}")


def _group_terms64(x, opts, num_groups, eps, silu, dy):
    """float64 mean, rstd (B, G) and the backward op's per-(b, c) sums, from the op docstring's math."""
    B, C = x.shape[:2]
    o = {k: None if v is None else v.double() for k, v in opts.items()}
    per_channel = (B, C, 1, 1)
    h = x.double() + (0 if o["emb"] is None else o["emb"].view(per_channel))
    hg = h.reshape(B, num_groups, -1)
    mean, var = hg.mean(-1), hg.var(-1, unbiased=False)
    rstd = (var + eps).rsqrt()
    n = ((hg - mean[..., None]) * rstd[..., None]).reshape(h.shape)
    one_plus = 1.0 if o["scale"] is None else 1.0 + o["scale"].view(per_channel)
    k = (1.0 if o["weight"] is None else o["weight"].view(1, C, 1, 1)) * one_plus
    d = (0.0 if o["bias"] is None else o["bias"].view(1, C, 1, 1)) * one_plus
    d = d + (0.0 if o["shift"] is None else o["shift"].view(per_channel))
    z = n * k + d
    dz = dy.double()
    if silu:
        sig = torch.sigmoid(z)
        dz = dz * sig * (1 + z * (1 - sig))
    dn = (k * dz).reshape(B, num_groups, -1)
    ng = n.reshape(B, num_groups, -1)
    dh = rstd[..., None] * (dn - dn.mean(-1, keepdim=True) - ng * (dn * ng).mean(-1, keepdim=True))
    return mean, rstd, dz.sum((2, 3)), (dz * n).sum((2, 3)), dh.reshape(h.shape).sum((2, 3)), dh.reshape(h.shape)


@needs_cuda_kernel
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("present,silu", [(OPTIONS, True), (OPTIONS, False), ((), True), ((), False)],
                         ids=["all-silu", "all", "none-silu", "none"])
def test_cuda_ops_write_every_output(dtype, present, silu):
    """The custom ops with impl="cuda" straight, outputs NaN-poisoned first: mean, rstd, dx and the
    three (B, C) sums all written and right; d_emb = sum_s dL/dh even without emb."""
    from fastgen import _layout

    assert _layout._POISON, "tests/conftest.py sets FASTGEN_POISON_OUTPUTS=1 before fastgen is imported"
    shape, groups, eps = (3, 40, 7, 9), 8, 1e-5
    x, opts = make_inputs(shape, True, dtype, present)
    dy = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
    operands = [opts[k] for k in OPTIONS]
    out, mean, rstd = _group_norm_op(x, *operands, groups, eps, silu, "cuda")
    dx, sum_dz, sum_dz_n, d_emb = _group_norm_backward_op(dy, x, *operands, mean, rstd, groups, silu, "cuda")
    want = _group_terms64(x, opts, groups, eps, silu, dy)
    for name, got, ref in zip(["mean", "rstd", "sum_dz", "sum_dz_n", "d_emb"], [mean, rstd, sum_dz, sum_dz_n, d_emb],
                              want[:5]):
        assert got.dtype == torch.float32 and torch.isfinite(got).all(), f"{name}: unwritten (NaN) or not float32"
        assert_close(got, ref, atol=2e-5 * max(1.0, ref.abs().max().item()), rtol=1e-4, name=name)
    assert torch.isfinite(out).all() and torch.isfinite(dx).all()
    assert dx.stride() == x.stride()
    atol, rtol = TOLERANCE[dtype]
    assert_close(dx, want[5], atol=atol * max(1.0, want[5].abs().max().item()), rtol=rtol, name="dx")


@needs_cuda_kernel
@pytest.mark.parametrize("shape,num_groups", [((8, 320, 32, 32), 32), ((1, 32, 128, 128), 1)], ids=["unet", "B1"])
def test_cuda_is_deterministic(shape, num_groups):
    """No atomics: two runs of forward and backward are bit for bit the same."""
    x, opts = make_inputs(shape, True, torch.bfloat16)
    dy = torch.randn(shape, device="cuda").to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    first = run(cuda_group_norm, x, opts, num_groups, "silu", dy, INPUTS)
    second = run(cuda_group_norm, x, opts, num_groups, "silu", dy, INPUTS)
    assert torch.equal(first[0], second[0]), "output differs between two runs"
    for name in INPUTS:
        assert torch.equal(first[1][name], second[1][name]), f"grad {name} differs between two runs"
    operands = [opts[k] for k in OPTIONS]
    a = _group_norm_op(x, *operands, num_groups, 1e-5, True, "cuda")
    b = _group_norm_op(x, *operands, num_groups, 1e-5, True, "cuda")
    assert all(torch.equal(p, q) for p, q in zip(a, b)), "y, mean or rstd differ between two runs"
    a = _group_norm_backward_op(dy, x, *operands, a[1], a[2], num_groups, True, "cuda")
    b = _group_norm_backward_op(dy, x, *operands, b[1], b[2], num_groups, True, "cuda")
    assert all(torch.equal(p, q) for p, q in zip(a, b)), "dx or the (B, C) sums differ between two runs"


@needs_cuda_kernel
@pytest.mark.parametrize("offset", [1, 2, 4], ids=lambda o: f"offset{o}")
def test_cuda_misaligned_storage_takes_narrower_vectors(offset):
    """x a channels_last view starting 2, 4 or 8 bytes into its storage: the 16-byte vector path
    must not be taken (a misaligned vector load faults or reads the wrong channels)."""
    B, C, H, W = 2, 64, 5, 3
    flat = torch.randn(offset + B * H * W * C, device="cuda").to(torch.float16)
    x = flat[offset:].view(B, H, W, C).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.data_ptr() % 16 != 0
    _, opts = make_inputs((B, C, H, W), True, torch.float16)
    dy = torch.randn(B, C, H, W, device="cuda").to(torch.float16).contiguous(memory_format=torch.channels_last)
    out, grads = run(cuda_group_norm, x, opts, 16, "silu", dy, INPUTS)
    want, want_grads = reference64(x, opts, 16, "silu", dy)
    yard, yard_grads = yardstick(x, opts, 16, "silu", dy)
    check64(out, want, yard, torch.float16, "output")
    for name in INPUTS:
        check64(grads[name], want_grads[name], yard_grads[name], torch.float16, f"grad {name}")


@needs_cuda_kernel
def test_cuda_runs_its_kernels_and_second_order_the_reference(monkeypatch):
    from fastgen import _native
    from fastgen.kernels import group_norm as triton_kernel

    ext = _native.cuda_ext()
    calls = []

    class Spy:
        def group_norm_forward(self, *args):
            calls.append("forward")
            return ext.group_norm_forward(*args)

        def group_norm_backward(self, *args):
            calls.append("backward")
            return ext.group_norm_backward(*args)

    def no_triton(*args):
        raise AssertionError("impl='cuda' ran a Triton kernel")

    monkeypatch.setattr(_native, "cuda_ext", lambda: Spy())
    monkeypatch.setattr(triton_kernel, "forward", no_triton)
    monkeypatch.setattr(triton_kernel, "backward", no_triton)
    x = torch.randn(2, 8, 3, 3, device="cuda").to(memory_format=torch.channels_last).requires_grad_(True)
    torch.autograd.grad(group_norm(x, 2, activation="silu", impl="cuda").sum(), x)
    assert calls == ["forward", "backward"]
    (g,) = torch.autograd.grad(group_norm(x, 2, activation="silu", impl="cuda").sum(), x, create_graph=True)
    assert calls == ["forward", "backward", "forward"] and g.requires_grad


@needs_cuda_kernel
def test_cuda_opcheck_and_compile_fullgraph():
    x, opts = make_inputs((2, 8, 3, 3), True, torch.float32)
    operands = [opts[k] for k in OPTIONS]
    torch.library.opcheck(_group_norm_op, (x.requires_grad_(True), *operands, 2, 1e-5, True, "cuda"))
    out, mean, rstd = _group_norm_op(x.detach(), *operands, 2, 1e-5, True, "cuda")
    dy = torch.randn_like(out)
    torch.library.opcheck(_group_norm_backward_op, (dy, x.detach(), *operands, mean, rstd, 2, True, "cuda"))

    def block(x):
        return group_norm(x, 2, *operands[:2], emb=operands[2], scale=operands[3], shift=operands[4],
                          activation="silu", impl="cuda") * 2

    assert_compiles_like_eager(block, x)


@needs_cuda_kernel
def test_cuda_offsets_past_2_to_the_31():
    """B * S * C > 2**31 elements (64-bit offsets): the second sample's results must match the same
    sample run alone, where every offset fits in 32 bits."""
    free, total = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip(f"needs ~40 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    B, C, H, W, G = 2, 32, 8192, 4097, 8
    assert B * C * H * W > 2**31 and C * H * W < 2**31
    x = torch.empty(B, H, W, C, device="cuda", dtype=torch.float16).normal_(0.5, 2.0).permute(0, 3, 1, 2)
    dy = torch.empty_like(x).normal_()
    out, mean, rstd = _group_norm_op(x, None, None, None, None, None, G, 1e-5, True, "cuda")
    dx, sum_dz, sum_dz_n, d_emb = _group_norm_backward_op(dy, x, None, None, None, None, None, mean, rstd, G, True, "cuda")
    x1, dy1 = x[1:].clone(memory_format=torch.channels_last), dy[1:].clone(memory_format=torch.channels_last)
    out1, mean1, rstd1 = _group_norm_op(x1, None, None, None, None, None, G, 1e-5, True, "cuda")
    assert_close(mean[1:], mean1, atol=1e-5, rtol=1e-5, name="mean")
    assert_close(rstd[1:], rstd1, atol=1e-5, rtol=1e-5, name="rstd")

    def close_in_slices(got, want, name):  # assert_close's float64 copies of 2**30 elements would take 17 GB
        for h in range(0, H, 1024):
            assert_close(got[:, :, h:h + 1024], want[:, :, h:h + 1024], name=f"{name}[..., {h}:{h + 1024}, :]")

    close_in_slices(out[1:], out1, "output")  # float16 tolerance: the two runs split the sample differently
    del out, out1
    dx1, *sums1 = _group_norm_backward_op(dy1, x1, None, None, None, None, None, mean1, rstd1, G, True, "cuda")
    close_in_slices(dx[1:], dx1, "dx")
    for name, got, ref in zip(["sum_dz", "sum_dz_n", "d_emb"], [sum_dz, sum_dz_n, d_emb], sums1):
        assert_close(got[1:], ref, atol=1e-3 * max(1.0, ref.abs().max().item()), rtol=1e-3, name=name)


# CPU-runnable: what impl="cuda" refuses, and the op layer's wiring with a stand-in extension.

@pytest.mark.parametrize("x", [
    pytest.param(torch.randn(2, 6, 3, 3), id="nchw"),
    pytest.param(torch.randn(2, 6, 9), id="3d"),
    pytest.param(torch.randn(2, 6, 3, 3, 2), id="5d"),
    pytest.param(torch.randn(2, 12, 3, 3).to(memory_format=torch.channels_last)[:, ::2], id="channels_last-strided"),
])
def test_cuda_impl_takes_only_channels_last_4d(x):
    with pytest.raises(fastgen.ImplUnavailableError, match=r"impl='cuda' takes a 4-D channels_last x \(NHWC storage\)"):
        group_norm(x, 3, impl="cuda")


def test_cuda_as_the_default_impl_checks_the_layout_too(monkeypatch):
    monkeypatch.setattr(_impl, "_default_impl", "cuda")
    with pytest.raises(fastgen.ImplUnavailableError, match="impl='cuda' takes a 4-D channels_last x"):
        group_norm(torch.randn(2, 6, 3, 3), 3)


@pytest.mark.parametrize("x", [
    pytest.param(torch.randn(2, 6, 1, 1), id="HW1-contiguous"),  # NCHW and NHWC are one storage order
    pytest.param(torch.randn(2, 1, 3, 3), id="C1-contiguous"),
    pytest.param(torch.randn(2, 6, 3, 3).to(memory_format=torch.channels_last), id="channels_last"),
])
def test_cuda_impl_accepts_nhwc_storage_then_needs_a_cuda_tensor(x):
    with pytest.raises(fastgen.ImplUnavailableError, match="the CUDA extension runs on CUDA tensors, got a cpu tensor"):
        group_norm(x, x.shape[1], impl="cuda")


def test_auto_offers_the_cuda_kernel_only_an_nhwc_x(monkeypatch):
    """Were triton unavailable on a CUDA machine, "auto" must not fall to the CUDA kernel with an
    NCHW x (the binding would refuse it): the op only offers "cuda" for NHWC storage."""
    offered = []
    resolve = _impl.resolve

    def spy(op, impl, device, available, dtype, layout=None):
        offered.append((available, layout))
        return resolve(op, impl, device, available, dtype, layout)

    monkeypatch.setattr(_impl, "resolve", spy)
    group_norm(torch.randn(2, 6, 3, 3), 3)
    group_norm(torch.randn(2, 6, 3, 3).to(memory_format=torch.channels_last), 3)
    assert "cuda" not in offered[0][0] and "cuda" in offered[1][0]
    assert [layout for _, layout in offered] == ["nchw", "channels_last"]


def test_auto_picks_per_layout_from_the_table(monkeypatch):
    """fastgen/_impl.py AUTO_ORDER_BY_OP's (group_norm, cuda, layout) rows decide "auto" on CUDA: Triton
    for both layouts until a GPU measurement flips the channels_last row (the table says which)."""
    monkeypatch.setattr(_impl, "unavailable_reason", lambda impl, device: None)
    both, any_layout = ("triton", "cuda", "reference"), ("triton", "reference")
    assert _impl._resolve_cached("group_norm", "auto", "cuda", 0, both, "channels_last") == "triton"
    assert _impl._resolve_cached("group_norm", "auto", "cuda", 0, any_layout, "nchw") == "triton"
    flipped = ("cuda", "triton", "reference")
    monkeypatch.setitem(_impl.AUTO_ORDER_BY_OP, ("group_norm", "cuda", "channels_last"), flipped)
    assert _impl._resolve_cached("group_norm", "auto", "cuda", 0, both, "channels_last") == "cuda"
    assert _impl._resolve_cached("group_norm", "auto", "cuda", 0, any_layout, "nchw") == "triton"


def _binding_parameters(function: str) -> list[str]:
    """Parameter names of a function of csrc/bindings.cpp, in order."""
    import os
    import re

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "bindings.cpp")
    with open(path) as f:
        source = f.read()
    match = re.search(rf"\bvoid {function}\(([^{{]*?)\)\s*{{", source)
    assert match, f"no {function} in csrc/bindings.cpp"
    return [re.search(r"(\w+)\s*$", p.strip()).group(1) for p in match.group(1).split(",")]


class _StandInExtension:
    """fastgen._C's two GroupNorm functions in float64 torch, with the binding's parameters and its
    layout requirements: the op layer's wiring, checked where the real extension cannot run."""

    def __init__(self):
        self.calls = []

    def group_norm_forward(self, x, weight, bias, emb, scale, shift, num_groups, eps, silu, out, mean, rstd):
        self.calls.append("forward")
        assert x.is_contiguous(memory_format=torch.channels_last) and out.stride() == x.stride()
        opts = dict(zip(OPTIONS, (weight, bias, emb, scale, shift)))
        m, r = _group_terms64(x, opts, num_groups, eps, silu, torch.zeros_like(x))[:2]
        o64 = {k: None if v is None else v.double() for k, v in opts.items()}
        out.copy_(group_norm_ref(x.double(), num_groups, o64["weight"], o64["bias"], eps, emb=o64["emb"],
                                 scale=o64["scale"], shift=o64["shift"], activation="silu" if silu else None))
        mean.copy_(m)
        rstd.copy_(r)

    def group_norm_backward(self, dy, x, weight, bias, emb, scale, shift, mean, rstd, num_groups, silu, dx, sum_dz,
                            sum_dz_n, d_emb):
        self.calls.append("backward")
        assert x.is_contiguous(memory_format=torch.channels_last) and dy.stride() == x.stride() == dx.stride()
        opts = dict(zip(OPTIONS, (weight, bias, emb, scale, shift)))
        _, _, s_dz, s_dzn, s_emb, dh = _group_terms64(x, opts, num_groups, 1e-5, silu, dy)
        for dst, src in ((dx, dh), (sum_dz, s_dz), (sum_dz_n, s_dzn), (d_emb, s_emb)):
            dst.copy_(src)


def test_cuda_stand_in_has_the_bindings_parameters():
    import inspect

    for name in ("group_norm_forward", "group_norm_backward"):
        params = list(inspect.signature(getattr(_StandInExtension(), name)).parameters)
        assert params == _binding_parameters(name), f"{name}: the stand-in's parameters are not the binding's"


def test_cuda_wiring_forward_and_backward_with_a_stand_in_extension(monkeypatch):
    """impl="cuda" end to end on CPU with a stand-in fastgen._C: the forward op calls
    group_norm_forward, the backward group_norm_backward (the forward's impl carried in ctx) with
    a channels_last dy, and the parameter gradients come out of the per-(b, c) sums right."""
    from fastgen import _native

    real_reason = _impl.unavailable_reason
    monkeypatch.setattr(_impl, "unavailable_reason", lambda impl, device: None if impl == "cuda" else real_reason(impl, device))
    ext = _StandInExtension()
    monkeypatch.setattr(_native, "cuda_ext", lambda: ext)
    x, opts = make_inputs((2, 6, 3, 5), True, torch.float32)
    x, opts = x.cpu(), {k: v.cpu() for k, v in opts.items()}
    dy = torch.randn(2, 6, 3, 5)  # NCHW: the op must hand the binding a channels_last dy
    out, grads = run(cuda_group_norm, x, opts, 3, "silu", dy, INPUTS)
    assert ext.calls == ["forward", "backward"]
    assert out.is_contiguous(memory_format=torch.channels_last)
    want, want_grads = run(group_norm_ref, x, opts, 3, "silu", dy, INPUTS)
    check(out, want, torch.float32, "output")
    for name in INPUTS:
        check(grads[name], want_grads[name], torch.float32, f"grad {name}")


def test_cuda_op_fake_keeps_channels_last():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 8, 3, 3).to(memory_format=torch.channels_last)
        out, mean, rstd = _group_norm_op(x, None, None, None, None, None, 4, 1e-5, True, "cuda")
        dx, *sums = _group_norm_backward_op(out, x, None, None, None, None, None, mean, rstd, 4, True, "cuda")
    assert out.stride() == x.stride() and dx.stride() == x.stride()
    assert mean.shape == rstd.shape == (2, 4) and all(s.shape == (2, 8) and s.dtype == torch.float32 for s in sums)
