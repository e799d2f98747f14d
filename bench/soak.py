"""Benchmark: does `prunerec serve` hold steady under hours-like load? One served model, per
engine (vLLM and torch by default), in turn:

  1. capacity  --capacity-users closed-loop users (each sends its next request when the last
               is answered) for --capacity-seconds: the requests/s the server answers
  2. soak      --users users paced to --load (0.8) x capacity in requests/s, for --minutes (20);
               every request's latency and outcome is logged, and the resident memory of every
               server process (vLLM's engine core runs in a child) is sampled every
               --sample-seconds

Recorded per minute: requests, failures, p50/p99 latency, memory, and what the machine did: CPU
steal (from /proc/stat) and the longest stall of a 5 ms sleep in this process (HiccupMeter).
Goals (the verdict):
0 failed requests; memory of the server's process tree at the end within 5% of its level after
the first 2 minutes; p99 of the last minute within 20% of the second minute's.

The model is the demo's pruned model unless --model is given: a fresh machine builds it first
with `prunerec demo --out bench/out/soak/demo` on a short budget (DEMO_BUILD below: 1 minute of
training, 150 distillation steps a stage; the demo's shapes, which set the serving cost).
Writes bench/out/soak.json after each engine, soak.md and soak.png at the end; logs, locust
CSVs and latency logs in bench/out/soak/<engine>/. Run it on an otherwise idle machine.

Usage: python bench/soak.py [--engine vllm --engine torch] [--minutes 20] [--load 0.8]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import requests

from prunerec.errors import PrunerecError
from prunerec.io import write_json, write_text
from prunerec.loadtest.options import LoadtestOptions
from prunerec.loadtest.runner import (
    LOCUSTFILE,
    child_env,
    locust_command,
    resolve_target,
    run_level,
    run_locust,
    start_server,
    wait_ready,
)
from prunerec.loadtest.workload import auth_headers
from prunerec.plots import pyplot, save_png
from prunerec.serve.options import ServeOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overload import fmt, run_bench  # noqa: E402 (a sibling bench script)

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
DEMO = OUT / "soak" / "demo"
SOAK_LOCUSTFILE = HERE / "soak_locustfile.py"
DEMO_BUILD = ["--minutes", "1", "--distill-steps", "150", "--users", "100", "--engine", "torch", "--load-users", "1",
              "--load-seconds", "2"]
BURST_WINDOW_S = 0.03  # arrivals closer than this count as one wave
HICCUP_TICK_S, HICCUP_MIN_MS = 0.005, 50.0  # a sleep of 5 ms that ends 50 ms late: the machine stalled
GOALS = {"memory_drift": 0.05, "p99_drift": 0.20, "memory_baseline_minute": 2, "p99_baseline_minute": 2}


# ----------------------------------------------------------------------------- pure numbers
def read_latency_log(text: str) -> np.ndarray:
    """Rows of (end_unix_s, latency_ms, ok) from the soak locustfile's log."""
    rows = [tuple(float(v) for v in line.split(",")) for line in text.splitlines() if line.strip()]
    return np.array(rows, dtype=float).reshape(-1, 3)


def starts_nearby(latencies: np.ndarray, window_s: float = BURST_WINDOW_S) -> np.ndarray:
    """For each request, how many others started within window_s of it (start = end - latency):
    about rate x 2 x window_s for arrivals spread at random, several times that for waves."""
    starts = np.sort(latencies[:, 0] - latencies[:, 1] / 1000.0)
    return np.searchsorted(starts, starts + window_s, side="right") - np.searchsorted(starts, starts - window_s) - 1


