"""kernels/tuning.py: table lookup and the default fallback, the explanation, autotuning (refused
inside CUDA-graph capture and torch.compile tracing; winners cached per process and in a file),
and every elementwise candidate computing what the default computes (interpreter, tiny shapes)."""
import json
import os
import types

import pytest
import torch

from fastgen import ops
from fastgen.kernels import tuning

pytestmark = pytest.mark.usefixtures("one_thread")
GPU = ("Fake GPU 80GB", "sm_90")  # a device's table keys: its name, then its compute capability


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """No table entries, no cache file, no autotuning unless a test sets them; forget winners after."""
    monkeypatch.delenv(tuning.ENV_AUTOTUNE, raising=False)
    monkeypatch.delenv(tuning.ENV_CACHE, raising=False)
    tuning._reset()
    yield
    tuning._reset()


def _table(monkeypatch, entries):
    monkeypatch.setattr(tuning, "_table", tuning.validate_entries(entries, "test table"))


def _entry(device, config, kernel="add_noise", dtype="float32", bucket=4096):
    return {"device": device, "kernel": kernel, "dtype": dtype, "bucket": bucket, "config": config}


def test_committed_table_is_valid_and_every_default_is_a_candidate():
    tuning.table()  # raises on a malformed entry or a config that is not a compile-checked candidate
    for kernel, family in tuning.KERNELS.items():
        size = {tuning.ATTENTION: 64, tuning.VQ_NEAREST: 129}.get(family, 3072)
        for dtype in (torch.float32, torch.bfloat16):
            cands = tuning.candidates(kernel, dtype, size)
            assert cands[0] == tuning.default(kernel, dtype, size)[0], kernel
            assert all(set(c) == set(family.fields) for c in cands) and len(cands) == len(
                {tuple(sorted(c.items())) for c in cands}), kernel


def test_table_entry_by_name_then_capability_else_default(monkeypatch):
    by_name, by_cc = {"BLOCK": 2048, "num_warps": 8}, {"BLOCK": 512, "num_warps": 4}
    _table(monkeypatch, [_entry("sm_90", by_cc), _entry(GPU[0], by_name)])
    f32 = torch.float32
    assert tuning._resolve("add_noise", None, f32, 3072, GPU, None)[:2] == (by_name, "table")
    assert tuning._resolve("add_noise", None, f32, 3072, ("Other GPU", "sm_90"), None)[:2] == (by_cc, "table")
    # another bucket, dtype, kernel or GPU: today's fixed choice
    for args in (("add_noise", f32, 5000, GPU), ("add_noise", torch.bfloat16, 3072, GPU),
                 ("sampling_step", f32, 3072, GPU), ("add_noise", f32, 3072, ("Other", "sm_80"))):
        kernel, dtype, size, device = args
        cfg, source, _ = tuning._resolve(kernel, None, dtype, size, device, None)
        assert source == "default" and cfg == {"BLOCK": 1024, "num_warps": 4}


def test_explain_says_what_is_chosen_and_why(monkeypatch):
    _table(monkeypatch, [_entry("sm_90", {"BLOCK": 2048, "num_warps": 8})])
    hit = tuning.explain("add_noise", "float32", 3072, device="sm_90")
    assert (hit.config, hit.source, hit.bucket) == ({"BLOCK": 2048, "num_warps": 8}, "table", 4096)
    assert "BLOCK=2048 num_warps=8 -- table: tiles.json entry for sm_90" in str(hit)
    miss = str(tuning.explain("attention_backward", torch.bfloat16, 128, device="cpu"))
    assert "BLOCK_M=64 BLOCK_N=32 num_warps=8 -- default: today's fixed choice (attention._TILES" in miss
    assert "no entry for cpu, attention_backward, bfloat16, bucket 128" in miss
    with pytest.raises(ValueError, match="kernel must be one of"):
        tuning.explain("no_such_kernel")
    with pytest.raises(ValueError, match="dtype must be one of"):
        tuning.explain("add_noise", "float64")
    with pytest.raises(ValueError, match="size must be a positive integer"):
        tuning.explain("add_noise", "float32", 0)


def test_cli_prints_the_explanation(capsys):
    from fastgen.cli import main

    assert main(["tiles", "group_norm_backward", "--dtype", "bfloat16", "--size", "4096", "--device", "sm_80"]) == 0
    out = capsys.readouterr().out
    assert "group_norm_backward bfloat16" in out and "TILE=4096 num_warps=8 -- default" in out


