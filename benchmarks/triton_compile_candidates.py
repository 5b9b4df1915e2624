"""The cases of ``triton_compile_report.py --candidates``: every tile candidate of kernels/tuning.py,
launched through the public ops under ``tuning.forced`` so that what is compiled is exactly what a
table entry or autotuning would launch.

Per family, float32 and bfloat16, at the sizes that select the candidates:

* elementwise: 2 x 3 x 32 x 32 (3072 elements per sample: every candidate BLOCK applies) through
  every elementwise kernel, with the most operands each takes (in-kernel Philox,
  v-prediction, four history tensors and the state); bias_act in its rows (inner 4096) and flat
  (8192 elements) launches;
* group_norm / group_norm_cl: the streaming NCHW group (2 x 320 x 64 x 64, 10 x 4096 elements per
  group), a single-tile one (2 x 128 x 32 x 32) and channels_last;
* attention: head dims 32, 64, 128, 256 (every entry of attention._TILES), forward and backward;
* vq_nearest: D = 64 (one D slice) and D = 129 (the D loop).

:func:`check_forced` then proves that each candidate was launched with its config (a launcher that
ignored tuning.choose would otherwise pass here while compiling only its default).
"""
import itertools

import torch

from fastgen import ops
from fastgen.kernels import tuning

DTYPES = (torch.float32, torch.bfloat16)
# kernel function names per tuning kernel, and the constexprs a config sets there (name in the
# config -> name in the kernel); num_warps is checked on every launch.
_ELEMENTWISE_FNS = ("_add_noise_kernel", "_loss_forward_kernel", "_loss_backward_kernel", "_sampling_step_kernel",
                    "_interpolate_kernel", "_sum_of_squares_kernel", "_scale_kernel", "_bias_act_fwd_kernel",
                    "_bias_act_bwd_kernel")
_FIELDS = {
    "elementwise": {fn: {"BLOCK": "BLOCK"} for fn in _ELEMENTWISE_FNS},
    "attention_forward": {"_fwd_kernel": {"BLOCK_M": "BLOCK_M", "BLOCK_N": "BLOCK_N"}},
    # the dK/dV pass swaps the roles of M and N (kernels/attention.py)
    "attention_backward": {"_bwd_delta_kernel": {"BLOCK_M": "BLOCK_M"},
                           "_bwd_dkdv_kernel": {"BLOCK_M": "BLOCK_N", "BLOCK_N": "BLOCK_M"},
                           "_bwd_dq_kernel": {"BLOCK_M": "BLOCK_M", "BLOCK_N": "BLOCK_N"}},
    "vq_nearest": {"_vq_nearest_kernel": {"BLOCK_N": "BLOCK_N", "BLOCK_K": "BLOCK_K", "BLOCK_D": "BLOCK_D"}},
    "group_norm": {"_group_norm_fwd_kernel": {}, "_group_norm_bwd_kernel": {}},
    "group_norm_cl": {"_group_norm_cl_fwd_kernel": {}, "_group_norm_cl_bwd_kernel": {}},
}
# group_norm forward and backward have different default warps; one forced config serves both here
EXPECTED: list[tuple[str, str, dict]] = []  # (case label, kernel fn name, {constexpr or num_warps: value})


def _union(configs) -> list[dict]:
    out = []
    for c in configs:
        if c not in out:
            out.append(c)
    return out


def _expect(label: str, family_key: str, config: dict) -> None:
    for fn, names in _FIELDS[family_key].items():
        want = {kernel_name: config[ours] for ours, kernel_name in names.items()}
        EXPECTED.append((label, fn, dict(want, num_warps=config["num_warps"])))


def _elementwise(dtype):
    x = torch.randn(2, 3, 32, 32).to(dtype)
    abar, t = torch.linspace(0.999, 0.01, 1000), torch.randint(0, 1000, (2,))
    coefs, index = torch.rand(10, ops.NUM_COEFS), torch.randint(0, 10, (2,))
    history = tuple(torch.randn_like(x, dtype=torch.float32 if i % 2 else dtype) for i in range(4))
    ops.add_noise(x, t, abar, seed=1, impl="triton")
    ops.add_noise(x, t, abar, torch.randn_like(x), impl="triton")
    for prediction in ("epsilon", "v_prediction"):
        pred, x0 = torch.randn_like(x, requires_grad=True), x.clone().requires_grad_(True)
        ops.diffusion_loss(pred, x0, t, abar, seed=3, prediction_type=prediction, impl="triton").backward()
    ops.sampling_step(x, torch.randn_like(x), coefs, index, history=history, seed=3, clip_range=1.0,
                      return_state=True, impl="triton")
    ops.interpolate(x, torch.randn_like(x), seed=5, impl="triton")
    g = torch.randn_like(x, requires_grad=True)
    ops.penalty_from_grad(g, "wgan-gp", 10.0, impl="triton").backward()
    for shape in ((2, 8, 64, 64), (16, 512)):  # rows launch (inner 4096), flat launch (8192 elements)
        xb = torch.randn(shape).to(dtype).requires_grad_(True)
        b = torch.randn(shape[1]).to(dtype).requires_grad_(True)
        y = ops.bias_act(xb, b, 1, "swish", clamp=256.0, impl="triton")
        y.backward(torch.randn_like(y))