def per_minute(latencies: np.ndarray, start_s: float, minutes: int) -> list[dict]:
    """Requests, failures and latency percentiles of each whole minute after start_s (1-based);
    a request belongs to the minute in which it ended."""
    rows = []
    for minute in range(1, minutes + 1):
        lo, hi = start_s + 60 * (minute - 1), start_s + 60 * minute
        window = latencies[(latencies[:, 0] >= lo) & (latencies[:, 0] < hi)]
        ok_ms = window[window[:, 2] == 1, 1]
        rows.append({"minute": minute, "requests": int(len(window)), "failures": int((window[:, 2] == 0).sum()),
                     "rps": len(window) / 60.0,
                     "p50_ms": float(np.percentile(ok_ms, 50)) if len(ok_ms) else None,
                     "p99_ms": float(np.percentile(ok_ms, 99)) if len(ok_ms) else None,
                     "starts_nearby": float(starts_nearby(window).mean()) if len(window) else None})
    return rows


def cpu_steal_seconds(proc_stat: str, ticks_per_s: float) -> float | None:
    """CPU seconds the hypervisor ran something else while this machine wanted them, all CPUs
    summed since boot: the 8th value of /proc/stat's "cpu" line, in ticks."""
    fields = proc_stat.split("\n", 1)[0].split()
    return int(fields[8]) / ticks_per_s if len(fields) > 8 and fields[0] == "cpu" else None


def machine_per_minute(samples: list[dict], hiccups: list[tuple[float, float]], start_s: float,
                       minutes: int) -> list[dict]:
    """Per whole minute after start_s: CPU steal seconds between the samples around it (None
    without two samples holding it) and the longest stall of the hiccup meter (0: none)."""
    rows = []
    for minute in range(1, minutes + 1):
        lo, hi = start_s + 60 * (minute - 1), start_s + 60 * minute
        before = [x for x in samples if x["t"] <= lo and x.get("steal_s") is not None]
        after = [x for x in samples if x["t"] >= hi and x.get("steal_s") is not None]
        steal = after[0]["steal_s"] - before[-1]["steal_s"] if before and after else None
        late = [ms for t, ms in hiccups if lo <= t < hi]
        rows.append({"steal_s": steal, "longest_stall_ms": max(late, default=0.0)})
    return rows


