"""pytest-benchmark suites of fastgen: ``pytest benchmarks/ --benchmark-only``.

Files named ``bench_*.py`` here are collected as test modules (pytest's default pattern is
``test_*.py``, so ``pytest tests`` never sees them); a script in this folder must therefore keep
its work under ``if __name__ == "__main__":``. Shared settings and helpers: ``_suite.py``.
"""
import pytest

from _suite import DEVICE, DTYPE, SHAPE
from fastgen import cli


def pytest_collect_file(file_path, parent):
    # a file named on the command line is collected by pytest itself: collecting it here too would run it twice
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def case():
    return cli.DiffusionCase(SHAPE, DTYPE, DEVICE)
