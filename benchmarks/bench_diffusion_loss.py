"""The training objective without a model: noising + MSE against eps, forward and backward w.r.t.
the prediction. fastgen (add_noise + diffusion_loss, eps regenerated from the Philox seed) per
implementation vs eager torch and torch.compile of the same math."""
import importlib

import pytest
from _suite import run_entry

from fastgen import cli

try:
    IMPLS = importlib.import_module("fastgen.ops.diffusion_loss").IMPLS
except ImportError:  # the op is not there yet: the run_entry skip says so
    IMPLS = ("cpu", "triton", "cuda", "reference")
NAMES = ["eager", "torch.compile", "fastgen"] + [f"fastgen[{i}]" for i in IMPLS]


@pytest.fixture(scope="module")
def comparison(case):
    return cli.noising_loss(case, {}, compile_=True)


@pytest.mark.parametrize("impl", NAMES)
def test_noising_loss(benchmark, comparison, impl):
    run_entry(benchmark, comparison, impl)
