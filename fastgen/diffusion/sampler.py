"""The whole-loop sampler: noise -> x_0 for any model and any diffusers-style scheduler.

:func:`sample` runs the reverse-diffusion loop the way diffusers' DDPM / DDIM pipelines do
(initial noise ``randn * init_noise_sigma``, then ``scale_model_input``, the model and ``step``
for every timestep), with three differences that matter for speed:

* no host-device synchronisation inside the loop: the loop walks step indices on the host and
  hands the model and ``step`` the timestep as a device tensor, so the host runs ahead of the GPU;
* on a CUDA device with a fastgen scheduler (whose ``step`` never syncs) the whole loop, all
  steps, is captured once into one ``torch.cuda.CUDAGraph`` and replayed, so a step costs its
  kernels and nothing else (the launch overhead of hundreds of small kernels disappears);
* the result is reproducible from an integer ``seed``.

Randomness. ``generator=g`` draws the initial noise exactly as diffusers' ``randn_tensor`` does
and passes ``g`` to every ``step``, so the result equals the diffusers pipeline's for the same
generator. Otherwise ``seed`` (a new one from torch's default CPU generator when None) seeds a
``torch.Generator`` on the device for the initial noise, and: on an accelerator, a fastgen
scheduler's in-kernel Philox noise is seeded with ``philox_seed(seed)`` (``set_noise_seed``, which
stays pinned on the scheduler; a different key from the initial noise's, so the two streams never
share counters); any other scheduler, and any scheduler on CPU, gets that device generator in
``step``, so ``seed=s`` on CPU equals ``generator=torch.Generator().manual_seed(s)``.
"""
from __future__ import annotations

import collections
import contextlib
import inspect
import logging
from typing import Callable

import torch

from .. import _rng
from .._io import progress_bar

logger = logging.getLogger("fastgen")

__all__ = ["sample", "should_capture", "graph_key", "philox_seed", "clear_graph_cache"]

_MAX_GRAPHS = 4  # each cached graph keeps its own memory pool alive; keep a few, least recently used out
_GRAPHS: "collections.OrderedDict[tuple, _GraphLoop | str]" = collections.OrderedDict()


