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
