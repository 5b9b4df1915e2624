"""One reverse-diffusion step, fused: DDPM, DDIM, DPM-Solver++, and the multistep / two-stage
solvers (LMS, PNDM, UniPC, DPM-Solver order 3, Heun, KDPM2) are all this one affine update.

Per sample b, with the coefficient row ``c = coefs[index[b]]`` (float32, :data:`NUM_COEFS` wide),
x = sample, m = model_output, h1..h4 = the ``history`` tensors (past x0, derivatives or epsilons,
whatever the scheduler's rows combine; an absent slot is zero and never read) and z Gaussian noise::

    x0    = c[PX] * x + c[PM] * m                  # predicted clean sample (epsilon / sample / v)
    x0    = clamp(x0, -clip_range, clip_range)     # when clip_range is given
    eps   = c[EX] * x + c[EM] * m + c[E0] * x0     # predicted noise (DDIM's direction term)
    out   = c[OX] * x + c[O0] * x0 + c[OE] * eps
            + c[H1] * h1 + c[H2] * h2 + c[H3] * h3 + c[H4] * h4 + c[SZ] * z
    state = c[SX] * x + c[S0] * x0 + c[SE] * eps   # what the scheduler keeps for later steps

``out`` is x_{t-1} in the sample's dtype; ``state`` is float32 and written only when asked for
(multistep history, diffusers' ``pred_original_sample``: rows with S0 = 1 and SX = SE = 0 give
state = x0; rows with all three zero give state = 0). All arithmetic is float32. The coefficient
tables are built once per schedule (``fastgen.ops.step_coefficients``) and live on the device, so
a step reads its row there: no host-device synchronisation, and a CUDA graph can capture it.

z is the caller's ``noise`` tensor, or Philox noise from ``rng`` (fastgen/_rng.py), or zero when
neither is given; rows with c[SZ] == 0 never touch noise (a NaN there does not leak into out).
More generally a term whose coefficient is 0 contributes exactly 0, whatever its operand: an
infinite model output (a float16 overflow) that the row does not use, or clips away, gives the
finite result diffusers gives, not 0 * inf = NaN.

Implementations: the reference below, a Triton kernel (``kernels/sampling_step.py``), a CUDA kernel
(``csrc/sampling_step.cu``) and a C++/OpenMP CPU kernel (``csrc/cpu/sampling_step.cpp``; it folds
eps into the row once per sample, out = (OX + OE EX) x + OE EM m + (O0 + OE E0) x0 + ..., which
equals the stepwise form up to float32 rounding and skips x0 where nothing reads it). The
kernels read sample, model_output and noise in the sample's dtype and each history tensor in the
sample's dtype or float32; :func:`sampling_step` converts other dtypes first.
"""
from __future__ import annotations

import torch

from .. import _impl, _layout, _native, _rng, _validate
from .._cpu_signatures import DTYPE_CODES, call, ptr

IMPLS = ("triton", "cuda", "cpu", "reference")

# Columns of a coefficient row.
PX, PM, EX, EM, E0, OX, O0, OE, H1, H2, H3, H4, SZ, SX, S0, SE = range(16)
NUM_COEFS = 16
MAX_HISTORY = 4
HISTORY_COLUMNS = (H1, H2, H3, H4)


