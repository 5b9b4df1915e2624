"""The raw fused step ``fastgen.ops.sampling_step`` per implementation vs the eager torch chain of
the same update (DDIM eta=0; DDPM with clipping) and torch.compile of it. The DDPM rows compare
like with like: z from torch.randn on every side; ``fastgen[<impl>]+philox`` draws z in the kernel
instead (another generator), and ``torch.randn alone`` times the generator by itself."""
import pytest
from _suite import STEPS, run_entry

from fastgen import cli
from fastgen.ops.sampling_step import IMPLS

NAMES = (["eager", "torch.compile", "torch.randn alone"] + [f"fastgen[{i}]" for i in IMPLS]
         + [f"fastgen[{i}]+philox" for i in IMPLS])
KINDS = ["ddim", "ddpm"]


@pytest.fixture(scope="module")
def comparisons(case):
    ddim, ddpm = cli.sampling_ops(case, STEPS, {}, compile_=True)
    return {"ddim": ddim, "ddpm": ddpm}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("impl", NAMES)
def test_sampling_step(benchmark, comparisons, kind, impl):
    run_entry(benchmark, comparisons[kind], impl)
