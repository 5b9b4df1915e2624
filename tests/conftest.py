"""Test tiers (DESIGN.md): CPU reference + API always; Triton kernels under TRITON_INTERPRET=1 on
CPU; everything on CUDA where a GPU is present. The environment is set before anything imports
triton."""
import os

os.environ.setdefault("FASTGEN_POISON_OUTPUTS", "1")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small tensors (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a shared 2-core machine OpenMP's waiting threads made such files ~10x slower with 2; the
    previous setting comes back afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _check_interpreter_numpy() -> None:
    """triton < 3.7's interpreter turns one-element arrays into Python ints with int(array), which
    numpy >= 2.4 refuses: every kernel with a runtime loop bound would fail with a TypeError that
    names neither. Say so once, up front (.ci/run's triton-3.6 step pins numpy < 2.4)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        import numpy
        import triton
    except ImportError:
        return
    version = lambda text: tuple(int(p) for p in text.split(".")[:2] if p.isdigit())  # noqa: E731
    if version(triton.__version__) < (3, 7) and version(numpy.__version__) >= (2, 4):
        pytest.exit(f"triton {triton.__version__}'s interpreter needs numpy < 2.4 (found {numpy.__version__}): "
                    "pip install 'numpy<2.4', or a newer triton", returncode=4)


def pytest_configure(config):
    _check_interpreter_numpy()
    # diffusers 0.42's schedulers trip NumPy 2's deprecations (np.array(tensor, copy=False), __array_wrap__)
    # tens of thousands of times in the parity sweeps; they are diffusers', not ours
    for message in ("__array__ implementation doesn't accept a copy keyword", "__array_wrap__ must accept context"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}:DeprecationWarning")