def philox_seed(seed: int) -> int:
    """The in-kernel Philox seed used for ``seed``: SplitMix64 of it, in [0, 2**63).

    The initial noise comes from a torch generator seeded with ``seed``; on CUDA that generator is
    itself Philox4x32 keyed by ``seed``, so the scheduler's stream is keyed differently to keep the
    two from sharing counters.
    """
    z = (seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def is_fastgen_scheduler(scheduler: object) -> bool:
    """A fastgen drop-in scheduler (or a subclass): its ``step`` does no host synchronisation."""
    from .scheduling_base import SchedulerBase

    return isinstance(scheduler, SchedulerBase)


def should_capture(cuda_graph, device: torch.device, fastgen_scheduler: bool, has_generator: bool,
                   kwargs_problem: str | None = None) -> tuple[bool, str | None]:
    """Whether to capture the loop in a CUDA graph: ``(use, why_not)``.

    ``cuda_graph``: "auto", True or False. "auto" captures only where it is safe (a CUDA device, a
    fastgen scheduler, no generator, graph-compatible model_kwargs) and otherwise says why not;
    True raises ``ValueError`` with that reason instead.
    """
    if cuda_graph is False:
        return False, "cuda_graph=False"
    reason = None
    if device.type != "cuda":
        reason = f"CUDA graphs need a CUDA device, the samples are on {device}"
    elif not fastgen_scheduler:
        reason = ("the scheduler is not a fastgen scheduler: a diffusers scheduler's step synchronises with the "
                  "host, which a CUDA graph cannot capture")
    elif has_generator:
        reason = ("a generator was passed: its noise is drawn per step by the generator (a CPU generator cannot "
                  "be captured); pass seed= for a reproducible captured run")
    elif kwargs_problem is not None:
        reason = kwargs_problem
    if reason is not None and cuda_graph is True:
        raise ValueError(f"cuda_graph=True but the loop cannot be captured: {reason}")
    return reason is None, reason


def _freeze(value):
    """A hashable stand-in for a config value (lists and dicts become tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if hasattr(value, "tolist"):  # numpy arrays and tensors (trained_betas)
        return _freeze(value.tolist())
    hash(value)
    return value


def _is_plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (tuple, list)) and all(_is_plain(v) for v in value)


def _kwargs_signature(model_kwargs: dict) -> tuple[tuple | None, str | None]:
    """(signature, problem): tensors count by shape/dtype/device (replays copy them into static
    buffers); anything else must be a plain value, since it is baked into the graph (a tensor inside
    a container would be read at its captured address)."""
    sig = []
    for k in sorted(model_kwargs):
        v = model_kwargs[k]
        if isinstance(v, torch.Tensor):
            sig.append((k, "tensor", tuple(v.shape), v.dtype, v.device, v.is_contiguous()))
        elif _is_plain(v):
            sig.append((k, _freeze(v)))
        else:
            return None, (f"model_kwargs[{k!r}] is a {type(v).__name__}: a captured loop takes tensors and plain "
                          f"values (numbers, strings, None, tuples/lists of them)")
    return tuple(sig), None


def graph_key(model, scheduler, num_inference_steps: int, shape, dtype, device, channels_last: bool,
              kwargs_signature: tuple) -> tuple:
    """The cache key of a captured loop: model identity, scheduler class + config + steps, shape, dtype,
    device, memory format and the model_kwargs' signature."""
    config = getattr(scheduler, "config", None)
    try:
        config = _freeze(dict(config)) if config is not None else ()
    except TypeError:  # an unhashable config value: its text still tells configs apart
        config = repr(sorted(dict(config).items()))
    cls = type(scheduler)
    return (id(model), f"{cls.__module__}.{cls.__qualname__}", config, int(num_inference_steps), tuple(shape), dtype,
            torch.device(device), bool(channels_last), kwargs_signature)


def clear_graph_cache() -> None:
    """Drop every cached CUDA graph (and the memory pools they hold)."""
    _GRAPHS.clear()


# --- one step of the loop ----------------------------------------------------------------------------------

def _is_diffusers_model(model) -> bool:
    return any(c.__module__.startswith("diffusers.") for c in type(model).__mro__)


def _model_caller(model) -> Callable:
    """``call(x, t, kwargs) -> tensor``. A diffusers model gets the 0-d timestep, as its pipelines pass it;
    any other callable gets it as a (B,) tensor (one per sample, a stride-0 view: no copy)."""
    diffusers_model = _is_diffusers_model(model)

    def call(x, t, kwargs):
        try:
            out = model(x, t if diffusers_model else t.expand(x.shape[0]), **kwargs)
        except Exception as e:
            if not diffusers_model:
                e.add_note("fastgen.diffusion.sample calls model(x_t, t) with t a (B,) tensor, one timestep per "
                           "sample; for a model that takes one scalar timestep pass "
                           "`lambda x, t, **kw: model(x, t[0], **kw)`")
            raise
        if isinstance(out, torch.Tensor):
            return out
        if hasattr(out, "sample"):  # diffusers' UNet2DOutput and friends
            return out.sample
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            return out[0]
        raise TypeError(f"model must return a tensor, an object with .sample or a tuple starting with a tensor, "
                        f"got {type(out).__name__}")
    return call


def _step(scheduler, model_output, t, x, step_kwargs):
    out = scheduler.step(model_output, t, x, **step_kwargs)
    return out.prev_sample if hasattr(out, "prev_sample") else out[0]


def _run_loop(call, scheduler, x, kwargs, generator, bar=None):
    """The loop itself. Walks step indices on the host; ``timesteps[i]`` is a view, so nothing syncs."""
    timesteps = scheduler.timesteps
    # flow-matching schedulers (FlowMatchEulerDiscrete) have no scale_model_input and no init_noise_sigma
    scale = getattr(scheduler, "scale_model_input", None)
    # the generator only to a step that takes one (PNDM's and UniPC's do not), as diffusers' pipelines pass it
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if generator is not None and takes_generator else {}
    for i in range(len(timesteps)):
        t = timesteps[i]
        model_input = x if scale is None else scale(x, t)
        model_output = call(model_input, t, kwargs)
        x = _step(scheduler, model_output, t, x, step_kwargs)
        if bar is not None:
            bar.update(1)
    return x


def _draws_in_kernel(fastgen_scheduler: bool, device: torch.device) -> bool:
    """Whether step noise comes from the scheduler's in-kernel Philox state (fastgen, accelerators)."""
    return fastgen_scheduler and device.type != "cpu"


def _set_timesteps(scheduler, num_inference_steps: int, device: torch.device) -> None:
    if "device" in inspect.signature(scheduler.set_timesteps).parameters:
        scheduler.set_timesteps(num_inference_steps, device=device)
    else:
        scheduler.set_timesteps(num_inference_steps)


def _restart_noise(scheduler, seed: int) -> None:
    """Set a fastgen scheduler's Philox state (``noise_state``, int64 [seed, offset] on the device) to
    [seed, 0] in place, since a captured graph reads that very tensor. Two fills with the seed as a
    kernel argument: unlike ``set_noise_seed``'s copy from a host tensor, they never wait for the GPU.
    A schedule that never draws noise (DDIM eta=0, DPM-Solver++) has no state: nothing to do."""
    state = scheduler.noise_state
    if state is not None:
        state.narrow(0, 0, 1).fill_(seed)
        state.narrow(0, 1, 1).fill_(0)


# --- the captured loop -------------------------------------------------------------------------------------

def _private_copy(scheduler):
    """A new fastgen scheduler of the same class, config and step implementation. (Rebuilt from the
    config rather than deep-copied: a fastgen scheduler is determined by it, and its read-only
    config does not survive copy.deepcopy.)"""
    private = type(scheduler).from_config(scheduler.config)
    if "impl" in vars(scheduler):
        private.impl = scheduler.impl
    private.compute_pred_original_sample = False  # the loop reads prev_sample only
    return private


@contextlib.contextmanager
def _prev_sample_only(scheduler):
    """Within the block a fastgen scheduler skips pred_original_sample (one write pass a step)."""
    if not is_fastgen_scheduler(scheduler):
        yield
        return
    had = "compute_pred_original_sample" in vars(scheduler)
    before = scheduler.compute_pred_original_sample
    scheduler.compute_pred_original_sample = False
    try:
        yield
    finally:
        if had:
            scheduler.compute_pred_original_sample = before
        else:
            del scheduler.compute_pred_original_sample


class _GraphLoop:
    """The whole loop captured once for one key; :meth:`run` replays it for new noise and seed.

    Owns a private copy of the scheduler (so the caller's later ``set_timesteps`` cannot free the
    tables the graph reads) and static buffers for the initial noise and tensor model_kwargs. The
    only device state a fastgen step updates in place is its Philox offset (``advance_noise``), so
    a replay starts by restarting that state from the call's seed; the rest (step counters, the
    multistep solver's x0 history) is host state, or tensors the graph itself writes.
    """

    def __init__(self, model, scheduler, num_inference_steps: int, x_init: torch.Tensor, kwargs: dict):
        device = x_init.device
        self.model = model  # keeps id(model) in the key from being reused while cached
        self.scheduler = _private_copy(scheduler)
        self.static_x = x_init.clone()
        self.static_kwargs = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        call = _model_caller(model)
        # pinned, so set_timesteps creates the Philox state on the device (any seed: run() sets it)
        self.scheduler.set_noise_seed(0)
        _set_timesteps(self.scheduler, num_inference_steps, device)
        # Warm-up on a side stream (cuDNN/cuBLAS handles, lazy kernel loads, the allocator), as
        # torch.cuda.graphs recommends, then a fresh schedule for the captured run.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            _run_loop(call, self.scheduler, self.static_x, self.static_kwargs, None)
        torch.cuda.current_stream(device).wait_stream(side)
        _set_timesteps(self.scheduler, num_inference_steps, device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = _run_loop(call, self.scheduler, self.static_x, self.static_kwargs, None)

    def run(self, x_init: torch.Tensor, kwargs: dict, seed: int) -> torch.Tensor:
        self.static_x.copy_(x_init)
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                self.static_kwargs[k].copy_(v)
        _restart_noise(self.scheduler, seed)
        self.graph.replay()
        return self.static_out.clone()  # the next replay overwrites static_out


def _cached_graph(key, build: Callable[[], _GraphLoop], forced: bool) -> _GraphLoop | None:
    """The cached graph for ``key``, capturing on a miss. A failed capture is remembered: with
    cuda_graph="auto" it is logged once and the caller runs eagerly; with True it raises."""
    entry = _GRAPHS.get(key)
    if entry is None:
        try:
            entry = build()
        except Exception as e:  # noqa: BLE001 - any capture failure means "run eagerly", said once
            entry = f"{type(e).__name__}: {e}"
            if forced:
                raise RuntimeError(f"cuda_graph=True but capturing the sampling loop failed: {entry}") from e
            logger.warning("fastgen.diffusion.sample: CUDA graph capture failed (%s); running the loop eagerly",
                           entry)
        _GRAPHS[key] = entry
        while len(_GRAPHS) > _MAX_GRAPHS:
            _GRAPHS.popitem(last=False)
    _GRAPHS.move_to_end(key)
    if isinstance(entry, str):
        if forced:
            raise RuntimeError(f"cuda_graph=True but capturing the sampling loop failed earlier: {entry}")
        return None
    return entry


# --- the public entry point --------------------------------------------------------------------------------

def _check_args(model, scheduler, shape, num_inference_steps, generator, seed, dtype, cuda_graph, model_kwargs,
                channels_last) -> tuple[int, ...]:
    if not callable(model):
        raise TypeError(f"model must be callable as model(x_t, t), got {type(model).__name__}")
    for attr in ("set_timesteps", "step", "timesteps"):
        if not hasattr(scheduler, attr):
            raise TypeError(f"scheduler must follow the diffusers scheduler API (it has no {attr!r}), "
                            f"got {type(scheduler).__name__}")
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if (not isinstance(shape, (tuple, list)) or not shape
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ValueError(f"shape must be a non-empty tuple of positive ints (batch first), got {shape!r}")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be None or an int, got {type(seed).__name__}")
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed must lie in [0, 2**63), got {seed}")
        if generator is not None:
            raise ValueError("pass generator or seed, not both: the noise comes from exactly one source")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if cuda_graph not in ("auto", True, False):
        raise ValueError(f"cuda_graph must be 'auto', True or False, got {cuda_graph!r}")
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict or None, got {type(model_kwargs).__name__}")
    if channels_last and len(shape) != 4:
        raise ValueError(f"channels_last needs a 4-D shape (B, C, H, W), got {tuple(shape)}")
    return tuple(shape)


def _default_device(model) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def sample(model, scheduler, shape, *, num_inference_steps: int = 50, generator=None, seed: int | None = None,
           device=None, dtype: torch.dtype = torch.float32, cuda_graph="auto", progress: bool = True,
           model_kwargs: dict | None = None, channels_last: bool = False,
           noise: torch.Tensor | None = None) -> torch.Tensor:
    """Run the whole reverse-diffusion loop and return the final samples.

    Args:
        model: ``model(x_t, t, **model_kwargs)``. A diffusers model (``UNet2DModel`` ...) gets ``t``
            as the 0-d timestep tensor its pipelines pass and its output's ``.sample`` is used; any
            other callable gets ``t`` as a (B,) tensor of the scheduler's timestep dtype (int64 for
            DDPM/DDIM/DPM-Solver, float32 for the sigma schedulers) and may return a tensor, an
            object with ``.sample`` or a tuple.
        scheduler: anything with the diffusers scheduler API (``set_timesteps``, ``timesteps``,
            ``step``, and where it has them ``init_noise_sigma`` and ``scale_model_input``):
            diffusers' schedulers or any of fastgen's drop-in ones (``fastgen.diffusion.SCHEDULERS``).
            ``set_timesteps(num_inference_steps)`` is called on it, as a pipeline does.
        shape: of the samples, batch first, e.g. (B, C, H, W).
        num_inference_steps: number of denoising steps.
        generator: a ``torch.Generator`` (or a list, one per sample): the initial noise and every
            step's noise come from it exactly as in diffusers' pipelines. Rules out CUDA graphs.
        seed: an int in [0, 2**63): the same seed gives the same samples on every call (see the
            module docstring). Default: a new seed from torch's default CPU generator.
        device: where to sample; default the model's parameters' device, else CPU.
        dtype: the samples' floating dtype (the initial noise is drawn in it).
        cuda_graph: "auto" (default) captures the loop in a CUDA graph where that is safe: a CUDA
            device, a fastgen scheduler, no generator, model_kwargs of tensors and plain values; a failed
            capture is logged once and the loop runs eagerly. True requires it (errors say why it
            cannot be). False never captures. A captured loop is cached per (model, scheduler
            class + config + steps, shape, dtype, device, memory format, model_kwargs' shapes)
            and runs on a private copy of the scheduler; it reads the model's parameters in place,
            so weights loaded in place later are used; the progress bar then jumps to the end.
        progress: show a tqdm progress bar.
        model_kwargs: extra keyword arguments for every model call (class labels, ...).
        channels_last: keep the samples in channels_last memory format (4-D shapes only).
        noise: the initial noise, a tensor of ``shape`` drawn by the caller (e.g. one generator per
            sample, so that a sample does not depend on its batch), used instead of drawing it and
            scaled by ``init_noise_sigma`` as drawn noise is. Step noise still comes from
            ``generator`` or ``seed``; with ``seed`` a CUDA graph can still be captured.

    Returns the samples x_0, ``shape``, ``dtype``, on ``device`` (diffusers' pipelines then map them
    to images with ``(x / 2 + 0.5).clamp(0, 1)``; this function does not).
    """
    shape = _check_args(model, scheduler, shape, num_inference_steps, generator, seed, dtype, cuda_graph,
                        model_kwargs, channels_last)
    device = _default_device(model) if device is None else torch.device(device)
    model_kwargs = dict(model_kwargs or {})
    fastgen_scheduler = is_fastgen_scheduler(scheduler)

    if noise is not None:
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise must be a tensor of shape {shape}, got {got}")
        noise = noise.to(device, dtype)
    if generator is not None:
        if noise is None:
            noise = _rng.randn_like_diffusers(shape, generator, device, dtype)
        step_generator, kernel_seed = generator, None
    else:
        seed = _rng.new_seed() if seed is None else seed
        device_generator = torch.Generator(device=device).manual_seed(seed)
        if noise is None:
            noise = torch.randn(shape, generator=device_generator, device=device, dtype=dtype)
        # On accelerators a fastgen scheduler draws step noise in-kernel from its Philox state; on
        # CPU it (like any other scheduler) would use torch's global generator, so it gets ours.
        in_kernel = _draws_in_kernel(fastgen_scheduler, device)
        step_generator = None if in_kernel else device_generator
        kernel_seed = philox_seed(seed) if in_kernel else None
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    device = x.device  # with its index ("cuda" -> "cuda:0"), for the graph cache key
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    kwargs_sig, kwargs_problem = _kwargs_signature(model_kwargs)
    use_graph, _ = should_capture(cuda_graph, device, fastgen_scheduler, generator is not None, kwargs_problem)
    bar = progress_bar(progress, num_inference_steps, "sampling")
    try:
        if use_graph:
            key = graph_key(model, scheduler, num_inference_steps, shape, dtype, device, channels_last, kwargs_sig)
            loop = _cached_graph(key, lambda: _GraphLoop(model, scheduler, num_inference_steps, x, model_kwargs),
                                 forced=cuda_graph is True)
            if loop is not None:
                out = loop.run(x, model_kwargs, kernel_seed)
                if bar is not None:
                    bar.update(num_inference_steps)
                return out
        if kernel_seed is not None:
            scheduler.set_noise_seed(kernel_seed)  # pins it: set_timesteps restarts the stream from it
        _set_timesteps(scheduler, num_inference_steps, device)
        with _prev_sample_only(scheduler):
            return _run_loop(_model_caller(model), scheduler, x, model_kwargs, step_generator, bar)
    finally:
        if bar is not None:
            bar.close()
