"""A served model's first minutes, for bench/gpu_check.py: cold start of `prunerec serve`,
latency of single and concurrent requests, and the exit on SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ProbeFailed(RuntimeError):
    pass


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), 2)


def serve_probe(model: Path, data: Path, engine: str, log: Path, n_requests: int, n_concurrent: int,
                start_timeout: float) -> dict:
    """Start `prunerec serve`, wait for /ready, time single and concurrent requests, SIGTERM."""
    import requests

    from prunerec.io import free_port

    histories = [json.loads(line)["history"] for line in (data / "test.jsonl").read_text().splitlines()[:200]]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "w")  # noqa: SIM115 (closed below)
    cmd = [sys.executable, "-m", "prunerec", "serve", "--model", str(model), "--engine", engine, "--port", str(port)]
    out.write("$ " + " ".join(cmd[2:]) + "\n")
    out.flush()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    result: dict = {"engine": engine, "model": str(model)}
    try:
        while True:
            if proc.poll() is not None:
                raise ProbeFailed(f"prunerec serve exited {proc.returncode} before it was ready (log: {log}):\n"
                                 + log.read_text(errors="replace")[-1500:])
            if time.perf_counter() - started > start_timeout:
                raise ProbeFailed(f"prunerec serve was not ready after {start_timeout:.0f}s (log: {log})")
            try:
                ready = requests.get(f"{base}/ready", timeout=2)
                if ready.status_code == 200:
                    result["ready"] = ready.json()
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        result["cold_start_s"] = round(time.perf_counter() - started, 2)

        def ask(history) -> float:
            t0 = time.perf_counter()
            r = requests.post(f"{base}/v1/recommend", json={"history": history, "k": 10}, timeout=120)
            r.raise_for_status()
            assert len(r.json()["items"]) == 10
            return (time.perf_counter() - t0) * 1000

        single = [ask(histories[i % len(histories)]) for i in range(n_requests)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            concurrent = list(pool.map(ask, [histories[i % len(histories)] for i in range(n_concurrent)]))
        wall = time.perf_counter() - t0
        result["single"] = {"requests": n_requests, "p50_ms": percentile(single, 50), "p99_ms": percentile(single, 99),
                            "mean_ms": round(statistics.fmean(single), 2)}
        result["concurrent_8"] = {"requests": n_concurrent, "p50_ms": percentile(concurrent, 50),
                                  "p99_ms": percentile(concurrent, 99),
                                  "requests_per_s": round(n_concurrent / wall, 2)}
    finally:
        t0 = time.perf_counter()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()
        result["shutdown_s"] = round(time.perf_counter() - t0, 2)
        result["exit_code"] = proc.returncode
    return result
