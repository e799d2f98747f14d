"""Benchmark: does `prunerec serve` stay correct past its capacity? One server (vLLM by
default) on one model, driven by locust with prunerec's load-test workload (real test-split
histories, every answer checked against the catalog): first `--users` (64) for `--duration`
(5 minutes), then `--overload-users` (256) for `--overload-duration` (2 minutes), more than
--max-concurrency + --max-queue (16 + 64) can hold.

Recorded per phase: answers that failed among the requests the server accepted (every answer
but a 503; must be 0), how overload was answered (503 with / without Retry-After, and the
server's own count of refusals by reason), accepted requests/s and p50/p99 latency, the 503s'
latency; and the server's resident memory (the process and its children, e.g. vLLM's engine
core) when ready, after each phase. Users honour Retry-After (`--ignore-retry-after`: retry at
once). Writes OUT.json and OUT.md (default bench/out/overload.json, .md), logs and locust CSV
files in OUT/.

Usage (the issue-15 run, on an otherwise idle machine; about 8 minutes):
    python bench/overload.py
    python bench/overload.py --model DIR --data DIR --duration 300 --overload-duration 120
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import psutil
import requests

from prunerec.errors import PrunerecError
from prunerec.io import free_port, write_json, write_text
from prunerec.loadtest import report as rp
from prunerec.loadtest.options import LoadtestOptions
from prunerec.loadtest.runner import (
    LOCUSTFILE,
    Process,
    child_env,
    locust_command,
    run_locust,
    sigterm_as_interrupt,
    wait_ready,
)
from prunerec.loadtest.workload import auth_headers, bodies_from_data
from prunerec.serve.options import ServeOptions

HERE = Path(__file__).resolve().parent
# the request names bench/overload_locustfile.py reports answers under (locust's CSV rows)
ACCEPTED = "/v1/recommend"                 # every answer but a 503
OVERLOAD = "503 with Retry-After"
OVERLOAD_BARE = "503 without Retry-After"
DATA = HERE.parents[1] / "shared" / "data" / "amazon-games"
PRUNED = HERE / "out" / "compress_games" / "prunerec" / "run" / "final"
USERS_LOCUSTFILE = HERE / "overload_locustfile.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(PRUNED), help="model folder to serve (default: the pruned Games model)")
    parser.add_argument("--data", default=str(DATA), help="prepared data folder: test histories and catalog")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "torch", "onnx"])
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--duration", type=int, default=300, help="seconds of the first phase")
    parser.add_argument("--overload-users", type=int, default=256)
    parser.add_argument("--overload-duration", type=int, default=120, help="seconds of the overload phase")
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--queue-timeout", type=float, default=None, help="default: the server's (half the request "
                                                                          "timeout)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--ignore-retry-after", action="store_true", help="users retry a 503 at once")
    parser.add_argument("--out", default=str(HERE / "out" / "overload"),
                        help="writes OUT.json, OUT.md and the folder OUT/ (logs, locust CSV files)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- measuring
def fmt(value, spec: str = ".1f") -> str:
    return "n/a" if value is None else f"{value:{spec}}"


def memory(pid: int) -> dict:
    """Resident memory of the server process and of its whole process tree (vLLM's engine core
    runs in a child), in MiB: RSS sums count shared pages once per process, PSS shares them out."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
        own = root.memory_info().rss
    except psutil.NoSuchProcess:
        return {"server_rss_mib": None, "tree_rss_mib": None, "tree_pss_mib": None, "processes": 0}
    rss = pss = 0
    for proc in tree:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss, pss = rss + info.rss, pss + getattr(info, "pss", 0)
    return {"server_rss_mib": round(own / 2**20, 1), "tree_rss_mib": round(rss / 2**20, 1),
            "tree_pss_mib": round(pss / 2**20, 1), "processes": len(tree)}


