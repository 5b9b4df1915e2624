"""Writing files so that nothing is ever half-written, and the progress bars of long loops."""
from __future__ import annotations

import os
import tempfile
from typing import Callable, IO


def atomic_write(path: str, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(binary_file)`` on a temp file beside ``path``, then rename it over ``path``:
    readers see the old file or the whole new one, never a part (the temp file goes on failure)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def progress_bar(enabled: bool, total: int, desc: str):
    """A tqdm bar of ``total`` steps, or None when ``enabled`` is False."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc)
