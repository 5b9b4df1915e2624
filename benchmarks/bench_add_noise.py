"""Noising x_t = sqrt(abar[t]) x0 + sqrt(1 - abar[t]) eps: fastgen per implementation (eps given;
eps from in-kernel Philox) vs eager torch, torch.compile and diffusers' DDPMScheduler.add_noise."""
import pytest
from _suite import run_entry

from fastgen import cli
from fastgen.ops.add_noise import IMPLS

NAMES = ["eager", "torch.compile", "diffusers"] + [f"fastgen[{i}]{s}" for i in IMPLS for s in ("", "+philox")]


@pytest.fixture(scope="module")
def comparison(case):
    return cli.noising(case, {}, compile_=True)


@pytest.mark.parametrize("impl", NAMES)
def test_add_noise(benchmark, comparison, impl):
    run_entry(benchmark, comparison, impl)