def _group_norm(dtype, channels_last: bool):
    for shape in ((2, 320, 64, 64), (2, 128, 32, 32)):
        x = torch.randn(shape).to(dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        B, C = shape[:2]
        xg = x.clone().requires_grad_(True)
        y = ops.group_norm(xg, 32, torch.randn(C, dtype=dtype), torch.randn(C, dtype=dtype),
                           emb=torch.randn(B, C).to(dtype), activation="silu", impl="triton")
        y.backward(torch.randn_like(y))


def _attention(dtype, head_dim):
    q, k, v = (torch.randn(2, 1, 256, head_dim).to(dtype).requires_grad_(True) for _ in range(3))
    out = ops.attention(q, k, v, impl="triton")
    out.backward(torch.randn_like(out))


def candidate_cases():
    """(label, thunk) pairs, one per candidate config (attention: one per forward / backward pair)."""
    EXPECTED.clear()
    for dtype in DTYPES:
        name = str(dtype).replace("torch.", "")
        configs = _union(c for kernel, f in tuning.KERNELS.items() if f is tuning.ELEMENTWISE
                         for c in tuning.candidates(kernel, dtype, 3072))
        for config in configs:
            label = f"candidate elementwise {name} " + " ".join(f"{k}={v}" for k, v in config.items())
            _expect(label, "elementwise", config)

            def run(config=config, dtype=dtype):
                with tuning.forced("elementwise", config):
                    _elementwise(dtype)
            yield label, run

        for family, channels_last in (("group_norm", False), ("group_norm_cl", True)):
            kernel = family + "_forward"
            configs = _union(c for size in (40960, 4096) for c in tuning.candidates(kernel, dtype, size))
            for config in configs:
                label = f"candidate {family} {name} " + " ".join(f"{k}={v}" for k, v in config.items())
                _expect(label, family, config)

                def run(config=config, dtype=dtype, family=family, channels_last=channels_last):
                    with tuning.forced(family, config):
                        _group_norm(dtype, channels_last)
                yield label, run

        for head_dim in (32, 64, 128, 256):
            fwd = tuning.candidates("attention_forward", dtype, head_dim)
            bwd = tuning.candidates("attention_backward", dtype, head_dim)
            for f, b in itertools.zip_longest(fwd, bwd):
                f, b = f or fwd[0], b or bwd[0]
                label = (f"candidate attention D{head_dim} {name} forward " + " ".join(f"{k}={v}" for k, v in f.items())
                         + " backward " + " ".join(f"{k}={v}" for k, v in b.items()))
                _expect(label, "attention_forward", f)
                _expect(label, "attention_backward", b)

                def run(f=f, b=b, dtype=dtype, head_dim=head_dim):
                    with tuning.forced("attention_forward", f), tuning.forced("attention_backward", b):
                        _attention(dtype, head_dim)
                yield label, run

        for dim in (64, 129):
            for config in tuning.candidates("vq_nearest", dtype, dim):
                label = f"candidate vq_nearest D{dim} {name} " + " ".join(f"{k}={v}" for k, v in config.items())
                _expect(label, "vq_nearest", config)

                def run(config=config, dtype=dtype, dim=dim):
                    with tuning.forced("vq_nearest", config):
                        ops.vq_nearest(torch.randn(300, dim).to(dtype), torch.randn(200, dim).to(dtype), impl="triton")
                yield label, run


def check_forced(launches) -> None:
    """Raise unless every expected (kernel, config) was launched: each forced candidate must reach
    the kernels with its tile and warps, or the report would prove the default only."""
    seen = {}
    for launch in launches:
        values = dict(launch.constexprs(), num_warps=launch.kwargs.get("num_warps", 4))
        seen.setdefault(launch.name, []).append(values)
    missing = [(label, fn, want) for label, fn, want in EXPECTED
               if not any(all(v.get(k) == x for k, x in want.items()) for v in seen.get(fn, []))]
    if missing:
        lines = "\n".join(f"  {fn} {want} (case {label})" for label, fn, want in missing[:20])
        raise SystemExit(f"{len(missing)} candidate launches never happened with their config "
                         f"(a launcher ignores kernels/tuning.py?):\n{lines}")
