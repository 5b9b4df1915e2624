"""Scheduler ``step`` loops: fastgen.diffusion's DDPM / DDIM / DPM-Solver++ 2M vs diffusers' class
of the same name and default configuration; each round is FASTGEN_BENCH_STEPS (50) steps with a
fixed fake model output, set_timesteps included (divide by the step count for a step's time)."""
import pytest
from _suite import STEPS, run_entry

from fastgen import cli


@pytest.fixture(scope="module")
def comparisons(case):
    return {c.group.split(".")[0]: c for c in cli.scheduler_loops(case, STEPS, {})}


@pytest.mark.parametrize("scheduler", cli.SCHEDULERS)
@pytest.mark.parametrize("impl", ["diffusers", "fastgen"])
def test_scheduler_loop(benchmark, comparisons, scheduler, impl):
    run_entry(benchmark, comparisons[scheduler], impl)
