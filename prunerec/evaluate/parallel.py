"""Independent batches spread over forked worker processes, one per usable core by default.

Beam search over a catalog trie is part model (parallel inside torch) and part Python
bookkeeping (one core); separate processes, each on its own share of the users, use every core
for both. Workers are forked, so they share the parent's model, trie and title embeddings
without copying or pickling them; only a batch's inputs and results cross the process boundary.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

_TASK: Callable[[Any], Any] | None = None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _run(item):
    return _TASK(item)


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def map_in_order(task: Callable[[Any], Any], items: Sequence, workers: int,
                 on_result: Callable[[Any, Any], None] | None = None) -> list:
    """``[task(item) for item in items]`` over up to ``workers`` forked processes (here when 1).

    Each worker gets an equal share of this process's torch threads (at least one).
    ``on_result(item, result)`` runs here, in order, as results arrive (progress bars).
    """
    global _TASK
    workers = min(workers, len(items))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        results = []
        for item in items:
            results.append(task(item))
            if on_result:
                on_result(item, results[-1])
        return results
    # a forked child must not inherit a tokenizer thread pool (tokenizers would warn and disable it)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = max(1, torch.get_num_threads() // workers)
    _TASK = task
    try:
        # an executor, not a Pool: a worker that dies (out of memory) fails the call instead of hanging it
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_start_worker, initargs=(threads,)) as pool:
            results = []
            for item, result in zip(items, pool.map(_run, items)):
                results.append(result)
                if on_result:
                    on_result(item, result)
            return results
    finally:
        _TASK = None