def sampling_step_ref(sample: torch.Tensor, model_output: torch.Tensor, coefs: torch.Tensor, index: torch.Tensor,
                      history=(), noise: torch.Tensor | None = None, rng: torch.Tensor | None = None,
                      clip_range: float | None = None, return_state: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch step. sample, model_output: (B, ...) float; coefs: float32 (N, NUM_COEFS);
    index: int64 (B,); history: up to 4 float tensors (B, ...) or None (slot i absent: zero);
    noise: (B, ...) or None; rng: int64 [seed, offset] or None. Returns (x_{t-1} in sample's dtype,
    state in float32 (float64 for float64 samples) or an empty tensor)."""
    if len(history) > MAX_HISTORY:
        raise ValueError(f"history holds at most {MAX_HISTORY} tensors, got {len(history)}")
    acc = torch.promote_types(sample.dtype, torch.float32)
    c = coefs[index.clamp(0, coefs.shape[0] - 1)].to(acc)  # (B, NUM_COEFS)

    def col(k):
        return _layout.per_sample(c[:, k], sample)

    def term(k, v):  # a zero coefficient contributes exactly 0, even for an infinite or NaN operand
        ck = col(k)
        return torch.where(ck != 0, ck * v, 0.0)

    x, m = sample.to(acc), model_output.to(acc)
    x0 = term(PX, x) + term(PM, m)
    if clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    eps = term(EX, x) + term(EM, m) + term(E0, x0)
    out = term(OX, x) + term(O0, x0) + term(OE, eps)
    for k, h in zip(HISTORY_COLUMNS, history):
        if h is not None:
            out = out + term(k, h.to(acc))
    if noise is None and rng is not None:
        noise = _layout.flat_as(_rng.philox_normal_ref(rng, sample.numel()), sample)
    if noise is not None:
        sz = col(SZ)
        # rows with SZ == 0 ignore z entirely, as the kernels do (0 * NaN would be NaN)
        out = out + sz * noise.to(acc).masked_fill(sz == 0, 0.0)
    if return_state:
        state = term(SX, x) + term(S0, x0) + term(SE, eps)
    else:
        state = sample.new_empty(0, dtype=acc)
    return out.to(sample.dtype), state


def _sampling_step_impl(sample: torch.Tensor, model_output: torch.Tensor, coefs: torch.Tensor, index: torch.Tensor,
                      h1: torch.Tensor | None, h2: torch.Tensor | None, h3: torch.Tensor | None,
                      h4: torch.Tensor | None, noise: torch.Tensor | None, rng: torch.Tensor | None,
                      clip_range: float | None, return_state: bool, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    history = (h1, h2, h3, h4)
    if impl == "reference":
        out, state = sampling_step_ref(sample, model_output, coefs, index, history, noise, rng, clip_range,
                                       return_state)
        return out, state
    out = _layout.new_output(sample)
    state = _layout.new_output(sample, torch.float32) if return_state else sample.new_empty(0, dtype=torch.float32)
    if out.numel() == 0:
        return out, state
    state_arg = state if return_state else None
    if impl == "triton":
        from fastgen.kernels import sampling_step as kernel

        kernel.sampling_step(sample, model_output, history, noise, index, coefs, rng, clip_range, out, state_arg)
    elif impl == "cuda":
        _native.cuda_ext().sampling_step(sample, model_output, *history, noise, out, state_arg, index, coefs, rng,
                                         clip_range)
    elif impl == "cpu":
        batch = sample.shape[0]
        # a one-element index (0-d from the fast path, or expanded) is read with stride 0
        call(_native.cpu_lib(), "fastgen_sampling_step_cpu", DTYPE_CODES[sample.dtype], sample.data_ptr(),
             model_output.data_ptr(), *[None if h is None else h.data_ptr() for h in history],
             *[0 if h is None else DTYPE_CODES[h.dtype] for h in history], ptr(noise), out.data_ptr(),
             ptr(state_arg), index.data_ptr(), 0 if index.numel() == 1 else index.stride(0), coefs.data_ptr(),
             coefs.shape[0], ptr(rng), float("inf") if clip_range is None else clip_range, batch,
             sample.numel() // batch)
    else:
        raise AssertionError(impl)
    return out, state


_sampling_step_op = torch.library.custom_op("fastgen::sampling_step", mutates_args=())(_sampling_step_impl)


def _plain_eager(*tensors) -> bool:
    """Whether a call may skip the torch.library dispatcher and run the implementation directly:
    eager (not traced), no autograd to record, plain tensors (no subclass, no dispatch mode, no
    meta). The custom op is what torch.compile, autograd and fake tensors see; in a plain eager
    sampling loop its dispatch (~14 us a call on a CPU, measured) is pure overhead per step."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    grad = torch.is_grad_enabled()
    return all(t is None or (type(t) is torch.Tensor and t.device.type != "meta" and not (grad and t.requires_grad))
               for t in tensors)


@_sampling_step_op.register_fake
def _(sample, model_output, coefs, index, h1, h2, h3, h4, noise, rng, clip_range, return_state, impl):
    acc = torch.promote_types(sample.dtype, torch.float32)  # float64 samples keep a float64 state, as the reference
    state = torch.empty_like(sample, dtype=acc) if return_state else sample.new_empty(0, dtype=acc)
    return torch.empty_like(sample), state


def _setup_context(ctx, inputs, output):
    sample, model_output, coefs, index, h1, h2, h3, h4, noise, rng, clip_range, return_state, impl = inputs
    ctx.save_for_backward(sample, model_output, coefs, index, h1, h2, h3, h4, noise, rng)
    ctx.clip_range = clip_range


def _backward(ctx, grad_out, grad_state):
    # The step is affine up to the clamp, so the reference's vector-Jacobian product is exact and
    # cheap; computed with torch ops it is itself differentiable (guidance through a sampler).
    sample, model_output, coefs, index, h1, h2, h3, h4, noise, rng = ctx.saved_tensors
    inputs = (sample, model_output, h1, h2, h3, h4, noise)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in inputs if t is not None]
        it = iter(leaves)
        args = [next(it) if t is not None else None for t in inputs]
        out, state = sampling_step_ref(args[0], args[1], coefs, index, args[2:6], args[6], rng, ctx.clip_range,
                                       return_state=grad_state is not None and grad_state.numel() > 0)
        outputs, grads = [out], [grad_out]
        if state.numel() > 0:
            outputs.append(state)
            grads.append(grad_state)
        got = iter(torch.autograd.grad(outputs, leaves, grads, allow_unused=True,
                                       create_graph=torch.is_grad_enabled()))
    g = [next(got) if t is not None else None for t in inputs]
    return g[0], g[1], None, None, g[2], g[3], g[4], g[5], g[6], None, None, None, None


