"""Every Triton kernel launch of the ops compiles for an H100 (sm_90) without a GPU, within the
SM's shared memory and without register spills: benchmarks/triton_compile_report.py --quick, run
in a subprocess because this test process interprets Triton (TRITON_INTERPRET=1) and the report
needs the real compiler."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "benchmarks", "triton_compile_report.py")


def _ptxas_missing() -> str | None:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(90).path
    except Exception as exc:  # no NVIDIA backend in this triton build
        return f"triton's NVIDIA backend is unavailable: {exc}"
    return None if os.path.exists(path) else f"triton's ptxas is missing ({path})"


PTXAS_MISSING = _ptxas_missing()


@pytest.mark.skipif(PTXAS_MISSING is not None, reason=str(PTXAS_MISSING))
def test_every_triton_launch_compiles_for_sm90_within_limits(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from a cache
    done = subprocess.run([sys.executable, REPORT, "--quick", "--arch", "90", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    table = done.stdout[-6000:]
    assert done.returncode == 0, f"some launches failed to compile or exceed limits:\n{table}\n{done.stderr[-3000:]}"
    rows = json.load(open(tmp_path / "triton_compile_sm90_quick.json"))["rows"]
    kernels = {r["kernel"] for r in rows}
    # the report must have found every kernel family, or it checked less than it claims
    for name in ("_add_noise_kernel", "_loss_forward_kernel", "_loss_backward_kernel", "_sampling_step_kernel",
                 "_interpolate_kernel", "_sum_of_squares_kernel", "_scale_kernel", "_group_norm_fwd_kernel",
                 "_group_norm_bwd_kernel", "_fwd_kernel", "_bwd_delta_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"):
        assert name in kernels, f"{name} was never launched by the report's cases"
    assert all(r["ok"] and r["registers"] for r in rows)