@pytest.mark.parametrize("entry, message", [
    (_entry("sm_90", {"BLOCK": 3000, "num_warps": 4}), "is not a candidate"),
    (_entry("sm_90", {"BLOCK": 1024}), "exactly"),
    (_entry("sm_90", {"BLOCK": 1024, "num_warps": 4}, kernel="nope"), "kernel must be one of"),
    (_entry("sm_90", {"BLOCK": 1024, "num_warps": 4}, bucket=3000), "power of two"),
    (_entry("sm_90", {"BLOCK": 1024, "num_warps": 4}, dtype="float64"), "dtype must be one of"),
])
def test_bad_table_entries_are_refused_with_a_reason(entry, message):
    with pytest.raises(ValueError, match=message):
        tuning.validate_entries([entry], "t.json")


def _fake_cuda(monkeypatch, compiling=False, capturing=False):
    """Pretend a CUDA tensor, and whether torch.compile traces / a CUDA graph is captured."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing)
    return types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)


@pytest.mark.parametrize("compiling, capturing, why", [(True, False, "torch.compile is tracing"),
                                                       (False, True, "a CUDA graph is being captured")])
def test_autotune_never_times_inside_capture_or_compile(monkeypatch, compiling, capturing, why):
    monkeypatch.setenv(tuning.ENV_AUTOTUNE, "1")
    tuning._reset()  # the environment is read once
    like = _fake_cuda(monkeypatch, compiling, capturing)
    _table(monkeypatch, [_entry("sm_90", {"BLOCK": 512, "num_warps": 8})])
    ran = []
    cfg, source, detail = tuning._resolve("add_noise", like, torch.float32, 3072, GPU, ran.append, why=True)
    assert ran == [] and (cfg, source) == ({"BLOCK": 512, "num_warps": 8}, "table")
    assert f"autotuning skipped: {why}" in detail
    assert not tuning._tuned  # nothing cached: the next eager call still tunes


def test_autotune_keeps_the_fastest_per_process_and_in_the_cache_file(monkeypatch, tmp_path):
    path = tmp_path / "tiles-cache.json"
    monkeypatch.setenv(tuning.ENV_AUTOTUNE, "1")
    monkeypatch.setenv(tuning.ENV_CACHE, str(path))
    tuning._reset()  # the environment is read once
    like = _fake_cuda(monkeypatch)
    fastest = {"BLOCK": 2048, "num_warps": 8}
    timed = []
    monkeypatch.setattr(tuning, "_time_ms", lambda bench, cfg: timed.append(cfg) or (1.0 if cfg == fastest else 2.0))
    cfg, source, _ = tuning._resolve("add_noise", like, torch.float32, 3072, GPU, lambda c: None)
    assert (cfg, source) == (fastest, "autotuned")
    assert timed == tuning.candidates("add_noise", torch.float32, 3072)  # every candidate, once
    again = tuning._resolve("add_noise", like, torch.float32, 3000, GPU, lambda c: None)  # same bucket
    assert again[:2] == (fastest, "autotuned")
    assert len(timed) == len(tuning.candidates("add_noise", torch.float32, 3072))
    saved = json.loads(path.read_text())["entries"]
    assert [(e["device"], e["kernel"], e["bucket"], e["config"]) for e in saved] == [
        (GPU[0], "add_noise", 4096, fastest)]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    tuning._reset()  # a new process: the file answers, nothing is timed
    monkeypatch.delenv(tuning.ENV_AUTOTUNE)
    assert tuning._resolve("add_noise", like, torch.float32, 3072, GPU, None)[:2] == (fastest, "cache file")
    path.write_text('{"entries": [{"device": "x"}]}')  # a stale or broken file is ignored, with a warning
    tuning._reset()
    with pytest.warns(UserWarning, match="ignoring the tile cache"):
        assert tuning._resolve("add_noise", like, torch.float32, 3072, GPU, None)[1] == "default"


def test_forced_checks_its_config():
    with pytest.raises(ValueError, match="exactly"):
        with tuning.forced("elementwise", {"TILE": 4096, "num_warps": 4}):
            pass
    with pytest.raises(ValueError, match="a kernel"):
        with tuning.forced("nope", {}):
            pass


def _elementwise_outputs():
    """Every elementwise launcher once (Philox noise, history, state, bias rows / flat); 2700 elements
    per sample, so every candidate BLOCK (512 to 2048) applies."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 30, 30, generator=g)
    abar, t = torch.linspace(0.999, 0.01, 1000), torch.tensor([900])
    coefs, index = torch.rand(10, ops.NUM_COEFS, generator=g), torch.tensor([7])
    hist = (torch.randn(x.shape, generator=g),)
    y = torch.randn(x.shape, generator=g)
    out = [ops.add_noise(x, t, abar, seed=11, impl="triton"),
           *ops.sampling_step(x, y, coefs, index, history=hist, seed=5, return_state=True, impl="triton"),
           ops.interpolate(x, y, seed=4, impl="triton")]
    pred, x0 = y.clone().requires_grad_(True), x.clone().requires_grad_(True)
    loss = ops.diffusion_loss(pred, x0, t, abar, seed=3, prediction_type="v_prediction", impl="triton")
    loss.backward()
    grad = x.clone().requires_grad_(True)
    penalty = ops.penalty_from_grad(grad, "wgan-gp", 10.0, impl="triton")
    penalty.backward()
    out += [pred.grad, x0.grad, grad.grad]
    for shape in ((1, 3, 30, 30), (4, 700)):  # rows launch (inner 900), flat launch (2800 elements)
        xb = torch.randn(shape, generator=g).requires_grad_(True)
        y = ops.bias_act(xb, torch.randn(shape[1], generator=g), 1, "lrelu", impl="triton")
        y.backward(torch.ones_like(y))
        out += [y, xb.grad]
    reductions = [loss, penalty]  # per-chunk partial sums: the tile sets the summation order
    return out, reductions


