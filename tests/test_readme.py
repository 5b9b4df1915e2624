"""Every ```python block of README.md runs, each in a fresh interpreter, so an example cannot rot."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def _first_line(block: str) -> str:
    return next((line for line in block.splitlines() if line.strip() and not line.startswith("#")), "")[:60]


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{i}:{_first_line(b)}" for i, b in enumerate(BLOCKS)])
def test_readme_block_runs(block, tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"README block failed:\n{block}\n--- stderr ---\n{result.stderr[-4000:]}"
