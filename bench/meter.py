"""Wall time and peak memory of a block of code, for the benchmarks (bench/scoring_cost.py):
RSS sampled in a thread, the kernel's ru_maxrss where it rose inside the block (then exact), and
torch's CUDA peak where there is a GPU."""
from __future__ import annotations

import ctypes
import gc
import resource
import sys
import threading
import time

import psutil
import torch


def ru_maxrss_bytes() -> int:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib) * (1 if sys.platform == "darwin" else 1024)


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so that RSS rises measure the pass."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Meter:
    """Wall time and peak RSS (plus torch's CUDA peak where there is one) of a block."""

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval = device, interval
        self.proc = psutil.Process()

    def __enter__(self):
        release_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start_rss = self.peak = self.proc.memory_info().rss
        self.ru_before = ru_maxrss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            rss = self.proc.memory_info().rss
            if rss > self.peak:
                self.peak = rss

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        ru = ru_maxrss_bytes()
        self.ru_exact = ru > self.ru_before  # the process-wide maximum rose inside the block: exact peak
        if self.ru_exact:
            self.peak = max(self.peak, ru)
        self.torch_peak = torch.cuda.max_memory_allocated() if self.device.type == "cuda" else None

    def record(self) -> dict:
        return {"seconds": round(self.seconds, 6), "rss_start_bytes": self.start_rss, "peak_rss_bytes": self.peak,
                "peak_rss_delta_bytes": max(0, self.peak - self.start_rss), "peak_from_ru_maxrss": self.ru_exact,
                "torch_peak_allocated_bytes": self.torch_peak}


def measured(device, fn) -> tuple[object, dict]:
    with Meter(device) as m:
        out = fn()
    return out, m.record()


def merge(records: list[dict]) -> dict:
    """One record for several measured blocks: summed time, largest peak."""
    top = max(records, key=lambda r: r["peak_rss_bytes"])
    torch_peaks = [r["torch_peak_allocated_bytes"] for r in records if r["torch_peak_allocated_bytes"] is not None]
    return {"seconds": round(sum(r["seconds"] for r in records), 6), "rss_start_bytes": records[0]["rss_start_bytes"],
            "peak_rss_bytes": top["peak_rss_bytes"],
            "peak_rss_delta_bytes": max(r["peak_rss_delta_bytes"] for r in records),
            "peak_from_ru_maxrss": any(r["peak_from_ru_maxrss"] for r in records),
            "torch_peak_allocated_bytes": max(torch_peaks) if torch_peaks else None}
