"""Gradient-penalty ops on a gradient of the batch's shape: fastgen per implementation vs eager torch
and torch.compile (the interpolation; the penalty from the gradient, forward + backward)."""
import pytest
from _suite import DEVICE, SHAPE, run_entry
from run_gan_d_step import penalty_ops

from fastgen.ops.gradient_penalty import IMPLS

NAMES = ["eager", "torch.compile"] + [f"fastgen[{i}]" for i in IMPLS]


@pytest.fixture(scope="module")
def comparisons():
    return penalty_ops(DEVICE, SHAPE, {})


@pytest.mark.parametrize("which", [0, 1], ids=["interpolate", "penalty_fwd_bwd"])
@pytest.mark.parametrize("impl", NAMES)
def test_gradient_penalty_ops(benchmark, comparisons, which, impl):
    run_entry(benchmark, comparisons[which], impl)
