"""Seeds: parsing ``--seeds`` and splitting the work over processes.

A seed list is text like ``0-49999`` or ``0-9,100,200-299``: ranges are inclusive (EDM's
``generate.py`` convention), parts are separated by commas, and no seed may appear twice.

Work is split into *units*, each written as one output: a single seed for PNG output, a block of
seeds for npz output (:func:`npz_units`). Rank 0 lists the units not yet on disk and the ranks deal
them round-robin, ``todo[rank::world]``: each unit belongs to exactly one rank, so nothing is written
twice, and which rank computes a seed never changes its image (the noise comes from the seed alone).
"""
from __future__ import annotations

import re

__all__ = ["MAX_SEED", "parse_seeds", "format_seeds", "npz_units", "rank_units"]

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes any int64; seeds are non-negative
_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_seeds(text: str, name: str = "--seeds") -> list[int]:
    """The seeds of ``text`` in ascending order. Raises ValueError naming ``name`` for a malformed part,
    a decreasing range, a seed above MAX_SEED or a seed given twice (overlapping ranges)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{name} must be a seed list like '0-49999' or '0-9,100,200-299', got {text!r}")
    ranges = []
    for part in text.split(","):
        m = _PART.match(part)
        if m is None:
            raise ValueError(f"{name}: {part.strip()!r} is not a seed or an inclusive range a-b of non-negative "
                             f"integers (in {text!r})")
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else int(m.group(2))
        if hi < lo:
            raise ValueError(f"{name}: range {part.strip()!r} ends before it starts")
        if hi > MAX_SEED:
            raise ValueError(f"{name}: seed {hi} is out of range [0, {MAX_SEED}]")
        ranges.append((lo, hi, part.strip()))
    ranges.sort()
    for (lo0, hi0, p0), (lo1, hi1, p1) in zip(ranges, ranges[1:]):
        if lo1 <= hi0:
            raise ValueError(f"{name}: {p0!r} and {p1!r} overlap (seed {lo1} is given twice); every seed must "
                             "appear once")
    total = sum(hi - lo + 1 for lo, hi, _ in ranges)
    if total > 10**9:
        raise ValueError(f"{name}: {total} seeds is more than one run can list (at most 10**9)")
    return [s for lo, hi, _ in ranges for s in range(lo, hi + 1)]


def format_seeds(seeds: list[int]) -> str:
    """The shortest ``a-b,c`` text of sorted unique ``seeds`` (the inverse of :func:`parse_seeds`)."""
    parts, i = [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)


def npz_units(seeds: list[int], shard_size: int) -> list[list[int]]:
    """The seeds grouped by block ``seed // shard_size`` (one npz file per non-empty block): blocks of
    absolute seed ranges, so the file a seed lands in never depends on the rest of the seed list."""
    units: dict[int, list[int]] = {}
    for s in seeds:
        units.setdefault(s // shard_size, []).append(s)
    return [units[k] for k in sorted(units)]


def rank_units(units: list, rank: int, world_size: int) -> list:
    """The units of ``rank`` out of ``world_size``: every ``world_size``-th one from ``rank`` (round-robin
    keeps the ranks' shares within one unit of each other)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
    return units[rank::world_size]
