"""Which tile every Triton launch uses, and why: candidates, a measured table, today's defaults.

Every launcher in this package asks :func:`choose` for its configuration (the tile constexprs and
num_warps of one launch) with its kernel name, a tensor of the call (device and dtype) and the size
that selects the tile (see KERNELS: elements per sample for the elementwise kernels, elements per
group for GroupNorm, the head dim for attention, the feature dim for vq_nearest). Sizes are bucketed
to the next power of two. The answer, in order of precedence:

1. ``forced``: inside :func:`forced` (the compile report, benchmarks/tune_tiles.py, tests).
2. ``autotuned``: with ``FASTGEN_AUTOTUNE=1``, on a CUDA tensor, the first call per (GPU, kernel,
   dtype, bucket) times every candidate (``triton.testing.do_bench``, median) and keeps the fastest
   for the process; with ``FASTGEN_TUNE_CACHE=/path/file.json`` also in that file (written
   atomically, read back by later processes: source ``cache file``). Never while a CUDA graph is
   being captured or torch.compile traces: there the table or default is used (timing would launch
   work inside the capture / trace). Both variables are read at the first launch of the process.
3. ``table``: the committed table ``tiles.json`` beside this file, an entry for the GPU's name
   (``torch.cuda.get_device_name``) or else for its compute capability (``sm_90``); written from
   benchmarks/tune_tiles.py's measurements (``--write-table``).
4. ``default``: today's fixed choice (kernels/tiling.py's block_for, bias_act.BLOCK, group_norm's
   TILE / CL_TILE, attention's and vq_nearest's ``_TILES``), read from those modules at call time.

:func:`explain` (and ``fastgen tiles``) says which config a call gets and which of these chose it.

Every candidate is compiled for sm_90 and sm_80 by ``benchmarks/triton_compile_report.py
--candidates``, which fails a launch that spills more than 64 B per thread (its --max-spill-bytes) or
overflows shared memory: only candidates that passed there on both architectures under triton 3.9
(committed: benchmarks/results/triton_compile_candidates_sm90_sm80.json) and 3.6 (a run of the same
command, not committed) are listed here; a few keep 4-48 B of spills (see that file) (one exception, a
default: vq_nearest's float32 D-loop tile, see _VQ_CANDIDATES).

Determinism: the elementwise kernels (noising, the step, the interpolation, scaling, bias_act, the
loss backward) give bit-identical results for every candidate, and so does in-kernel Philox noise
(its stream is indexed by element, not by tile). Where a tile sets a reduction's order (the
per-chunk partial sums of the loss forward and of sum_of_squares, GroupNorm's Welford chunks,
attention's key blocks, vq_nearest's dot over D slices) another tile can change the low bits. The
default and a table entry are fixed per GPU, so results are reproducible; an autotuned winner comes
from timings and may differ between processes, and with it those low bits.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiles.json")
ENV_AUTOTUNE = "FASTGEN_AUTOTUNE"
ENV_CACHE = "FASTGEN_TUNE_CACHE"


# ---------------------------------------------------------------------------------------------
# Families: the config fields, what the size means, the candidates and today's default
# ---------------------------------------------------------------------------------------------

# Elementwise: BLOCK x num_warps. 4096 is not a candidate: the sampling step (four history tensors,
# Philox) spills 112-448 B per thread there at 4 and 8 warps (compile report --candidates, triton 3.6
# and 3.9).
_ELEMENTWISE_BLOCKS = (512, 1024, 2048)
_WARPS = (4, 8)


@dataclass(frozen=True)
class Family:
    name: str
    fields: tuple[str, ...]  # the config's keys, in launch order (num_warps last)
    size: str  # what the size argument of choose() is, for messages


ELEMENTWISE = Family("elementwise", ("BLOCK", "num_warps"), "elements per sample")
GROUP_NORM = Family("group_norm", ("TILE", "num_warps"), "elements per (sample, group)")
GROUP_NORM_CL = Family("group_norm_cl", ("CL_TILE", "num_warps"), "elements per (sample, group)")
ATTENTION = Family("attention", ("BLOCK_M", "BLOCK_N", "num_warps"), "head dim")
VQ_NEAREST = Family("vq_nearest", ("BLOCK_N", "BLOCK_K", "BLOCK_D", "num_warps"), "feature dim D")

# kernel name (as launchers and the table spell it) -> family
KERNELS = {
    "add_noise": ELEMENTWISE,
    "diffusion_loss_forward": ELEMENTWISE,
    "diffusion_loss_backward": ELEMENTWISE,
    "sampling_step": ELEMENTWISE,
    "gp_interpolate": ELEMENTWISE,
    "gp_sum_of_squares": ELEMENTWISE,
    "gp_scale": ELEMENTWISE,
    "bias_act_forward": ELEMENTWISE,
    "bias_act_backward": ELEMENTWISE,
    "group_norm_forward": GROUP_NORM,
    "group_norm_backward": GROUP_NORM,
    "group_norm_cl_forward": GROUP_NORM_CL,
    "group_norm_cl_backward": GROUP_NORM_CL,
    # a launch of few (sample, group) programs, which the split may spread over more programs: a
    # kernel name of its own, since the table is keyed by elements per group and the best tile of a
    # batch-1 launch need not be a training batch's (group_norm.tile_kernel names them)
    "group_norm_few_forward": GROUP_NORM,
    "group_norm_few_backward": GROUP_NORM,
    "group_norm_cl_few_forward": GROUP_NORM_CL,
    "group_norm_cl_few_backward": GROUP_NORM_CL,
    "attention_forward": ATTENTION,
    "attention_backward": ATTENTION,
    "vq_nearest": VQ_NEAREST,
}

# GroupNorm: (elements of one tile, num_warps); values per thread = tile / (32 * num_warps). The widest
# tile only at 8 warps: at 4 the backward spills (NCHW float32 TILE 8192: 92-448 B per thread;
# channels_last CL_TILE 4096: 128-168 B under triton 3.6), compile report --candidates.
_GN_CONFIGS = ((2048, 4), (2048, 8), (4096, 4), (4096, 8), (8192, 8))
_GN_CL_CONFIGS = ((1024, 4), (1024, 8), (2048, 4), (2048, 8), (4096, 8))

# Attention: per (element size, pass, head-dim bound of attention._TILES) the within-limits
# (BLOCK_M, BLOCK_N, num_warps), today's default first. The default is the largest tile that fits
# (attention.py); the others are smaller tiles and the other warp count, each compiled for sm_90 and
# sm_80 by the compile report's --candidates (dropped there: float32 forward 32 x 32 at 4 warps,
# ~1.2 KB of spills per thread at head dim 128).
_ATTENTION_CANDIDATES = {
    (2, "forward", 64): ((128, 64, 4), (128, 64, 8), (64, 64, 4), (128, 32, 4)),
    (2, "forward", 128): ((128, 32, 8), (64, 32, 4), (64, 64, 8), (128, 16, 8)),
    (2, "forward", 256): ((64, 32, 8), (32, 32, 4), (64, 16, 8), (32, 32, 8)),
    (2, "backward", 64): ((128, 64, 8), (64, 64, 4), (64, 32, 4), (128, 32, 8)),
    (2, "backward", 128): ((64, 32, 8), (32, 32, 4), (64, 16, 8), (32, 32, 8)),
    (2, "backward", 256): ((32, 32, 8), (32, 16, 8), (16, 16, 4), (16, 32, 8)),
    (4, "forward", 128): ((64, 32, 8), (64, 16, 8), (32, 32, 8)),
    (4, "forward", 256): ((16, 16, 8), (16, 16, 4)),
    (4, "backward", 32): ((64, 32, 8), (32, 32, 4), (32, 32, 8), (64, 16, 8)),
    (4, "backward", 64): ((32, 32, 8), (32, 16, 4), (16, 32, 4), (32, 16, 8)),
    (4, "backward", 128): ((32, 16, 8), (16, 16, 4), (16, 16, 8)),
    (4, "backward", 256): ((16, 16, 8), (16, 16, 4)),
}

# vq_nearest: per (element size, D in one slice) the (BLOCK_N, BLOCK_K, BLOCK_D cap, num_warps),
# today's default (vq_nearest._TILES) first. Dropped by the compile report's --candidates: 16-bit
# 32 x 128 at 4 warps with the D loop (0.8-5.4 KB of spills per thread), and every float32 D-loop
# alternative (32 x 64, 64 x 32, 32 x 32 at 4 warps: 96-192 B on sm_80). The float32 D-loop default
# itself spills 96 B per thread on sm_80 under triton 3.9 (not 3.6): kept, as it is what runs today.
_VQ_CANDIDATES = {
    (2, True): ((128, 128, 64, 8), (64, 128, 64, 4), (128, 64, 64, 4), (64, 64, 64, 4)),
    (2, False): ((64, 128, 64, 8), (64, 64, 64, 4), (64, 64, 32, 4)),
    (4, True): ((64, 64, 64, 4), (64, 64, 64, 8), (32, 64, 64, 4), (64, 32, 64, 4)),
    (4, False): ((64, 64, 32, 8),),
}


def size_meaning(kernel: str) -> str:
    """What ``size`` is for ``kernel`` (the key its tile is chosen by)."""
    if kernel.startswith("bias_act"):
        return "elements per bias row (rows launch) or in all (flat launch)"
    return _family(kernel).size


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def bucket(size: int) -> int:
    """The table key of a size: the size rounded up to a power of two."""
    return _next_pow2(size)


def _elem_size(dtype: torch.dtype) -> int:
    return 4 if dtype == torch.float32 else 2


def _attention_entry(dtype: torch.dtype, backward: bool, head_dim: int) -> tuple:
    from . import attention

    table = attention._TILES[_elem_size(dtype)]["backward" if backward else "forward"]
    bound = next((b for b, _ in table if head_dim <= b), None)
    if bound is None:
        raise ValueError(f"head_dim must be a multiple of 8 up to {attention.MAX_HEAD_DIM}, got {head_dim}")
    return _elem_size(dtype), "backward" if backward else "forward", bound


def default(kernel: str, dtype: torch.dtype, size: int) -> tuple[dict, str]:
    """Today's fixed choice for ``kernel`` at ``size`` and where it comes from (read at call time, so a
    test that patches a module constant changes it)."""
    family = _family(kernel)
    if family is ELEMENTWISE:
        if kernel.startswith("bias_act"):
            from . import bias_act

            return {"BLOCK": bias_act.BLOCK, "num_warps": 4}, "bias_act.BLOCK, 4 warps"
        from .tiling import block_for

        return {"BLOCK": block_for(size), "num_warps": 4}, "tiling.block_for (up to 1024), 4 warps"
    if family is GROUP_NORM:
        from . import group_norm

        warps = 8 if kernel.endswith("backward") else 4
        return {"TILE": group_norm.TILE, "num_warps": warps}, f"group_norm.TILE, {warps} warps"
    if family is GROUP_NORM_CL:
        from . import group_norm

        return {"CL_TILE": group_norm.CL_TILE, "num_warps": 8}, "group_norm.CL_TILE, 8 warps"
    if family is ATTENTION:
        from . import attention

        m, n, w = attention.tile_config(size, dtype, kernel.endswith("backward"))
        return {"BLOCK_M": m, "BLOCK_N": n, "num_warps": w}, "attention._TILES (largest tile within the spill limit)"
    from . import vq_nearest

    n, k, d, w = vq_nearest.tile_config(size, dtype)
    return {"BLOCK_N": n, "BLOCK_K": k, "BLOCK_D": d, "num_warps": w}, "vq_nearest._TILES"


def candidates(kernel: str, dtype: torch.dtype, size: int) -> list[dict]:
    """Every config autotuning and benchmarks/tune_tiles.py may try for this call, the default first.
    Elementwise tiles wider than the size (rounded up to a power of two) are left out: they would
    only add masked lanes."""
    family = _family(kernel)
    base, _ = default(kernel, dtype, size)
    if family is ELEMENTWISE:
        widest = max(base["BLOCK"], _next_pow2(size))
        found = [{"BLOCK": b, "num_warps": w} for b in _ELEMENTWISE_BLOCKS for w in _WARPS if b <= widest]
    elif family is GROUP_NORM:
        found = [{"TILE": t, "num_warps": w} for t, w in _GN_CONFIGS]
    elif family is GROUP_NORM_CL:
        found = [{"CL_TILE": t, "num_warps": w} for t, w in _GN_CL_CONFIGS]
    elif family is ATTENTION:
        found = [dict(zip(family.fields, c))
                 for c in _ATTENTION_CANDIDATES[_attention_entry(dtype, kernel.endswith("backward"), size)]]
    else:
        found = []
        for n, k, d_cap, w in _VQ_CANDIDATES[(_elem_size(dtype), size <= 64)]:
            d = min(d_cap, max(16, _next_pow2(size)))  # as vq_nearest.tile_config: tl.dot needs >= 16
            found.append({"BLOCK_N": n, "BLOCK_K": k, "BLOCK_D": d, "num_warps": w})
    out = [base] + [c for c in found if c != base]
    return [c for i, c in enumerate(out) if c not in out[:i]]


def _family(kernel: str) -> Family:
    try:
        return KERNELS[kernel]
    except KeyError:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}") from None


# ---------------------------------------------------------------------------------------------
# The table and the user's cache file
# ---------------------------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def _dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype) or str(dtype).replace("torch.", "")


def validate_entries(entries, source: str) -> dict:
    """Check table entries and index them: {(device, kernel, dtype, bucket): config}.

    Each entry is ``{"device": "NVIDIA H200" | "sm_90", "kernel": ..., "dtype": "float32" | ...,
    "bucket": power of two, "config": {field: int}, ...}`` (more keys, e.g. what was measured, are
    kept for readers); a ValueError names the entry and what was expected."""
    if not isinstance(entries, list):
        raise ValueError(f"{source}: 'entries' must be a list, got {type(entries).__name__}")
    index = {}
    for i, e in enumerate(entries):
        where = f"{source}: entry {i}"
        if not isinstance(e, dict) or not {"device", "kernel", "dtype", "bucket", "config"} <= set(e):
            raise ValueError(f"{where} must have device, kernel, dtype, bucket and config, got {e!r}")
        family = KERNELS.get(e["kernel"])
        if family is None:
            raise ValueError(f"{where}: kernel must be one of {sorted(KERNELS)}, got {e['kernel']!r}")
        if e["dtype"] not in DTYPES:
            raise ValueError(f"{where}: dtype must be one of {sorted(DTYPES)}, got {e['dtype']!r}")
        b = e["bucket"]
        if not isinstance(b, int) or b < 1 or b & (b - 1):
            raise ValueError(f"{where}: bucket must be a positive power of two, got {b!r}")
        cfg = e["config"]
        if not isinstance(cfg, dict) or set(cfg) != set(family.fields) or not all(
                isinstance(v, int) and v > 0 for v in cfg.values()):
            raise ValueError(f"{where}: config must give positive integers for exactly {family.fields}, got {cfg!r}")
        allowed = candidates(e["kernel"], DTYPES[e["dtype"]], b)
        if cfg not in allowed:
            raise ValueError(f"{where}: config {cfg} is not a candidate of {e['kernel']} {e['dtype']} at bucket "
                             f"{b} (compile-checked candidates: {allowed})")
        index[(str(e["device"]), e["kernel"], e["dtype"], b)] = dict(cfg)
    return index


def _read_json(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'entries', got {type(data).__name__}")
    return data


_lock = threading.Lock()
_table: dict | None = None
_cache_file: dict | None = None  # entries of FASTGEN_TUNE_CACHE, as read (and then as extended)
_cache_entries: list = []
_tuned: dict = {}  # (device key, kernel, dtype, bucket) -> config, this process's autotuned winners
_forced: dict = {}  # kernel or family name -> config
_device_keys: dict = {}
_env: tuple | None = None  # see _environment()


def table() -> dict:
    """The committed table, indexed (read and validated once per process)."""
    global _table
    if _table is None:
        _table = validate_entries(_read_json(TABLE_PATH).get("entries", []), TABLE_PATH)
    return _table


def _cache_path() -> str | None:
    return _environment()[1]


def _cache() -> dict:
    """FASTGEN_TUNE_CACHE's entries, indexed; a missing file is empty, a bad one is warned about and ignored
    (it is the user's, possibly from an older fastgen whose candidates differ)."""
    global _cache_file, _cache_entries
    path = _cache_path()
    if path is None:
        return {}
    if _cache_file is None or _cache_file.get("path") != path:
        index, entries = {}, []
        if os.path.exists(path):
            try:
                entries = _read_json(path).get("entries", [])
                index = validate_entries(entries, path)
            except (OSError, ValueError) as exc:
                warnings.warn(f"fastgen: ignoring the tile cache {ENV_CACHE}={path!r}: {exc}", stacklevel=3)
                index, entries = {}, []
        _cache_file, _cache_entries = {"path": path, "index": index}, list(entries)
    return _cache_file["index"]


def _write_json_atomically(path: str, data: dict) -> None:
    """A temp file beside ``path``, fsynced, renamed over it: readers see the old file or the new one.
    (fastgen._io.atomic_write's core: kernels/ imports nothing from fastgen, DESIGN.md.)"""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _device_key(device: torch.device) -> tuple[str, ...]:
    """The table keys of a device, most specific first: (GPU name, "sm_XY") on CUDA, else (type,)."""
    if device.type != "cuda":
        return (device.type,)
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = _device_keys.get(index)
    if key is None:
        major, minor = torch.cuda.get_device_capability(index)
        key = _device_keys[index] = (torch.cuda.get_device_name(index), f"sm_{major}{minor}")
    return key


# ---------------------------------------------------------------------------------------------
# Choosing
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Choice:
    """What :func:`explain` returns: the config and which rule chose it."""

    kernel: str
    dtype: str
    size: int
    bucket: int
    device: tuple
    config: dict
    source: str  # "forced", "autotuned", "cache file", "table" or "default"
    detail: str

    def __str__(self) -> str:
        cfg = " ".join(f"{k}={v}" for k, v in self.config.items())
        return (f"{self.kernel} {self.dtype}, {size_meaning(self.kernel)} {self.size} (bucket {self.bucket}) "
                f"on {' / '.join(self.device)}: {cfg} -- {self.source}: {self.detail}")


def _environment() -> tuple[bool, str | None]:
    """(FASTGEN_AUTOTUNE set, FASTGEN_TUNE_CACHE or None), read at the first launch (and after _reset)."""
    global _env
    if _env is None:
        _env = (os.environ.get(ENV_AUTOTUNE, "") not in ("", "0"), os.environ.get(ENV_CACHE) or None)
    return _env


def autotune_enabled() -> bool:
    return _environment()[0]


def _tracing() -> str | None:
    """Why no candidate may be timed now, or None: a CUDA graph capture or a torch.compile trace."""
    if torch.compiler.is_compiling():
        return "torch.compile is tracing"
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return "a CUDA graph is being captured"
    return None


def _resolve(kernel: str, like: torch.Tensor | None, dtype: torch.dtype, size: int,
             device: tuple, bench: Callable[[dict], object] | None, why: bool = False) -> tuple[dict, str, str]:
    """(config, source, detail); the detail text only with ``why`` (explain), as this runs before every
    launch: the common case (no forced config, no autotuning, no cache file) is a few dict lookups."""
    family = _family(kernel)
    if _forced and (kernel in _forced or family.name in _forced):
        return dict(_forced.get(kernel, _forced.get(family.name))), "forced", "inside tuning.forced()"
    b = bucket(size)
    dt = _dtype_name(dtype)
    if _tuned:
        for name in device:
            hit = _tuned.get((name, kernel, dt, b))
            if hit is not None:
                return dict(hit), "autotuned", "timed in this process (FASTGEN_AUTOTUNE=1)"
    if _cache_path() is not None:
        cache = _cache()
        for name in device:
            hit = cache.get((name, kernel, dt, b))
            if hit is not None:
                return dict(hit), "cache file", f"{ENV_CACHE}={_cache_path()}, entry for {name}"
    why_not = None
    if autotune_enabled():
        why_not = ("not a CUDA tensor" if like is None or like.device.type != "cuda" else
                   "this launcher gives no way to time candidates" if bench is None else _tracing())
        if why_not is None:
            cfg = _autotune(kernel, dtype, size, device, bench)
            return dict(cfg), "autotuned", "timed now, the fastest of the candidates (FASTGEN_AUTOTUNE=1)"
    note = f"; autotuning skipped: {why_not}" if why and why_not else ""
    entries = _table if _table is not None else table()
    for name in device:
        hit = entries.get((name, kernel, dt, b))
        if hit is not None:
            return dict(hit), "table", f"{os.path.basename(TABLE_PATH)} entry for {name}{note}" if why else ""
    cfg, origin = default(kernel, dtype, size)
    return cfg, "default", (f"today's fixed choice ({origin}); the table has no entry for "
                            f"{' or '.join(device)}, {kernel}, {dt}, bucket {b}{note}") if why else ""


def choose(kernel: str, like: torch.Tensor, size: int, bench: Callable[[dict], object] | None = None) -> dict:
    """The launch config of ``kernel`` for a call on ``like``'s device and dtype at ``size`` (see KERNELS).

    ``bench(config)`` runs the launcher's whole launch with a given config (repeatable: outputs are
    fresh buffers the launch overwrites); autotuning times it per candidate. The returned dict's keys
    are the family's fields: tile constexprs and ``num_warps``, passed straight to the launch.
    """
    return _resolve(kernel, like, like.dtype, size, _device_key(like.device), bench)[0]


def explain(kernel: str, dtype: torch.dtype | str = torch.float32, size: int = 4096,
            device: torch.device | str | None = None) -> Choice:
    """Which config ``kernel`` gets for ``dtype`` at ``size`` on ``device`` and why (never times anything).

    ``device``: a torch device (``"cuda"``, ``"cuda:1"``, ``"cpu"``), or a GPU name or compute capability
    as the table spells it (``"NVIDIA H200"``, ``"sm_90"``) to read the table on a machine without it;
    default: the current CUDA device where there is one, else the CPU.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer ({size_meaning(kernel)}), got {size!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        keys = _device_key(torch.device(device))
    except (RuntimeError, ValueError):  # not a torch device string: a table device name
        keys = (str(device),)
    except AssertionError as exc:  # torch without CUDA asked about "cuda": torch asserts
        raise ValueError(f"device {device!r}: {exc}; name a GPU (e.g. 'NVIDIA H200') or 'sm_90' instead") from exc
    cfg, source, detail = _resolve(kernel, None, dtype, size, keys, None, why=True)
    return Choice(kernel, _dtype_name(dtype), size, bucket(size), keys, cfg, source, detail)


@contextmanager
def forced(name: str, config: dict):
    """Within the block every launch of ``name`` (a kernel of KERNELS or a family name: "elementwise",
    "group_norm", "group_norm_cl", "attention", "vq_nearest") uses ``config``."""
    fields = KERNELS[name].fields if name in KERNELS else next(
        (f.fields for f in set(KERNELS.values()) if f.name == name), None)
    if fields is None:
        raise ValueError(f"name must be a kernel {sorted(KERNELS)} or a family, got {name!r}")
    if set(config) != set(fields):
        raise ValueError(f"config must give exactly {fields}, got {config!r}")
    previous = _forced.get(name)
    _forced[name] = dict(config)
    try:
        yield
    finally:
        if previous is None:
            _forced.pop(name, None)
        else:
            _forced[name] = previous


def rerun(kernel: str, fn: Callable, *args) -> Callable[[dict], object]:
    """A ``bench`` for :func:`choose` that calls ``fn(*args)`` (the launcher itself) with ``kernel``'s
    config forced: for launchers whose launch is the whole call."""
    def bench(config: dict):
        with forced(kernel, config):
            return fn(*args)
    return bench


# ---------------------------------------------------------------------------------------------
# Autotuning
# ---------------------------------------------------------------------------------------------

def _time_ms(bench: Callable[[dict], object], config: dict) -> float:
    from triton.testing import do_bench

    bench(config)  # compile outside the timing
    torch.cuda.synchronize()
    return do_bench(lambda: bench(config), warmup=10, rep=40, return_mode="median")


def _autotune(kernel: str, dtype: torch.dtype, size: int, device: tuple, bench) -> dict:
    with _lock:
        key = (device[0], kernel, _dtype_name(dtype), bucket(size))
        if key in _tuned:
            return _tuned[key]
        timed = [(_time_ms(bench, cfg), i, cfg) for i, cfg in enumerate(candidates(kernel, dtype, size))]
        ms, _, best = min(timed)  # ties: the earlier candidate (the default comes first)
        _tuned[key] = best
        path = _cache_path()
        if path is not None:
            _cache()
            entry = {"device": key[0], "kernel": kernel, "dtype": key[2], "bucket": key[3], "config": best,
                     "median_ms": round(ms, 5), "size": size, "source": "FASTGEN_AUTOTUNE"}
            _cache_entries[:] = [e for e in _cache_entries if (e.get("device"), e.get("kernel"), e.get("dtype"),
                                                                 e.get("bucket")) != key] + [entry]
            _cache_file["index"][key] = dict(best)
            try:
                _write_json_atomically(path, {"entries": _cache_entries})
            except OSError as exc:
                warnings.warn(f"fastgen: could not write the tile cache {ENV_CACHE}={path!r}: {exc}", stacklevel=4)
        return best


def _reset() -> None:
    """Forget this process's winners and the files read (tests)."""
    global _table, _cache_file, _env
    _tuned.clear()
    _table, _cache_file, _env = None, None, None
    _cache_entries.clear()