def server_counts(url: str) -> dict:
    """The server's recommend answers by status and its refusals by reason (Prometheus counters)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = requests.get(url + "/metrics", headers=auth_headers(), timeout=30)
    response.raise_for_status()
    counts = {"status": {}, "rejected": {}}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "prunerec_http_requests_total" and sample.labels.get("route") == ACCEPTED:
                status = sample.labels["status"]
                counts["status"][status] = counts["status"].get(status, 0) + int(sample.value)
            elif sample.name == "prunerec_rejected_requests_total":
                counts["rejected"][sample.labels["reason"]] = int(sample.value)
    return counts


def difference(after: dict, before: dict) -> dict:
    return {group: {key: value - before[group].get(key, 0) for key, value in after[group].items()
                    if value - before[group].get(key, 0)} for group in after}


def row_numbers(rows: list[dict], name: str) -> dict:
    row = next((r for r in rows if r.get("Name") == name), None)
    if row is None:
        return {"requests": 0, "failures": 0, "rps": 0.0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
            "rps": rp.csv_number(row["Requests/s"]), "p50_ms": rp.csv_number(row["50%"]),
            "p99_ms": rp.csv_number(row["99%"]), "max_ms": rp.csv_number(row["Max Response Time"])}


def phase_summary(name: str, users: int, seconds: int, rows: list[dict], failure_rows: list[dict],
                  server: dict, memory_after: dict) -> dict:
    accepted, overload, bare = (row_numbers(rows, n) for n in (ACCEPTED, OVERLOAD, OVERLOAD_BARE))
    return {
        "phase": name, "users": users, "seconds": seconds,
        "accepted": accepted["requests"], "failed_accepted": accepted["failures"],
        "ok_rps": (accepted["rps"] or 0.0) * (1 - accepted["failures"] / accepted["requests"])
        if accepted["requests"] else 0.0,
        "p50_ms": accepted["p50_ms"], "p99_ms": accepted["p99_ms"], "max_ms": accepted["max_ms"],
        "overload_503_retry_after": overload["requests"], "overload_503_without_retry_after": bare["requests"],
        "overload_p50_ms": overload["p50_ms"], "overload_p99_ms": overload["p99_ms"],
        "failures": {f"{r['Name']}: {r['Error']}": int(r["Occurrences"]) for r in failure_rows},
        "server": server, "memory_after": memory_after,
    }


# ----------------------------------------------------------------------------- running
def serve_command(args, port: int) -> list[str]:
    command = [sys.executable, "-m", "prunerec.serve.cli", "--model", args.model, "--engine", args.engine,
               "--host", "127.0.0.1", "--port", str(port), "--max-concurrency", str(args.max_concurrency),
               "--max-queue", str(args.max_queue), "--request-timeout", f"{args.request_timeout:g}",
               "--log-level", "warning"]
    if args.queue_timeout is not None:
        command += ["--queue-timeout", f"{args.queue_timeout:g}"]
    return command + (["--enforce-eager"] if args.enforce_eager else [])


def run_phase(args, name: str, users: int, seconds: int, url: str, server: Process, out: Path) -> dict:
    options = LoadtestOptions(duration_s=seconds, k=args.k,
                              serve=ServeOptions(engine=args.engine, request_timeout=args.request_timeout))
    prefix = out / "locust" / name
    prefix.parent.mkdir(parents=True, exist_ok=True)
    command = [str(USERS_LOCUSTFILE) if part == str(LOCUSTFILE) else part
               for part in locust_command(url, users, options, prefix)]
    env = child_env({"PRUNEREC_LOADTEST_DATA": args.data, "PRUNEREC_LOADTEST_K": str(args.k),
                     "PRUNEREC_OVERLOAD_IGNORE_RETRY_AFTER": "1" if args.ignore_retry_after else "0"})
    before = server_counts(url)
    run_locust(command, env, out / "logs" / f"{name}-locust.log", timeout=seconds + args.request_timeout + 120)
    server_delta = difference(server_counts(url), before)
    rows = rp.read_csv_rows(Path(f"{prefix}_stats.csv").read_text())
    failure_rows = rp.read_csv_rows(Path(f"{prefix}_failures.csv").read_text())
    return phase_summary(name, users, seconds, rows, failure_rows, server_delta, memory(server.proc.pid))


def verdict(phases: list[dict], exit_code: int | None) -> dict:
    overload = phases[-1]
    checks = {
        "no failed answer among accepted requests": all(p["failed_accepted"] == 0 for p in phases),
        "every 503 carries Retry-After": all(p["overload_503_without_retry_after"] == 0 for p in phases),
        "the overload phase was past capacity (503s seen)": overload["overload_503_retry_after"] > 0,
        "the server kept answering in the overload phase": overload["accepted"] > 0,
        "the server exited 0 on SIGTERM": exit_code == 0,
    }
    return {"passed": all(checks.values()), "checks": checks}


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Overload run: {s['engine']} on {s['model']}", "",
             f"{s['machine']}; started {s['started_at']}; serve {s['serve_args']}; k={s['k']}; users "
             f"{'ignore' if s['ignore_retry_after'] else 'honour'} Retry-After.", "",
             "| phase | users | s | accepted | failed | ok req/s | p50 ms | p99 ms | 503 + Retry-After | "
             "503 without | 503 p50 ms | server refusals | PSS after (MiB, tree) |",
             "|" + "---|" * 13]
    for p in report["phases"]:
        refusals = ", ".join(f"{k} {v}" for k, v in sorted(p["server"].get("rejected", {}).items())) or "none"
        lines.append(f"| {p['phase']} | {p['users']} | {p['seconds']} | {p['accepted']} | {p['failed_accepted']} | "
                     f"{fmt(p['ok_rps'], '.2f')} | {fmt(p['p50_ms'], '.0f')} | {fmt(p['p99_ms'], '.0f')} | "
                     f"{p['overload_503_retry_after']} | {p['overload_503_without_retry_after']} | "
                     f"{fmt(p['overload_p50_ms'], '.0f')} | {refusals} | {fmt(p['memory_after']['tree_pss_mib'])} |")
    ready, last = report["memory_ready"], report["phases"][-1]["memory_after"] if report["phases"] else {}
    lines += ["", f"Server memory when ready: RSS {fmt(ready['server_rss_mib'])} MiB (server process), tree "
              f"({ready['processes']} processes) RSS {fmt(ready['tree_rss_mib'])} / PSS {fmt(ready['tree_pss_mib'])} "
              f"MiB; after the last phase: RSS {fmt(last.get('server_rss_mib'))} MiB, tree RSS "
              f"{fmt(last.get('tree_rss_mib'))} / PSS {fmt(last.get('tree_pss_mib'))} MiB.", "",
              f"Verdict: {'PASSED' if report['verdict']['passed'] else 'FAILED'}"]
    lines += [f"- {'ok' if ok else 'NO'}: {check}" for check, ok in report["verdict"]["checks"].items()]
    failures = {k: v for p in report["phases"] for k, v in p["failures"].items()}
    if failures:
        lines += ["", "Failures: " + "; ".join(f"{k} x{v}" for k, v in failures.items())]
    return "\n".join(lines) + "\n"


def run(args) -> dict:
    out = Path(args.out)
    if not Path(args.model).is_dir():
        hint = " (bench/compress_games.py writes the pruned Games model there)" if args.model == str(PRUNED) else ""
        raise PrunerecError(f"--model {args.model}: no such folder{hint}")
    if not Path(args.data).is_dir():
        raise PrunerecError(f"--data {args.data}: no such folder")
    histories = len(bodies_from_data(args.data, args.k)[0])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serve_command(args, port)
    report = {"settings": {"model": args.model, "data": args.data, "histories": histories, "engine": args.engine,
                           "k": args.k, "serve_args": " ".join(command[command.index("--max-concurrency"):]),
                           "ignore_retry_after": args.ignore_retry_after,
                           "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores",
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
              "phases": [], "complete": False}
    server = Process(command, out / "logs" / "server.log", child_env())
    exit_code = None
    try:
        started = time.monotonic()
        report["ready"] = wait_ready(url, 600, server)
        report["ready_seconds"] = round(time.monotonic() - started, 1)
        report["memory_ready"] = memory(server.proc.pid)
        for name, users, seconds in (("steady", args.users, args.duration),
                                     ("overload", args.overload_users, args.overload_duration)):
            print(f"{name}: {users} users for {seconds} s ...", flush=True)
            report["phases"].append(run_phase(args, name, users, seconds, url, server, out))
            write_json(Path(f"{out}.json"), report)
    finally:
        exit_code = server.stop()
    report["server_exit_code"] = exit_code
    report["verdict"] = verdict(report["phases"], exit_code)
    report["complete"] = True
    write_json(Path(f"{out}.json"), report)
    write_text(Path(f"{out}.md"), markdown(report))
    return report


def run_bench(name: str, run_report, markdown_of, passed, left_in: str) -> int:
    """A serving benchmark's exit: 0 when its verdict passed, 3 when not, 1 on bad input (the
    message), 130 on Ctrl-C or SIGTERM (where what finished was written: `left_in`)."""
    try:
        with sigterm_as_interrupt():
            report = run_report()
    except PrunerecError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted; {left_in}", file=sys.stderr)
        return 130
    print(markdown_of(report))
    return 0 if passed(report) else 3


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_bench("overload", lambda: run(args), markdown, lambda report: report["verdict"]["passed"],
                     f"the phases done so far are in {args.out}.json")


if __name__ == "__main__":
    sys.exit(main())
