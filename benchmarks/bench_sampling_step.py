"""The raw fused step ``fastgen.ops.sampling_step`` per implementation vs the eager torch chain of
the same update (DDIM eta=0; DDPM with clipping and noise drawn in the op) and torch.compile of it."""
import pytest
from _suite import STEPS, run_entry

from fastgen import cli
from fastgen.ops.sampling_step import IMPLS

NAMES = ["eager", "torch.compile"] + [f"fastgen[{i}]" for i in IMPLS]
KINDS = ["ddim", "ddpm"]


@pytest.fixture(scope="module")
def comparisons(case):
    ddim, ddpm = cli.sampling_ops(case, STEPS, {}, compile_=True)
    return {"ddim": ddim, "ddpm": ddpm}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("impl", NAMES)
def test_sampling_step(benchmark, comparisons, kind, impl):
    run_entry(benchmark, comparisons[kind], impl)
