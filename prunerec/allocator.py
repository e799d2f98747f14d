"""Keep freed memory in the process instead of handing it back to the operating system.

A beam step allocates its logits and log-probabilities afresh (rows x vocabulary floats: 5 MB
for 160 rows of an 8,192-token vocabulary, 97 MB with Qwen2's), and glibc serves such sizes
with mmap, or trims them from the heap when freed, so every step touches fresh pages and pays a
page fault for each 4 KB. On the pruned Games model (2 cores, batches of 8 users) a search
took ~3,200-8,000 page faults without this and ~0-150 with it, and served about a tenth more
recommendations per second (docs/results.md). The cost: the process keeps its peak heap size
instead of shrinking after a peak.

It keeps the peak of every malloc arena, and glibc gives threads their own arenas (up to 8 per
core), so the memory a threaded server keeps grows with the arenas it has used. The arenas are
capped at one per core to bound that. The vLLM server (an engine thread and a thread per request)
grew in steps of tens of MiB in 20-minute soaks; with the cap, one soak grew 2.1% instead of 5.5%
and 5.6%, with steps still there, so the steps are not shown to come from the arenas
(docs/results.md, "Soak").
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_MMAP_THRESHOLD = 32 << 20  # glibc's upper limit for this setting on 64-bit
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Allocations below 32 MiB come from the heap, the heap is not trimmed, and there is one
    arena per core (glibc only; elsewhere nothing changes). True when the settings took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others without mallopt
        return False
    arenas = max(1, len(os.sched_getaffinity(0)))
    return (bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
            and bool(mallopt(_M_ARENA_MAX, arenas)))
