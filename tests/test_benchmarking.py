"""The benchmark harness (fastgen/benchmarking.py) and ``fastgen bench diffusion`` end to end on CPU.

These check that the harness computes and records the right things; they time nothing that is
judged (benchmarks measure, tests check)."""
import csv
import datetime
import importlib.metadata
import json
import math
import os
import runpy
import socket
import sys
import time

import pytest
import torch

from fastgen import benchmarking as B
from fastgen import cli


def _row(impl, seconds, group="g", nbytes=None):
    return B.Row(group, impl, seconds, seconds, seconds, bytes_moved=nbytes)


def test_speedup_is_baseline_time_over_time():
    rows = B.add_speedups([_row("eager", 2.0), _row("fast", 0.5), _row("slow", 8.0),
                           _row("gone", math.nan)], "eager")
    assert [r.speedup for r in rows] == [1.0, 4.0, 0.25, None]
    assert all(r.baseline == "eager" for r in rows)
    assert B.speedup(3.0, 1.5) == 2.0


def test_speedup_errors():
    with pytest.raises(ValueError, match="baseline 'diffusers' is not among"):
        B.add_speedups([_row("eager", 1.0)], "diffusers")
    with pytest.raises(ValueError, match="baseline 'eager' is not among"):  # a skipped baseline cannot anchor
        B.add_speedups([_row("eager", math.nan), _row("x", 1.0)], "eager")
    with pytest.raises(ValueError, match="seconds must be positive"):
        B.speedup(1.0, 0.0)


def test_fraction_of_copy_bandwidth():
    # 3 GB moved in 1 s against a 6 GB/s copy: half; 12 GB in 2 s against 6 GB/s: all of it.
    assert B.fraction_of_copy_bandwidth(3e9, 1.0, 6.0) == pytest.approx(0.5)
    assert B.fraction_of_copy_bandwidth(12e9, 2.0, 6.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="must be positive"):
        B.fraction_of_copy_bandwidth(1e9, 0.0, 6.0)
    with pytest.raises(ValueError, match="must be positive"):
        B.fraction_of_copy_bandwidth(1e9, 1.0, 0.0)


def test_time_fn_cpu_measures_a_known_duration():
    t = B.time_fn(lambda: time.sleep(0.002), "cpu", min_run_time=0.05)
    assert 0.002 <= t.median < 0.05
    assert t.q20 <= t.median <= t.q80 and t.runs >= 1
    with pytest.raises(ValueError, match="device must be a cpu or cuda device"):
        B.time_fn(lambda: None, "meta")


def test_copy_bandwidth_cpu():
    gbps = B.measure_copy_bandwidth("cpu", 1 << 20, min_run_time=0.02)
    assert math.isfinite(gbps) and gbps > 0
    with pytest.raises(ValueError, match="nbytes must be positive"):
        B.measure_copy_bandwidth("cpu", 0)


def test_comparison_rows_bytes_and_skips():
    x = torch.randn(1 << 16)
    cmp = B.Comparison("scale", baseline="mul", device="cpu", bytes_moved=2 * x.nbytes, min_run_time=0.02)
    cmp.add("mul", lambda: x * 2.0)
    cmp.add("add", lambda: x + x, note="same traffic")
    cmp.skip("kernel", "not built")
    rows = cmp.run(copy_gbps=10.0, repeats=3)
    assert [r.impl for r in rows] == ["mul", "add", "kernel"]
    mul, add, kernel = rows
    assert mul.speedup == 1.0 and add.speedup == pytest.approx(mul.median_s / add.median_s)
    assert mul.gbps == pytest.approx(2 * x.nbytes / mul.median_s / 1e9)
    assert mul.frac_copy_bw == pytest.approx(mul.gbps / 10.0)
    assert math.isnan(kernel.median_s) and kernel.speedup is None and kernel.note == "skipped: not built"
    assert [(i, fn is None) for i, fn, _ in cmp.entries()] == [("mul", False), ("add", False), ("kernel", True)]
    table = B.format_table(rows)
    assert "1.00x" in table and "skipped: not built" in table and table.splitlines()[0].startswith("group")