def test_every_elementwise_candidate_computes_what_the_default_does(monkeypatch):
    asked = []
    choose = tuning.choose
    monkeypatch.setattr(tuning, "choose", lambda kernel, *a, **k: asked.append(kernel) or choose(kernel, *a, **k))
    ref, ref_red = _elementwise_outputs()
    elementwise = {k for k, f in tuning.KERNELS.items() if f is tuning.ELEMENTWISE}
    assert set(asked) == elementwise  # every elementwise launcher asks tuning for its tile
    for config in tuning.candidates("add_noise", torch.float32, 2700)[1:]:
        with tuning.forced("elementwise", config):
            out, red = _elementwise_outputs()
        for a, b in zip(out, ref):
            assert torch.equal(a, b), config
        for a, b in zip(red, ref_red):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_tune_tiles_sweeps_every_family_and_writes_a_valid_table(monkeypatch, tmp_path):
    """benchmarks/tune_tiles.py's logic on tiny shapes (the GPU run cannot be tried here): every
    candidate of every family runs once under the interpreter; fake timings make the last candidate
    of each group the fastest, so the table gets non-default entries, which must validate."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import tune_tiles
    from fastgen import benchmarking

    monkeypatch.setattr(tune_tiles, "BUILDERS", {
        "elementwise": (tune_tiles.elementwise_cases, ((2, 3, 16, 16),)),  # 768: BLOCK 512 and 1024
        # with the split threshold at 4 programs: 8 groups a "training" launch, 2 a "few programs" one
        "group_norm": (tune_tiles.group_norm_cases, ((1, 8, 4, 4), (1, 2, 4, 4))),
        "attention": (tune_tiles.attention_cases, ((1, 1, 16, 32),)),
        "vq_nearest": (tune_tiles.vq_cases, ((16, 16, 64),))})
    from fastgen.kernels import group_norm as group_norm_kernels

    monkeypatch.setattr(group_norm_kernels, "SPLIT_MIN_PROGRAMS", 4)
    clock = [1.0]

    def fake_time(fn, device, **timing):
        fn()
        clock[0] *= 0.9  # each candidate 10% faster than the one before
        return benchmarking.Timing(clock[0], clock[0] * 0.99, clock[0] * 1.01, 5)

    monkeypatch.setattr(benchmarking, "time_fn", fake_time)
    monkeypatch.setattr(benchmarking, "measure_copy_bandwidth", lambda device: 1.0)
    # quick=False: every shape of each family (quick sweeps only the first)
    rows, groups = tune_tiles.sweep(tune_tiles.FAMILIES, [torch.float32], False, torch.device("cpu"))
    kernels = {g[1] for g in groups}
    assert kernels == set(tuning.KERNELS)  # every kernel of the table is swept
    assert len(rows) == sum(len(g[4]) for g in groups)
    chosen, cleared = tune_tiles.table_entries(rows, groups, "Fake GPU", "test")
    assert len(chosen) == sum(len(g[4]) > 1 for g in groups) and len(cleared) == len(groups) - len(chosen)
    path = tmp_path / "tiles.json"
    tune_tiles.write_table(str(path), chosen, cleared)
    index = tuning.validate_entries(json.loads(path.read_text())["entries"], str(path))
    assert index[("Fake GPU", "add_noise", "float32", 1024)] == tuning.candidates("add_noise", torch.float32, 768)[-1]
