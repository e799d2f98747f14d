"""Where a recommendation's time goes in each engine, without HTTP: the engines run in this
process and U threads call `rank` back to back (as U server threads would) for D seconds.

For the torch and onnx engines the worker thread's time is split into waiting for requests and
running a batch's search (with --cprofile, broken down by function). For the vllm engine the
engine thread's wall time is split into: waiting for searches to hand in
their next step (`gather`), adding requests, `LLMEngine.step()` and bookkeeping; and, with
--cprofile, `step()` itself is broken down by vLLM function (cumulative seconds of the engine
thread). The search threads' own time (beam search over the returned log-probabilities) is
what the engine thread spends waiting in `gather` while every search is busy. With
--vllm-core process, `step()` is the wait for the core process's outputs plus their processing.

Writes OUT.json (atomically) and prints a summary.
Usage:
  python bench/engine_profile.py MODEL --data DIR [--engines vllm,torch] [--users 16] [--seconds 30]
      [--cprofile] [--vllm-core auto|inline|process] [--max-batch 8] [--out bench/out/engine_profile]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prunerec.allocator import keep_freed_memory  # noqa: E402
from prunerec.io import write_json  # noqa: E402
from prunerec.serve.model import load_serve_model  # noqa: E402
from prunerec.serve.worker import Deadline  # noqa: E402


class Timers:
    """Wall seconds and calls of wrapped methods; `profile` (optional) records inside them."""

    def __init__(self, profile: cProfile.Profile | None = None):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.profile = profile

    def wrap(self, obj, name: str, label: str | None = None, profiled: bool = False):
        inner = getattr(obj, name)
        label = label or name
        profile = self.profile if profiled else None

        def timed(*args, **kwargs):
            start = time.perf_counter()
            if profile is not None:
                profile.enable()
            try:
                return inner(*args, **kwargs)
            finally:
                if profile is not None:
                    profile.disable()
                self.seconds[label] += time.perf_counter() - start
                self.calls[label] += 1

        setattr(obj, name, timed)


def histories(data_dir: Path, limit: int = 2000) -> list[list[int]]:
    rows = []
    with open(data_dir / "test.jsonl", encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line)["history"])
            if len(rows) >= limit:
                break
    return rows


def drive(engine, prompts: list[list[int]], users: int, seconds: float, beams: int) -> dict:
    """U threads ranking prompts back to back; returns recommendations/s and latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    counter = iter(range(10 ** 9))

    def user():
        while time.monotonic() < stop_at:
            with lock:
                prompt = prompts[next(counter) % len(prompts)]
            start = time.perf_counter()
            engine.rank(prompt, beams, Deadline(120))
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=user) for _ in range(users)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    latencies.sort()

    def pick(quantile: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(quantile * len(latencies)))], 1)

    return {"recommendations": len(latencies), "wall_s": round(wall, 2),
            "per_s": round(len(latencies) / wall, 2), "p50_ms": pick(0.5), "p99_ms": pick(0.99)}


def instrument_vllm(engine, timers: Timers):
    """Time the engine thread's parts (and profile inside vLLM's step and add_request when the
    timers carry a profile). Patched on the live engine: its thread looks these up on each call."""
    core = engine._llm.llm_engine
    timers.wrap(engine, "_gather", "gather (waiting for searches)")
    timers.wrap(core, "add_request", "add_request", profiled=True)
    timers.wrap(core, "abort_request", "abort_request")
    timers.wrap(engine, "_resolve", "resolve (bookkeeping)")
    timers.wrap(engine, "_record", "record outputs")
    timers.wrap(core, "step", "step", profiled=True)


def profile_rows(profile: cProfile.Profile, top: int = 25) -> list[dict]:
    stats = pstats.Stats(profile)
    rows = []
    for (path, line, func), (calls, _, own, cumulative, _) in stats.stats.items():
        rows.append({"function": f"{Path(path).name}:{line}:{func}", "calls": calls,
                     "own_s": round(own, 3), "cumulative_s": round(cumulative, 3)})
    rows.sort(key=lambda r: -r["cumulative_s"])
    return rows[:top]


def run_engine(folder: str, engine_name: str, prompts_of, users: int, seconds: float, beams: int,
               cprofile: bool, enforce_eager: bool, vllm_core: str = "auto", max_batch: int = 8) -> dict:
    from prunerec.serve.engine_factory import build_engine

    sm = load_serve_model(folder, engine_name)
    prompts = [sm.prompt(sm.resolve_history(h)) for h in prompts_of]
    engine = build_engine(sm, beams=beams, enforce_eager=enforce_eager, vllm_core=vllm_core, max_batch=max_batch)
    try:
        drive(engine, prompts, users, min(5.0, seconds), beams)  # warm-up
        profile = cProfile.Profile() if cprofile else None
        timers = Timers(profile)
        if engine_name == "vllm":  # with a core process, step() is the wait for its outputs
            instrument_vllm(engine, timers)
            before = engine.describe()
        else:  # the worker thread: waiting for requests, and running a batch's whole search
            timers.wrap(engine, "_take_batch", "waiting for requests")
            timers.wrap(engine, "_run", "run batch (search + model)", profiled=True)
        result = drive(engine, prompts, users, seconds, beams)
        if engine_name != "vllm":
            result["worker_thread_s"] = {k: round(v, 2) for k, v in timers.seconds.items()}
            result["batches"] = timers.calls["run batch (search + model)"]
            if profile is not None:
                result["profile"] = profile_rows(profile, top=60)
        else:
            after = engine.describe()
            searches = after["searches"] - before["searches"]
            result["engine_steps_per_recommendation"] = round(
                (after["engine_steps"] - before["engine_steps"]) / max(searches, 1), 2)
            result["engine_thread_s"] = {k: round(v, 2) for k, v in timers.seconds.items()}
            result["engine_thread_calls"] = dict(timers.calls)
            steps = max(timers.calls["step"], 1)
            result["ms_per_step"] = round(1000 * timers.seconds["step"] / steps, 2)
            if profile is not None:
                result["profile"] = profile_rows(profile, top=60)
        return result
    finally:
        engine.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--engines", default="vllm,torch")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--beams", type=int, default=20)
    parser.add_argument("--cprofile", action="store_true", help="break step() down by function (slows it)")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--vllm-core", default="auto", choices=("auto", "inline", "process"))
    parser.add_argument("--max-batch", type=int, default=8, help="torch/onnx: requests batched into one search")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "engine_profile")
    parser.add_argument("--freed-to-os", action="store_true",
                        help="leave glibc's defaults (freed memory returned to the system), for a before/after")
    args = parser.parse_args()
    if not args.freed_to_os:
        keep_freed_memory()  # as the prunerec command does
    prompts_of = histories(args.data)
    record = {"model": args.model, "users": args.users, "freed_to_os": args.freed_to_os,
              "vllm_core": args.vllm_core, "max_batch": args.max_batch,
              "seconds": args.seconds,
              "beams": args.beams, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "engines": {}}
    for name in args.engines.split(","):
        record["engines"][name] = run_engine(args.model, name, prompts_of, args.users, args.seconds, args.beams,
                                             args.cprofile, args.enforce_eager, args.vllm_core, args.max_batch)
        print(name, json.dumps({k: v for k, v in record["engines"][name].items() if k != "profile"}),
              flush=True)
        write_json(args.out.with_suffix(".json"), record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