_sampling_step_op.register_autograd(_backward, setup_context=_setup_context)


_KERNEL_DTYPES = frozenset(_impl.KERNEL_DTYPES)
_RESOLVED: dict = {}  # (impl, process default, device, dtype) -> what _impl.resolve chose (constant per process)


def _fast_path(sample, model_output, coefs, index, history, noise, generator, seed, clip_range, return_state,
               impl) -> str | None:
    """The implementation to run directly when a call needs none of :func:`sampling_step`'s
    conversions and its checks reduce to attribute reads (a scheduler's step: contiguous tensors
    of one shape, dtype and device, a valid table and an int64 device index); None otherwise, and
    the full path validates (and raises) as always. Eager only: under torch.compile, autograd or
    a dispatch mode the custom op is what must be seen. Measured on the 2-core CPU at 1x1x2x2
    (20th percentile of 50-step loops): Euler's step 46 -> 24 us, DDIM's 54 -> 30 us, with the
    per-row index views cached by the schedulers."""
    if (type(sample) is not torch.Tensor or type(model_output) is not torch.Tensor or type(coefs) is not torch.Tensor
            or type(index) is not torch.Tensor or type(impl) is not str or generator is not None
            or not isinstance(history, (tuple, list))
            or len(history) > MAX_HISTORY or type(return_state) is not bool
            or not (clip_range is None or (type(clip_range) in (int, float) and clip_range > 0))):
        return None
    dtype, device, shape = sample.dtype, sample.device, sample.shape
    if (dtype not in _KERNEL_DTYPES or device.type not in ("cpu", "cuda") or sample.dim() == 0
            or not sample.is_contiguous() or model_output.dtype != dtype or model_output.shape != shape
            or model_output.device != device
            or not model_output.is_contiguous()):
        return None
    if (coefs.dtype != torch.float32 or coefs.dim() != 2 or coefs.shape[1] != NUM_COEFS or coefs.shape[0] == 0
            or coefs.device != device or not coefs.is_contiguous()):
        return None
    if (index.dtype != torch.int64 or index.device != device or index.dim() > 1
            or (index.dim() == 1 and index.shape[0] not in (1, shape[0]))):
        return None
    for h in history:
        if h is not None and (type(h) is not torch.Tensor or h.dtype not in (dtype, torch.float32) or h.shape != shape
                              or h.device != device or not h.is_contiguous()):
            return None
    if noise is not None:
        if (type(noise) is not torch.Tensor or seed is not None or noise.dtype != dtype or noise.shape != shape
                or noise.device != device or not noise.is_contiguous()):
            return None
    elif seed is not None and (type(seed) is not torch.Tensor or seed.dtype != torch.int64 or seed.shape != (2,)
                               or seed.device != device or not seed.is_contiguous()):
        return None
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return None
    if torch.is_grad_enabled() and (sample.requires_grad or model_output.requires_grad
                                    or any(h is not None and h.requires_grad for h in history)
                                    or (noise is not None and noise.requires_grad)):
        return None
    n = index.numel()
    if n == 0:
        return None
    if device.type == "cpu":  # range-checked where that costs no synchronisation, as check_timesteps does
        lo, hi = (int(index), int(index)) if n == 1 else (int(index.min()), int(index.max()))
        if lo < 0 or hi >= coefs.shape[0]:
            return None  # the full path says what is wrong
    key = (impl, _impl.get_impl(), device, dtype)
    chosen = _RESOLVED.get(key)
    if chosen is None:
        chosen = _RESOLVED[key] = _impl.resolve("sampling_step", impl, device, IMPLS, dtype)
    return None if chosen == "reference" else chosen


