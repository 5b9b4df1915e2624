"""Writing files so that nothing is ever half-written, and the progress bars of long loops."""
from __future__ import annotations

import errno
import os
import re
import tempfile
import time
from typing import Callable, IO

# A temp file of atomic_write older than this is left over from a killed writer: a live one
# touches its temp file as it writes, and no checkpoint takes this long to serialise.
STALE_TEMP_SECONDS = 600.0
_TEMP_PREFIX = ".tmp-"
_TEMP_RANDOM = "[a-z0-9_]{8}"  # tempfile.mkstemp's random part: 8 of these characters


def _remove_stale_temps(directory: str, basename: str) -> None:
    """Delete the temp files of :func:`atomic_write` for ``basename`` (``.tmp-XXXXXXXX<basename>``)
    that have not been modified for STALE_TEMP_SECONDS; no other file is touched."""
    pattern = re.compile(re.escape(_TEMP_PREFIX) + _TEMP_RANDOM + re.escape(basename))
    cutoff = time.time() - STALE_TEMP_SECONDS
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not pattern.fullmatch(name):
            continue
        try:
            tmp = os.path.join(directory, name)
            if os.path.isfile(tmp) and not os.path.islink(tmp) and os.path.getmtime(tmp) < cutoff:
                os.unlink(tmp)
        except OSError:
            pass  # gone meanwhile, or not ours to delete: the write itself does not depend on it


def _fsync_directory(directory: str) -> None:
    """Make a rename inside ``directory`` durable; a no-op where directories cannot be opened (Windows)
    or their file system does not sync them."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[IO[bytes]], object], *, durable: bool = True,
                 clean_stale: bool = True) -> None:
    """Call ``write(binary_file)`` on a temp file beside ``path``, then rename it over ``path`` and
    fsync the folder: readers see the old file or the whole new one, never a part (the temp file goes
    on failure). Temp files of ``path`` left by killed writers (untouched for 10 minutes) are removed first.

    ``durable=False`` skips the two fsyncs: a killed process still leaves the old file or the whole new
    one (the rename is atomic), only a power failure might not. ``clean_stale=False`` skips the folder
    scan for stale temp files: for writers of many files into one folder (``fastgen generate``), which
    call :func:`remove_stale_temps` once instead of listing the folder for every file."""
    directory = os.path.dirname(os.path.abspath(path))
    basename = os.path.basename(path)
    os.makedirs(directory, exist_ok=True)
    if clean_stale:
        _remove_stale_temps(directory, basename)
    fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=basename, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if durable:
        _fsync_directory(directory)


def is_temp_name(name: str) -> bool:
    """Whether the file name ``name`` is a temp file of :func:`atomic_write` (of any target)."""
    return re.fullmatch(re.escape(_TEMP_PREFIX) + _TEMP_RANDOM + r".+", name) is not None


def remove_stale_temps(directory: str, max_age_s: float = STALE_TEMP_SECONDS) -> int:
    """Delete every temp file of :func:`atomic_write` in ``directory`` (not below it) untouched for
    ``max_age_s`` seconds (0: all of them, for a caller that knows no writer is live); returns how many."""
    cutoff = time.time() - max_age_s
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        if not is_temp_name(name):
            continue
        tmp = os.path.join(directory, name)
        try:
            if os.path.isfile(tmp) and not os.path.islink(tmp) and os.path.getmtime(tmp) <= cutoff:
                os.unlink(tmp)
                removed += 1
        except OSError:
            pass  # gone meanwhile
    return removed


def check_writable(path: str, name: str) -> None:
    """Raise a ValueError naming ``name`` unless :func:`atomic_write` can create files beside ``path``:
    its folder exists or can be created, and a file can be created (and is removed) there."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{name}={path!r} is a folder; pass the path of a file in it")
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ValueError(f"{name}={path!r} cannot be written: {exc}") from exc


def atomic_write_text(path: str, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def progress_bar(enabled: bool, total: int, desc: str):
    """A tqdm bar of ``total`` steps, or None when ``enabled`` is False."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc)
