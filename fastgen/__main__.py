"""``python -m fastgen ...`` is the ``fastgen`` command (fastgen/cli.py)."""
import sys

from .cli import main

sys.exit(main())