def memory_at(samples: list[dict], start_s: float, after_s: float) -> dict | None:
    """The first memory sample taken at least after_s seconds after start_s."""
    return next((s for s in samples if s["t"] - start_s >= after_s), None)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def drift(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference - 1.0


def verdict(minutes: list[dict], samples: list[dict], start_s: float) -> dict:
    """The soak's three goals, each with the numbers it was decided on."""
    baseline = memory_at(samples, start_s, 60 * GOALS["memory_baseline_minute"])
    end = samples[-1] if samples else None
    memory_drift = drift(end and end["tree_rss_mib"], baseline and baseline["tree_rss_mib"])
    p99_second = minutes[GOALS["p99_baseline_minute"] - 1]["p99_ms"] if len(minutes) >= 2 else None
    p99_last = minutes[-1]["p99_ms"] if minutes else None
    p99_drift = drift(p99_last, p99_second)
    failures = sum(m["failures"] for m in minutes)
    checks = {
        "0 failed requests": failures == 0 and sum(m["requests"] for m in minutes) > 0,
        f"memory at the end within {GOALS['memory_drift']:.0%} of minute {GOALS['memory_baseline_minute']}":
            memory_drift is not None and abs(memory_drift) <= GOALS["memory_drift"],
        f"p99 of the last minute within {GOALS['p99_drift']:.0%} of minute {GOALS['p99_baseline_minute']}":
            p99_drift is not None and abs(p99_drift) <= GOALS["p99_drift"],
    }
    return {"passed": all(checks.values()), "checks": checks, "failures": failures,
            "memory_after_2_min_mib": baseline and baseline["tree_rss_mib"],
            "memory_end_mib": end and end["tree_rss_mib"],
            "memory_drift": memory_drift, "p99_minute_2_ms": p99_second, "p99_last_minute_ms": p99_last,
            "p99_drift": p99_drift}


# ----------------------------------------------------------------------------- measuring
def memory_sample(pid: int) -> dict:
    """RSS of every process of the server's tree (MiB), and their sum."""
    processes = {}
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for proc in tree:
        try:
            processes[f"{proc.pid} {proc.name()}"] = round(proc.memory_info().rss / 2**20, 1)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return {"t": time.time(), "tree_rss_mib": round(sum(processes.values()), 1), "processes": processes,
            "steal_s": read_steal()}


def read_steal() -> float | None:
    try:
        return cpu_steal_seconds(Path("/proc/stat").read_text(), os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):  # not Linux
        return None


class HiccupMeter(threading.Thread):
    """Sleeps HICCUP_TICK_S again and again and records every wake-up at least HICCUP_MIN_MS late:
    times when nothing on this machine ran, whatever the server was doing (the bench process is
    otherwise idle; locust runs in its own)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stalls: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            before = time.perf_counter()
            time.sleep(HICCUP_TICK_S)
            late_ms = (time.perf_counter() - before - HICCUP_TICK_S) * 1000
            if late_ms >= HICCUP_MIN_MS:
                self.stalls.append((time.time(), round(late_ms, 1)))

    def stop(self) -> list[tuple[float, float]]:
        self.done.set()
        self.join()
        return self.stalls


def engine_held(url: str) -> dict | None:
    """What the served engine holds between requests (GET /ready's engine.held; vLLM only)."""
    try:
        return requests.get(url + "/ready", headers=auth_headers(), timeout=10).json()["engine"].get("held")
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return None


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, every_s: float, url: str | None = None):
        super().__init__(daemon=True)
        self.pid, self.every_s, self.url, self.samples, self.done = pid, every_s, url, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            sample = memory_sample(self.pid)
            if self.url:
                sample["held"] = engine_held(self.url)
            self.samples.append(sample)
            self.done.wait(self.every_s)

    def stop(self) -> list[dict]:
        self.done.set()
        self.join()
        self.samples.append(memory_sample(self.pid))
        return self.samples


def soak_phase(url: str, server, args, options: LoadtestOptions, rate: float, folder: Path) -> dict:
    latency_file = folder / "latency.csv"
    latency_file.unlink(missing_ok=True)
    soak_options = replace(options, duration_s=int(args.minutes * 60))
    command = [str(SOAK_LOCUSTFILE) if part == str(LOCUSTFILE) else part
               for part in locust_command(url, args.users, soak_options, folder / "locust" / "soak")]
    env = child_env({"PRUNEREC_LOADTEST_DATA": str(args.data), "PRUNEREC_LOADTEST_K": str(args.k),
                     "PRUNEREC_SOAK_RATE_PER_USER": f"{rate / args.users:.6f}",
                     "PRUNEREC_SOAK_LATENCY_FILE": str(latency_file)})
    sampler, hiccups = MemorySampler(server.proc.pid, args.sample_seconds, url), HiccupMeter()
    start_s = time.time()
    sampler.start()
    hiccups.start()
    try:
        run_locust(command, env, folder / "logs" / "soak-locust.log",
                   timeout=soak_options.duration_s + options.request_timeout + 120)
    finally:
        samples, stalls = sampler.stop(), hiccups.stop()
    latencies = read_latency_log(latency_file.read_text())
    minutes = [{**requests_row, **machine_row} for requests_row, machine_row in zip(
        per_minute(latencies, start_s, int(args.minutes)),
        machine_per_minute(samples, stalls, start_s, int(args.minutes)))]
    return {"target_rps": rate, "start_unix_s": start_s, "minutes": minutes, "memory": samples, "stalls": stalls,
            "verdict": verdict(minutes, samples, start_s)}


def run_engine(engine: str, args) -> dict:
    folder = Path(args.out) / engine
    options = LoadtestOptions(duration_s=args.capacity_seconds, k=args.k, server_env=dict(args.server_env),
                              serve=ServeOptions(engine=engine, max_concurrency=args.max_concurrency,
                                                 request_timeout=args.request_timeout))
    target = resolve_target("baseline", str(args.model))
    server, url = start_server(target, options, folder / "logs" / "server.log")
    try:
        ready_s = time.monotonic()
        wait_ready(url, 600, server, f"{engine} server")
        ready_s = round(time.monotonic() - ready_s, 1)
        print(f"{engine}: ready in {ready_s} s; capacity: {args.capacity_users} users for {args.capacity_seconds} s",
              flush=True)
        capacity = run_level(url, args.capacity_users, options, args.data, folder, "capacity")
        rate = args.load * capacity["rps"] * (1 - (capacity["failure_share"] or 0.0))
        if rate <= 0:
            raise PrunerecError(f"{engine}: the capacity run answered no request; see {folder}/logs")
        print(f"{engine}: capacity {capacity['rps']:.2f} req/s; soak at {rate:.2f} req/s for {args.minutes:g} min",
              flush=True)
        soak = soak_phase(url, server, args, options, rate, folder)
    finally:
        exit_code = server.stop()
    return {"engine": engine, "ready_seconds": ready_s, "capacity": capacity, **soak, "server_exit_code": exit_code}


def demo_model() -> tuple[Path, Path]:
    """The demo's pruned model and data, built with `prunerec demo` when missing, on a shorter
    budget (DEMO_BUILD): the same shapes as the demo's pruned model, and serving cost depends on
    the shapes, not on how well the weights were trained."""
    if not (DEMO / "summary.json").is_file():
        print(f"building the demo's pruned model in {DEMO} (prunerec demo {' '.join(DEMO_BUILD)}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "prunerec", "demo", "--out", str(DEMO), "--resume", *DEMO_BUILD],
                       check=True, env=child_env())
    return DEMO / "pruned" / "final", DEMO / "data"


# ----------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Soak: {s['model']}", "", f"{s['machine']}; started {s['started_at']}; {s['users']} users paced to "
             f"{s['load']:.0%} of the measured capacity for {s['minutes']:g} min; k={s['k']}.", ""]
    for run in report["engines"]:
        v = run["verdict"]
        lines += [f"## {run['engine']}: {'PASSED' if v['passed'] else 'FAILED'}", "",
                  f"Capacity {run['capacity']['rps']:.2f} req/s ({s['capacity_users']} closed-loop users); soak "
                  f"target {run['target_rps']:.2f} req/s. Memory (server tree RSS) after 2 min "
                  f"{fmt(v['memory_after_2_min_mib'])} MiB, at the end {fmt(v['memory_end_mib'])} MiB "
                  f"({pct(v['memory_drift'])}); p99 minute 2 {fmt(v['p99_minute_2_ms'], '.0f')} ms, last "
                  f"minute {fmt(v['p99_last_minute_ms'], '.0f')} ms ({pct(v['p99_drift'])}).", ""]
        lines += [f"- {'ok' if ok else 'NO'}: {check}" for check, ok in v["checks"].items()]
        held = [m["held"] for m in run["memory"] if m.get("held")]
        if held:
            peaks = {name: max(h[name] for h in held) for name in held[0]}
            lines += ["", f"Held by the engine between requests (sampled with the memory): most at once "
                          f"{peaks}; at the last sample {held[-1]}."]
        lines += ["", f"Starts nearby: other requests started within {BURST_WINDOW_S * 1000:.0f} ms of each request "
                      f"(arrivals spread at random: about {2 * BURST_WINDOW_S * run['target_rps']:.2f}; more: waves).",
                  "", f"The machine: CPU steal is time the hypervisor gave the cores to others; the longest "
                  f"stall is the latest wake-up of a {HICCUP_TICK_S * 1000:.0f} ms sleep in the bench's own "
                  f"process (0: none reached {HICCUP_MIN_MS:.0f} ms). Either one delays every request in flight.",
                  "", "| minute | requests | failures | req/s | p50 ms | p99 ms | starts nearby | CPU steal s "
                  "| longest stall ms |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {m['minute']} | {m['requests']} | {m['failures']} | {m['rps']:.2f} | "
                  f"{fmt(m['p50_ms'], '.0f')} | {fmt(m['p99_ms'], '.0f')} | {fmt(m.get('starts_nearby'), '.2f')} | "
                  f"{fmt(m.get('steal_s'), '.2f')} | {fmt(m.get('longest_stall_ms'), '.0f')} |"
                  for m in run["minutes"]]
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    plt = pyplot()
    fig, (mem_ax, lat_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for run in report["engines"]:
        start = run["start_unix_s"]
        mem_ax.plot([(m["t"] - start) / 60 for m in run["memory"]], [m["tree_rss_mib"] for m in run["memory"]],
                    label=run["engine"])
        minutes = [m for m in run["minutes"] if m["p99_ms"] is not None]
        x = [m["minute"] for m in minutes]
        line, = lat_ax.plot(x, [m["p99_ms"] for m in minutes], label=f"{run['engine']} p99")
        lat_ax.plot(x, [m["p50_ms"] for m in minutes], linestyle="--",
                    color=line.get_color(), label=f"{run['engine']} p50")
    mem_ax.set(xlabel="minutes of soak", ylabel="RSS of the server's processes (MiB)", title="memory")
    lat_ax.set(xlabel="minute of soak", ylabel="latency (ms)", title="latency per minute")
    for ax in (mem_ax, lat_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    save_png(fig, path)


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the demo's pruned model)")
    parser.add_argument("--data", type=Path, default=None, help="data folder (default: the demo's data)")
    parser.add_argument("--engine", action="append", choices=["vllm", "torch", "onnx"],
                        help="engine; repeat for several (default: vllm, then torch)")
    parser.add_argument("--minutes", type=float, default=20.0, help="minutes of soak per engine")
    parser.add_argument("--load", type=float, default=0.8, help="share of the measured capacity held")
    parser.add_argument("--users", type=int, default=16, help="users of the soak (each paced)")
    parser.add_argument("--capacity-users", type=int, default=16)
    parser.add_argument("--capacity-seconds", type=int, default=60)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=OUT / "soak", help="writes OUT.json, OUT.md, OUT.png")
    parser.add_argument("--server-env", action="append", default=[], type=_env_pair, metavar="NAME=VALUE",
                        help="environment of the server (repeatable), e.g. MALLOC_ARENA_MAX=1")
    parser.add_argument("--fresh", action="store_true", help="soak every engine again, even those OUT.json holds")
    args = parser.parse_args(argv)
    if args.minutes < 3 or not 0 < args.load <= 1:
        parser.error("--minutes must be at least 3 (the goals compare minute 2 with the last) and --load in (0, 1]")
    return args


def finished_engines(path: Path, settings: dict) -> list[dict]:
    """Engines an earlier run with the same settings (the start time aside) finished."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    same = {k: v for k, v in earlier.get("settings", {}).items() if k != "started_at"} == \
        {k: v for k, v in settings.items() if k != "started_at"}
    return earlier.get("engines", []) if same else []


def run(args) -> dict:
    if args.model is None:
        args.model, default_data = demo_model()
        args.data = args.data or default_data
    if args.data is None or not args.data.is_dir():
        raise PrunerecError(f"--data {args.data}: no such data folder")
    report = {"settings": {"model": str(args.model), "data": str(args.data), "minutes": args.minutes,
                           "load": args.load, "users": args.users, "capacity_users": args.capacity_users,
                           "capacity_seconds": args.capacity_seconds, "k": args.k,
                           "max_concurrency": args.max_concurrency, "server_env": dict(args.server_env),
                           "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores",
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
              "engines": [], "complete": False}
    report["engines"] = finished_engines(Path(f"{args.out}.json"), report["settings"]) if not args.fresh else []
    done = [run["engine"] for run in report["engines"]]
    for engine in args.engine or ["vllm", "torch"]:
        if engine in done:
            print(f"{engine}: already soaked with these settings ({args.out}.json); --fresh runs it again", flush=True)
            continue
        report["engines"].append(run_engine(engine, args))
        write_json(Path(f"{args.out}.json"), report)
    report["complete"] = True
    write_json(Path(f"{args.out}.json"), report)
    write_text(Path(f"{args.out}.md"), markdown(report))
    plot(report, Path(f"{args.out}.png"))
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_bench("soak", lambda: run(args), markdown,
                     lambda report: all(engine["verdict"]["passed"] for engine in report["engines"]),
                     f"engines finished so far are in {args.out}.json")


if __name__ == "__main__":
    sys.exit(main())