def sampling_step(sample: torch.Tensor, model_output: torch.Tensor, coefs: torch.Tensor, index, *,
                  history=(), noise: torch.Tensor | None = None, generator=None, seed=None,
                  clip_range: float | None = None, return_state: bool = False,
                  impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """One fused reverse-diffusion step (see the module docstring for the math).

    Args:
        sample: x_t, (B, ...) float32 / float16 / bfloat16 (float64 runs the reference); any
            dense batch-major layout (NCHW, channels_last). The output keeps dtype and layout.
        model_output: the network's output for x_t, x_t's shape, on its device. The kernels read
            it (and noise) in the sample's dtype, so another dtype is converted first.
        coefs: float32 (N, NUM_COEFS) coefficient table on the device.
        index: which row of ``coefs`` each sample uses: an int, or an integer tensor of shape
            () / (1,) / (B,) on the device (a device tensor costs no host synchronisation).
        history: a tuple / list of 0..4 tensors (h1..h4 of the formula), each x_t's shape, in the
            sample's dtype or float32 (other dtypes are converted to float32); a None entry or a
            slot past the end is zero and is never read.
        noise: z, x_t's shape. Else drawn from ``generator`` exactly as diffusers' randn_tensor
            draws it (shape and dtype of model_output), else Philox noise from ``seed`` (int or
            an int64 state tensor [seed, offset] on the device), else z = 0.
        clip_range: clamp x0 into [-clip_range, clip_range] (diffusers' clip_sample).
        return_state: also return state = SX x + S0 x0 + SE eps (float32); otherwise the second
            result is None.
        impl: "auto", "triton", "cuda", "cpu" or "reference".

    Returns (x_{t-1}, state or None).
    """
    fast = _fast_path(sample, model_output, coefs, index, history, noise, generator, seed, clip_range, return_state,
                      impl)
    if fast is not None:
        slots = (tuple(history) + (None,) * MAX_HISTORY)[:MAX_HISTORY]
        if fast != "cpu" and (index.dim() == 0 or index.shape[0] != sample.shape[0]):  # the kernels' (B,) index
            index = index.reshape(-1).expand(sample.shape[0])
        out, state = _sampling_step_impl(sample, model_output, coefs, index, *slots, noise, seed,
                                         None if clip_range is None else float(clip_range), return_state, fast)
        return out, (state if return_state else None)
    sample = _validate.check_floating("sample", sample)
    model_output = _validate.check_like("model_output", model_output, "sample", sample)
    coefs = _validate.check_tensor("coefs", coefs)
    if coefs.dim() != 2 or coefs.shape[1] != NUM_COEFS or coefs.dtype != torch.float32 or coefs.shape[0] == 0:
        raise ValueError(f"coefs must be a float32 table of shape (N, {NUM_COEFS}), got {coefs.dtype} {tuple(coefs.shape)}")
    _validate.check_same_device("coefs", coefs, "sample", sample)
    index = _validate.check_timesteps("index", index, sample.shape[0], coefs.shape[0], sample.device)
    if clip_range is not None and (isinstance(clip_range, bool) or not isinstance(clip_range, (int, float))):
        raise TypeError(f"clip_range must be a positive number or None, got {type(clip_range).__name__}")
    if clip_range is not None and not clip_range > 0:
        raise ValueError(f"clip_range must be a positive number or None, got {clip_range}")
    if isinstance(history, torch.Tensor) or not isinstance(history, (tuple, list)):
        raise TypeError(f"history must be a tuple or list of 0..{MAX_HISTORY} tensors, got {type(history).__name__}")
    names = [f"history[{i}]" for i in range(len(history))]
    if len(history) > MAX_HISTORY:
        raise ValueError(f"history must hold at most {MAX_HISTORY} tensors (columns H1..H4), got {len(history)}")
    return_state = bool(return_state)
    sample = _layout.batch_major(sample)
    model_output = _layout.match_layout(model_output, sample)
    slots = [None] * MAX_HISTORY
    for i, (name, h) in enumerate(zip(names, history)):
        if h is not None:
            slots[i] = _layout.match_layout(_validate.check_like(name, h, "sample", sample), sample)
    if noise is None and generator is not None:
        noise = _rng.randn_like_diffusers(model_output.shape, generator, sample.device, model_output.dtype)
    rng = None
    if noise is not None:
        if seed is not None:
            raise ValueError("seed must be None when noise or generator is given: z comes from exactly one source")
        noise = _layout.match_layout(_validate.check_like("noise", noise, "sample", sample), sample)
    else:
        rng = _validate.check_seed("seed", seed, sample.device)
    chosen = _impl.resolve("sampling_step", impl, sample.device, IMPLS, sample.dtype)
    if chosen != "reference":
        # The kernels read every operand in the sample's dtype, except history which may stay float32.
        model_output = model_output.to(sample.dtype)
        noise = None if noise is None else noise.to(sample.dtype)
        slots = [h if h is None or h.dtype in (sample.dtype, torch.float32) else h.to(torch.float32) for h in slots]
    op = _sampling_step_impl if _plain_eager(sample, model_output, *slots, noise) else _sampling_step_op
    out, state = op(sample, model_output, coefs.contiguous(), index, *slots, noise, rng,
                    None if clip_range is None else float(clip_range), return_state, chosen)
    return out, (state if return_state else None)