def test_provenance_fields():
    prov = B.provenance("cpu", label="2-core test box", command="fastgen bench diffusion")
    assert prov["torch"] == torch.__version__
    assert prov["diffusers"] == importlib.metadata.version("diffusers")
    assert prov["triton"] == importlib.metadata.version("triton")
    assert prov["cuda"] == torch.version.cuda
    assert prov["cpu_count"] == os.cpu_count() and prov["device_type"] == "cpu" and prov["device_name"]
    assert prov["label"] == "2-core test box" and prov["command"] == "fastgen bench diffusion"
    date = datetime.datetime.strptime(prov["date_utc"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs((datetime.datetime.utcnow() - date).total_seconds()) < 300
    assert prov["git_commit"] is None or len(prov["git_commit"].split("+")[0]) == 40
    assert socket.gethostname() not in json.dumps(prov)  # hostname-free
    assert B.provenance("cpu")["command"]  # defaults to the running command line
    assert B.device_slug("cpu") == f"cpu-{os.cpu_count()}core"


def test_write_results_csv_and_json(tmp_path):
    rows = B.add_speedups([_row("eager", 2e-3, nbytes=100), _row("fast", 1e-3), _row("skipped", math.nan)], "eager")
    prov = B.provenance("cpu", command="x")
    csv_path, json_path = B.write_results(rows, prov, str(tmp_path / "new" / "dir"), "stem")
    data = json.load(open(json_path))
    assert data["provenance"] == prov
    assert [r["impl"] for r in data["rows"]] == ["eager", "fast", "skipped"]
    assert data["rows"][1]["speedup"] == pytest.approx(2.0) and data["rows"][2]["median_s"] is None
    lines = list(csv.DictReader(open(csv_path)))
    assert [r["impl"] for r in lines] == ["eager", "fast", "skipped"]
    assert lines[0]["torch"] == torch.__version__ and lines[0]["bytes_moved"] == "100"


def test_write_results_is_atomic(tmp_path, monkeypatch):
    rows = B.add_speedups([_row("eager", 1.0)], "eager")
    prov = B.provenance("cpu", command="x")
    csv_path, json_path = B.write_results(rows, prov, str(tmp_path), "r")
    before = open(csv_path).read(), open(json_path).read()

    # A failure after the bytes went to the temp file but before the rename: old files intact,
    # no temp file left behind.
    def broken_fsync(fd):
        raise OSError("disk on fire")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    new_rows = B.add_speedups([_row("eager", 5.0), _row("other", 1.0)], "eager")
    with pytest.raises(OSError, match="disk on fire"):
        B.write_results(new_rows, prov, str(tmp_path), "r")
    assert (open(csv_path).read(), open(json_path).read()) == before
    assert sorted(os.listdir(tmp_path)) == ["r.csv", "r.json"]
    monkeypatch.undo()

    # Content that cannot be serialised fails before any file is created.
    bad = [_row("eager", 1.0)]
    bad[0].note = object()
    with pytest.raises(TypeError):
        B.write_results(bad, prov, str(tmp_path), "bad")
    assert sorted(os.listdir(tmp_path)) == ["r.csv", "r.json"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own, numpy 2
def test_cli_bench_diffusion_quick(tmp_path, capsys):
    assert cli.main(["bench", "diffusion", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "speedup" in printed and "results:" in printed
    stem = f"diffusion_{B.device_slug('cpu')}_quick"
    command = f"fastgen bench diffusion --quick --device cpu --out {tmp_path}"
    data = json.load(open(tmp_path / f"{stem}.json"))
    assert (tmp_path / f"{stem}.csv").exists()
    prov = data["provenance"]
    assert prov["shape"] == list(cli.QUICK_SHAPE) and prov["steps"] == 5 and prov["quick"] is True
    assert prov["copy_gbps"] > 0 and prov["command"] == command  # the command that reproduces it
    groups = {r["group"].split(" ")[0] for r in data["rows"]}
    assert {"add_noise", "sampling_step[ddim", "sampling_step[ddpm", "DDPMScheduler.step", "DDIMScheduler.step",
            "DPMSolverMultistepScheduler.step", "add_noise+diffusion_loss"} <= groups
    for r in data["rows"]:
        if r["median_s"] is None:  # every skip says why
            assert "skipped: " in r["note"], r
        else:
            assert r["median_s"] > 0 and r["speedup"] > 0
        if r["impl"] == r["baseline"]:
            assert r["speedup"] == 1.0
    # The references always run; fastgen's reference implementation of the ops always runs too.
    ran = {(r["group"].split(" ")[0], r["impl"]) for r in data["rows"] if r["median_s"] is not None}
    assert {("add_noise", "eager"), ("add_noise", "diffusers"), ("add_noise", "fastgen[reference]"),
            ("sampling_step[ddim", "fastgen[reference]"), ("DDIMScheduler.step", "diffusers")} <= ran


@pytest.mark.parametrize("argv, message", [
    (["bench", "diffusion", "--shape", "4,x"], "--shape must be comma-separated integers"),
    (["bench", "diffusion", "--shape", "4"], "--shape needs a batch"),
    (["bench", "diffusion", "--dtype", "int8"], "invalid choice"),
    (["bench", "nothing"], "invalid choice"),
])
def test_cli_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("module", ["fastgen", "fastgen.cli"])
def test_python_dash_m_entry_points(module, monkeypatch, capsys):
    # runpy runs the module as ``python -m`` does, without paying for a second interpreter.
    monkeypatch.setattr(sys, "argv", [module, "bench", "diffusion", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert e.value.code == 0 and "--quick" in capsys.readouterr().out


def test_rows_say_when_they_are_noisy_or_the_machine_was_busy(monkeypatch):
    spreads = iter([B.Timing(1.0, 0.95, 1.05, 10), B.Timing(1.0, 0.6, 1.4, 10)])
    monkeypatch.setattr(B, "time_fn", lambda fn, device, **kw: next(spreads))
    monkeypatch.setattr(B.os, "getloadavg", lambda: (64.0, 0.0, 0.0))
    monkeypatch.setattr(B, "_cpu_snapshot", lambda: None)  # no /proc/stat: the load average decides
    cmp = B.Comparison("g", baseline="steady", device="cpu")
    cmp.add("steady", lambda: None)
    cmp.add("jumpy", lambda: None, note="mine")
    steady, jumpy = cmp.run()
    assert "noisy" not in steady.note and steady.note.startswith("machine busy: 1-min load 64.0")
    assert jumpy.note.startswith("mine; noisy: 20-80% spread 80% of the median; machine busy")
    monkeypatch.setattr(B.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    spreads = iter([B.Timing(1.0, 0.95, 1.05, 10)])
    quiet = B.Comparison("g", baseline="steady", device="cpu")
    quiet.add("steady", lambda: None)
    assert quiet.run()[0].note == ""


def test_busy_counts_other_processes_cpu_time_not_the_benchmarks_own(monkeypatch):
    monkeypatch.setattr(B.os, "cpu_count", lambda: 2)
    # 1 s of wall time on 2 cores; the machine was busy 2.0 CPU seconds, 1.9 of them this process's
    # own threads: others took 0.1 of 2.0 CPU seconds
    assert B.other_cpu_share((10.0, 5.0, 100.0), (12.0, 6.9, 101.0)) == pytest.approx(0.05)
    assert B.other_cpu_share((10.0, 5.0, 100.0), (11.0, 6.5, 101.0)) == 0.0  # jiffy rounding: never < 0
    assert B.other_cpu_share(None, (1.0, 1.0, 1.0)) is None
    # a benchmark holding both cores itself is not "busy" (its load average would be ~2)
    assert B._busy_note("cpu", 2.0, 2.0, 0.05) == ""
    assert B._busy_note("cpu", 2.0, 2.0, 0.4) == "machine busy: other processes used 40% of the CPUs while this was timed"
    assert B._busy_note("cuda", 2.0, 2.0, 0.4) == ""


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux's /proc/stat")
def test_cpu_snapshot_sees_this_process_working():
    before = B._cpu_snapshot()
    deadline = time.perf_counter() + 30.0  # spin for 0.2 s of this process's CPU time, however loaded the machine
    while time.process_time() - before[1] < 0.2 and time.perf_counter() < deadline:
        pass
    after = B._cpu_snapshot()
    assert after[1] - before[1] >= 0.2  # this process's CPU seconds
    assert after[0] - before[0] >= 0.15  # the machine's busy seconds include them (10 ms jiffies)
    assert 0.0 <= B.other_cpu_share(before, after) <= 1.0


def _thread_pinning_script():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "run_thread_pinning.py")
    spec = importlib.util.spec_from_file_location("run_thread_pinning", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_thread_pinning_summary_is_the_spread_of_round_medians():
    script = _thread_pinning_script()
    rows = [dict(config="default", workload="DDIM step", median_s=m) for m in (1.0, 3.0, 2.0)]
    rows += [dict(config="bind-close", workload="DDIM step", median_s=5.0)]
    summary = {(s["config"], s["workload"]): s for s in script._summaries(rows)}
    assert summary["default", "DDIM step"]["median_of_rounds_s"] == 2.0
    assert summary["default", "DDIM step"]["round_spread"] == 3.0 and summary["default", "DDIM step"]["rounds"] == 3
    assert summary["bind-close", "DDIM step"]["round_spread"] == 1.0
    with pytest.raises(SystemExit):
        script.main(["--rounds", "0"])


def test_cpu_allocator_thresholds_are_fixed_once_and_the_environment_wins(monkeypatch):
    monkeypatch.setattr(B, "_allocator_state", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "2")
    assert B.fix_cpu_allocator() == {"allocator": "as configured by the environment: MALLOC_TRIM_THRESHOLD_"}
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setattr(B, "_allocator_state", None)
    monkeypatch.setenv("MALLOC_PERTURB_", "1")  # a debugging setting, not a threshold: ignored
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for k in B._MALLOC_ENV:
        monkeypatch.delenv(k, raising=False)
    state = B.fix_cpu_allocator()
    if state["allocator"] == "glibc":  # the CI machine: both thresholds taken
        assert state == {"allocator": "glibc", **B.MALLOC_SETTINGS}
    assert B.fix_cpu_allocator() is state  # once per process
    B.time_fn(lambda: None, "cpu", min_run_time=0.01)
    assert B.provenance("cpu")["cpu_allocator"] is state
