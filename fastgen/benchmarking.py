"""The benchmark harness: timing that is right per device, bandwidth, provenance, result files.

Used by ``fastgen bench ...`` (fastgen/cli.py), the pytest-benchmark suites and the scripts in
``benchmarks/``. The public API is small:

* :func:`time_fn` -- median (and 20/80% quantiles) seconds per call of ``fn()``.
  CUDA: CUDA events around each call, after a warmup and with the L2 cache flushed before every
  call (the method of ``triton.testing.do_bench``). CPU: ``torch.utils.benchmark.Timer``'s
  ``blocked_autorange`` with torch's current thread count (its default of one thread would
  handicap every multi-threaded path).
* :func:`measure_copy_bandwidth` -- device-to-device copy GB/s, counting read + write bytes, and
  :func:`fraction_of_copy_bandwidth` -- how close an op's traffic comes to it.
* :class:`Comparison` -- several implementations of one computation timed in the same run, with
  ratios relative to a named baseline; :func:`print_table` prints rows of them.
* :func:`provenance` and :func:`write_results` -- the rows with device, versions, git commit,
  date and command, written atomically as CSV and JSON.

Speedup convention: ``speedup = baseline_seconds / seconds``, so 2.0 means twice as fast as the
baseline and the baseline's own row reads 1.0.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable

import torch

from ._io import atomic_write_text

__all__ = ["Timing", "Row", "Comparison", "time_fn", "measure_copy_bandwidth", "fraction_of_copy_bandwidth",
           "speedup", "provenance", "device_slug", "write_results", "format_table", "print_table"]

L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than the L2 of any current GPU (H100: 50 MB, H200: 60 MB)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call: median and the 20% / 80% quantiles over ``runs`` measurements."""

    median: float
    q20: float
    q80: float
    runs: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_cuda(fn: Callable[[], object], device: torch.device, warmup_ms: float, rep_ms: float) -> Timing:
    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    fn()
    _sync(device)
    # Estimate one call's time, then size warmup and repetitions by time, as do_bench does.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        fn()
    end.record()
    _sync(device)
    estimate_ms = max(start.elapsed_time(end) / 5, 1e-4)
    n_warmup = max(1, int(warmup_ms / estimate_ms))
    n_rep = max(5, min(10_000, int(rep_ms / estimate_ms)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for _ in range(n_warmup):
        fn()
    for i in range(n_rep):
        flush.zero_()  # a cold L2 for every call: the op must fetch its inputs from HBM
        starts[i].record()
        fn()
        ends[i].record()
    _sync(device)
    times = sorted(s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends))
    return _summarise(times)


def _time_cpu(fn: Callable[[], object], min_run_time: float) -> Timing:
    from torch.utils import benchmark

    fn()  # first call outside the timing: lazy loading, allocator warmup
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = sorted(m.times)  # seconds per call, one entry per block
    return Timing(median=m.median, q20=_quantile(times, 0.2), q80=_quantile(times, 0.8), runs=len(times))


def _quantile(sorted_times: list[float], q: float) -> float:
    pos = q * (len(sorted_times) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_times[lo] + (sorted_times[hi] - sorted_times[lo]) * (pos - lo)


def _summarise(sorted_times: list[float]) -> Timing:
    return Timing(statistics.median(sorted_times), _quantile(sorted_times, 0.2), _quantile(sorted_times, 0.8),
                  len(sorted_times))


def time_fn(fn: Callable[[], object], device: torch.device | str, *, warmup_ms: float = 25.0,
            rep_ms: float = 100.0, min_run_time: float = 0.5) -> Timing:
    """Time ``fn()`` (no arguments; its result is discarded) on ``device``.

    CUDA: ``warmup_ms`` of warmup, then about ``rep_ms`` of calls, each timed with CUDA events
    after flushing L2. CPU: blocked autorange for at least ``min_run_time`` seconds. Any one-off
    cost (torch.compile, autotuning, lazy loading) must happen before: the first call is made
    once, untimed, but a compile is best triggered by the caller so its time is never counted.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _time_cuda(fn, device, warmup_ms, rep_ms)
    if device.type == "cpu":
        fix_cpu_allocator()
        return _time_cpu(fn, min_run_time)
    raise ValueError(f"device must be a cpu or cuda device, got {device}")


# glibc malloc serves a large block (a 3 MiB tensor) from mmap or from the heap by a threshold that
# moves as the process frees blocks, and returns freed heap memory to the OS past a trim threshold.
# So whether each step's fresh output page-faults (0.1-2 ms at 3 MiB) depends on the process's
# allocation history: measured, the same fused step took 124-158 us in every process with these
# thresholds fixed, and ~135 us or ~2,050 us (stable within a process, bimodal between processes)
# without (benchmarks/results/thread_pinning_cpu-2core.json: other processes used <= 3% of the CPUs).
# Fixed thresholds make CPU timings reproducible between runs; the setting is the same for every
# contender of a run (one process) and is recorded in the provenance. 32 MiB is the largest mmap
# threshold glibc accepts on 64-bit systems.
MALLOC_SETTINGS = {"M_TRIM_THRESHOLD": 1 << 30, "M_MMAP_THRESHOLD": 32 << 20}
_MALLOPT_PARAMS = {"M_TRIM_THRESHOLD": -1, "M_MMAP_THRESHOLD": -3}  # glibc's <malloc.h>
_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_allocator_state: dict | None = None


def fix_cpu_allocator() -> dict:
    """Apply :data:`MALLOC_SETTINGS` with glibc's mallopt, once per process; returns what was done
    (``{"allocator": "glibc", **settings}``, or why nothing was: not glibc, or the user's own
    MALLOC_*_ environment, which wins)."""
    global _allocator_state
    if _allocator_state is not None:
        return _allocator_state
    # the user's own thresholds win (glibc reads them at start-up; mallopt here would override them)
    user = sorted(k for k in os.environ if k in _MALLOC_ENV)
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        user.append("GLIBC_TUNABLES")
    if user:
        _allocator_state = {"allocator": "as configured by the environment: " + ", ".join(user)}
        return _allocator_state
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: musl has no such function
    except (OSError, AttributeError):
        _allocator_state = {"allocator": "default (not glibc: mallopt unavailable)"}
        return _allocator_state
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    state = {"allocator": "glibc"}
    for name, value in MALLOC_SETTINGS.items():
        state[name] = value if mallopt(_MALLOPT_PARAMS[name], value) == 1 else "refused"
    _allocator_state = state
    return state


def measure_copy_bandwidth(device: torch.device | str, nbytes: int | None = None, **timing) -> float:
    """Device-to-device copy bandwidth in GB/s (1e9 bytes/s), counting read + write: 2 * nbytes / t.

    ``nbytes``: size of the copied buffer; default 256 MiB on CUDA (well past L2) and 64 MiB on
    CPU (past the last-level cache of a small machine). This is the ceiling a memory-bound op is
    judged against (DESIGN.md, "Benchmarks").
    """
    device = torch.device(device)
    if nbytes is None:
        nbytes = (256 if device.type == "cuda" else 64) * 1024 * 1024
    if nbytes <= 0:
        raise ValueError(f"nbytes must be positive, got {nbytes}")
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, **timing)
    return 2 * src.numel() * 4 / t.median / 1e9


def fraction_of_copy_bandwidth(bytes_moved: float, seconds: float, copy_gbps: float) -> float:
    """Achieved bandwidth ``bytes_moved / seconds`` as a fraction of ``copy_gbps`` (GB/s, 1e9)."""
    if seconds <= 0 or copy_gbps <= 0:
        raise ValueError(f"seconds and copy_gbps must be positive, got {seconds} and {copy_gbps}")
    return bytes_moved / seconds / 1e9 / copy_gbps


def speedup(baseline_seconds: float, seconds: float) -> float:
    """How many times faster than the baseline: ``baseline_seconds / seconds``."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    return baseline_seconds / seconds


@dataclasses.dataclass
class Row:
    """One measured line of a result table.

    ``group`` names the computation (with shape and dtype), ``impl`` who computes it; ``bytes_moved``
    is the minimum memory traffic of the computation (None where it is not memory-bound).
    """

    group: str
    impl: str
    median_s: float
    q20_s: float
    q80_s: float
    baseline: str = ""
    speedup: float | None = None
    bytes_moved: int | None = None
    gbps: float | None = None
    frac_copy_bw: float | None = None
    note: str = ""


class Comparison:
    """Implementations of one computation, timed in one run and compared with ``baseline``.

    >>> cmp = Comparison("add_noise 256x3x32x32 float32", baseline="eager", device="cpu")
    >>> cmp.add("eager", lambda: eager(x0), bytes_moved=3 * x0.nbytes)
    >>> cmp.add("fastgen[cpu]", lambda: fastgen.ops.add_noise(x0, t, abar, noise, impl="cpu"))
    >>> rows = cmp.run(copy_gbps=measure_copy_bandwidth("cpu"))

    ``bytes_moved`` given to the constructor is the default for every entry. An entry can be
    skipped with a reason (:meth:`skip`); it shows in the table instead of vanishing.
    """

    def __init__(self, group: str, *, baseline: str, device: torch.device | str, bytes_moved: int | None = None,
                 **timing):
        self.group, self.baseline, self.device = group, baseline, torch.device(device)
        self.bytes_moved, self.timing = bytes_moved, timing
        self._entries: list[tuple[str, Callable[[], object] | None, int | None, str]] = []

    def add(self, impl: str, fn: Callable[[], object], *, bytes_moved: int | None = None, note: str = "") -> None:
        self._entries.append((impl, fn, bytes_moved if bytes_moved is not None else self.bytes_moved, note))

    def skip(self, impl: str, reason: str) -> None:
        self._entries.append((impl, None, None, f"skipped: {reason}"))

    def entries(self) -> list[tuple[str, Callable[[], object] | None, str]]:
        """(impl, fn or None where skipped, note) in the order added: for other timers (pytest-benchmark)."""
        return [(impl, fn, note) for impl, fn, _, note in self._entries]

    def run(self, copy_gbps: float | None = None, repeats: int = 1) -> list[Row]:
        """Time every entry; the baseline must be among the entries that ran.

        ``repeats`` > 1 times the entries round-robin that many times and keeps, per entry, the
        measurement with the median time: on a shared machine, load that comes and goes then
        falls on every contender alike instead of on whichever ran during it.
        """
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        timings: dict[int, list[Timing]] = {k: [] for k, e in enumerate(self._entries) if e[1] is not None}
        load_before, cpu_before = _load(), _cpu_snapshot()
        for _ in range(repeats):
            for k in timings:
                timings[k].append(time_fn(self._entries[k][1], self.device, **self.timing))
        busy = _busy_note(self.device, load_before, _load(), other_cpu_share(cpu_before, _cpu_snapshot()))
        rows = []
        for k, (impl, fn, nbytes, note) in enumerate(self._entries):
            if fn is None:
                rows.append(Row(self.group, impl, math.nan, math.nan, math.nan, self.baseline, note=note))
                continue
            t = sorted(timings[k], key=lambda x: x.median)[(repeats - 1) // 2]
            row = Row(self.group, impl, t.median, t.q20, t.q80, self.baseline, bytes_moved=nbytes,
                      note=_join_notes(note, _noise_note(t), busy))
            if nbytes is not None:
                row.gbps = nbytes / t.median / 1e9
                if copy_gbps:
                    row.frac_copy_bw = fraction_of_copy_bandwidth(nbytes, t.median, copy_gbps)
            rows.append(row)
        return add_speedups(rows, self.baseline)


# a row whose 20-80% spread exceeds this fraction of its median says so: read it as noise-limited
NOISY_SPREAD = 0.25


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


# a CPU row says "machine busy" when other processes took more than this share of the machine's
# CPU time while it was timed
BUSY_SHARE = 0.1


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process — every thread —,
    wall seconds) now; None where /proc/stat does not exist (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    # user nice system idle iowait irq softirq steal: everything but idle and iowait is busy; steal
    # is time a hypervisor gave to other machines, which this one's timings lose as well
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return busy, time.process_time(), time.perf_counter()


def other_cpu_share(before, after) -> float | None:
    """Share of the machine's CPU time (0..1, over all its cores) that processes other than this
    one used between two :func:`_cpu_snapshot` readings; None without them.

    Unlike the load average, this does not count the benchmark's own threads: a 2-thread CPU
    benchmark on a 2-core machine holds the 1-minute load at ~2 by itself."""
    if before is None or after is None or after[2] <= before[2]:
        return None
    machine = after[0] - before[0]
    own = after[1] - before[1]
    return max(0.0, machine - own) / ((after[2] - before[2]) * (os.cpu_count() or 1))


def _busy_note(device, before: float | None, after: float | None, other_share: float | None = None) -> str:
    """A note when other work shared the CPU during a CPU measurement: other processes' share of the
    CPU time while it ran above :data:`BUSY_SHARE` (where /proc/stat exists), else a 1-minute load
    above half the cores (which also counts the benchmark's own threads)."""
    if torch.device(device).type != "cpu":
        return ""
    if other_share is not None:
        if other_share > BUSY_SHARE:
            return f"machine busy: other processes used {other_share:.0%} of the CPUs while this was timed"
        return ""
    if before is None or after is None:
        return ""
    if max(before, after) > 0.5 * (os.cpu_count() or 1):
        return f"machine busy: 1-min load {before:.1f} before, {after:.1f} after"
    return ""


def _noise_note(t: Timing) -> str:
    spread = (t.q80 - t.q20) / t.median if t.median > 0 else 0.0
    return f"noisy: 20-80% spread {spread:.0%} of the median" if spread > NOISY_SPREAD else ""


def _join_notes(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def add_speedups(rows: list[Row], baseline: str) -> list[Row]:
    """Fill ``speedup`` of every row relative to the row whose impl is ``baseline`` (same group)."""
    base = [r for r in rows if r.impl == baseline and not math.isnan(r.median_s)]
    if not base:
        raise ValueError(f"baseline {baseline!r} is not among the measured rows {[r.impl for r in rows]}")
    for r in rows:
        r.baseline = baseline
        r.speedup = None if math.isnan(r.median_s) else speedup(base[0].median_s, r.median_s)
    return rows


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name()


def device_slug(device: torch.device | str) -> str:
    """A file-name-safe label of the device: ``cpu-2core`` or e.g. ``nvidia-h100-80gb-hbm3``."""
    device = torch.device(device)
    if device.type == "cpu":
        return f"cpu-{os.cpu_count()}core"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def provenance(device: torch.device | str, *, label: str = "", command: str | None = None) -> dict:
    """Where a result came from: device, versions, git commit, UTC date, CPU count, command.

    No host name or user name is recorded. ``label`` is free text (e.g. "2-core CI CPU machine").
    """
    from . import _native  # the C++ CPU library loaded: which ISA level (baseline / avx2 / avx512) ran

    device = torch.device(device)
    return {
        "label": label,
        "device_type": device.type,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        # Other processes on a small shared machine skew CPU timings: record how busy it was
        # (when the provenance is taken, i.e. at the end of a run).
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": package_version("triton"),
        "diffusers": package_version("diffusers"),
        "fastgen": package_version("fastgen"),
        "cpu_kernels": _native.cpu_library_info(),
        # how CPU timings' fresh tensors were allocated (fix_cpu_allocator); None: no CPU timing ran
        "cpu_allocator": _allocator_state,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "git_commit": git_commit(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("OMP_", "MKL_", "GOMP_", "FASTGEN_", "TRITON_", "CUDA_VISIBLE"))},
        "command": command if command is not None else shlex.join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
    }


def _clean(value):
    # JSON has no NaN: a skipped row's times become null.
    return None if isinstance(value, float) and math.isnan(value) else value


def write_results(rows: Iterable[Row], prov: dict, out_dir: str, stem: str) -> tuple[str, str]:
    """Write ``<out_dir>/<stem>.csv`` and ``<stem>.json`` atomically; returns both paths.

    The JSON holds ``{"provenance": prov, "rows": [...]}``; the CSV has one line per row with the
    provenance's device, versions, commit and date repeated in each line, so CSVs of different
    machines can be concatenated. Both texts are built completely before anything is written.
    """
    rows = [dataclasses.asdict(r) for r in rows]
    os.makedirs(out_dir, exist_ok=True)
    text_json = json.dumps({"provenance": prov, "rows": [{k: _clean(v) for k, v in r.items()} for r in rows]},
                           indent=2, allow_nan=False) + "\n"
    prov_cols = ["device_name", "torch", "triton", "cuda", "diffusers", "git_commit", "date_utc"]
    buf = io.StringIO()
    fields = [f.name for f in dataclasses.fields(Row)] + prov_cols
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, **{k: prov.get(k) for k in prov_cols}})
    csv_path, json_path = os.path.join(out_dir, stem + ".csv"), os.path.join(out_dir, stem + ".json")
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(json_path, text_json)
    return csv_path, json_path


def _fmt_time(s: float) -> str:
    if math.isnan(s):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def format_table(rows: Iterable[Row]) -> str:
    """A fixed-width text table: group, impl, median, speedup vs baseline, GB/s, fraction of copy BW."""
    header = ("group", "impl", "median", "speedup", "vs", "GB/s", "of copy BW", "note")
    lines = [header]
    for r in rows:
        lines.append((r.group, r.impl, _fmt_time(r.median_s),
                      "-" if r.speedup is None else f"{r.speedup:.2f}x", r.baseline,
                      "-" if r.gbps is None else f"{r.gbps:.1f}",
                      "-" if r.frac_copy_bw is None else f"{100 * r.frac_copy_bw:.0f}%", r.note))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for k, line in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def print_table(rows: Iterable[Row], file=None) -> None:
    print(format_table(rows), file=file or sys.stdout, flush=True)
