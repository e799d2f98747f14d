"""The processes of a load test: each model's `prunerec serve` (started in its own process group
on a loopback port, or a URL the user gives), one `locust --headless` run per concurrency level,
and their cleanup, also on Ctrl-C and SIGTERM. Numbers and text come from prunerec.loadtest.report.

Models run in turn, never at once, so they do not share the machine's cores.
"""
from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from prunerec.errors import PrunerecError
from prunerec.io import free_port, write_json, write_text
from prunerec.loadtest import report as rp
from prunerec.loadtest.options import LoadtestOptions
from prunerec.loadtest.workload import auth_headers, bodies_from_data

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds `prunerec`
LOG_TAIL_LINES = 40
STOP_SECONDS = 60           # SIGTERM, then this long before SIGKILL


@dataclass(frozen=True)
class Target:
    role: str                 # "baseline" or "candidate"
    source: str               # as the user gave it
    url: str | None = None    # a running server's base URL, or None: start one on `folder`
    folder: Path | None = None


# ----------------------------------------------------------------------------- targets
def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def resolve_target(role: str, value: str, allow_remote: bool = False) -> Target:
    """A URL (loopback unless allow_remote) or an existing model folder."""
    from prunerec.serve.options import is_loopback

    if is_url(value):
        parts = urlsplit(value)
        if not parts.hostname:
            raise PrunerecError(f"--{role} {value}: no host in this URL")
        if not allow_remote and not is_loopback(parts.hostname):
            raise PrunerecError(f"--{role} {value}: not a loopback address; pass --allow-remote to load a "
                                f"server on another machine")
        return Target(role, value, url=value.rstrip("/"))
    folder = Path(value)
    if not folder.is_dir():
        raise PrunerecError(f"--{role} {value}: no such model folder (give a folder from train/compress/export, "
                            f"or the http:// URL of a running `prunerec serve`)")
    return Target(role, value, folder=folder)


def probe(url: str) -> None:
    """Fail early and clearly when a given URL does not answer at all."""
    try:
        requests.get(url + "/health", timeout=10)
    except requests.RequestException as err:
        raise PrunerecError(f"cannot reach {url}: {type(err).__name__} (is `prunerec serve` running there?)") from None


# ----------------------------------------------------------------------------- processes
def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def child_env(extra: dict | None = None) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    return env


class Process:
    """A child in its own process group (so a terminal's Ctrl-C reaches only us, and stop()
    reaches its children too), its output in a log file."""

    def __init__(self, command: list[str], log_path: Path, env: dict):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = STOP_SECONDS) -> int:
        """SIGTERM to the process, wait, then SIGKILL to its whole group (also what it left behind)."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                self.wait(timeout)
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
        return self.proc.returncode


def start_server(target: Target, options: LoadtestOptions, log_path: Path) -> tuple[Process, str]:
    port = options.port or free_port()
    command = [sys.executable, "-m", "prunerec.serve.cli", "--model", str(target.folder), "--engine", options.engine,
               "--host", "127.0.0.1", "--port", str(port), *options.serve_args(), "--log-level", "warning"]
    return Process(command, log_path, child_env(options.server_env)), f"http://127.0.0.1:{port}"


def wait_ready(url: str, timeout: float, server: Process | None = None, role: str = "server") -> dict:
    """GET /ready until 200; a clear error (with the server's log tail) if it dies or takes too long."""
    until = time.monotonic() + timeout
    while True:
        if server is not None and server.exit_code() is not None:
            raise PrunerecError(f"the {role} server exited with code {server.exit_code()} before it was ready; "
                                f"last lines of {server.log_path}:\n{log_tail(server.log_path)}")
        try:
            response = requests.get(url + "/ready", headers=auth_headers(), timeout=10)
        except requests.RequestException as err:
            if server is None:
                raise PrunerecError(f"cannot reach {url}: {type(err).__name__}") from None
            response = None
        if response is not None and response.status_code == 200:
            return response.json()
        if response is not None and response.status_code == 401:
            raise PrunerecError(f"{url} wants an API key: set PRUNEREC_API_KEY")
        if time.monotonic() >= until:
            tail = f"; last lines of {server.log_path}:\n{log_tail(server.log_path)}" if server else ""
            raise PrunerecError(f"the {role} server at {url} was not ready after {timeout:.0f} s{tail}")
        time.sleep(0.5)


def fetch_metric_totals(url: str) -> dict[str, float]:
    try:
        response = requests.get(url + "/metrics", headers=auth_headers(), timeout=30)
        response.raise_for_status()
    except requests.RequestException as err:
        raise PrunerecError(f"cannot read {url}/metrics: {err}") from None
    return rp.metric_totals(response.text)


def locust_command(url: str, users: int, options: LoadtestOptions, csv_prefix: Path) -> list[str]:
    spawn_rate = options.spawn_rate or users
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users),
            "-r", f"{spawn_rate:g}", "-t", f"{max(1, round(options.duration_s))}s", "--host", url,
            "--csv", str(csv_prefix), "--only-summary", "--stop-timeout", f"{options.request_timeout + 5:g}",
            "--exit-code-on-error", "0"]


def run_locust(command: list[str], env: dict, log_path: Path, timeout: float) -> None:
    """One headless locust run; its CSV files are the result. Stopped (with its group) on any error."""
    locust = Process(command, log_path, env)
    try:
        code = locust.wait(timeout)
        if code is None:
            raise PrunerecError(f"locust did not finish within {timeout:.0f} s; last lines of {log_path}:\n"
                                f"{log_tail(log_path)}")
        if code != 0:
            raise PrunerecError(f"locust failed (exit code {code}); last lines of {log_path}:\n{log_tail(log_path)}")
    finally:
        locust.stop(timeout=10)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (like Ctrl-C) so that every finally block runs."""
    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- one model
def run_level(url: str, users: int, options: LoadtestOptions, data_dir: Path, out_dir: Path, role: str) -> dict:
    prefix = out_dir / "locust" / f"{role}-u{users}"
    env = child_env({"PRUNEREC_LOADTEST_DATA": str(data_dir), "PRUNEREC_LOADTEST_K": str(options.k)})
    before = fetch_metric_totals(url)
    run_locust(locust_command(url, users, options, prefix), env, out_dir / "logs" / f"{role}-u{users}-locust.log",
               timeout=options.duration_s + options.request_timeout + 120)
    after = fetch_metric_totals(url)
    stats = rp.read_csv_rows(Path(f"{prefix}_stats.csv").read_text())
    failures = rp.read_csv_rows(Path(f"{prefix}_failures.csv").read_text())
    return rp.level_summary(users, stats, failures, before, after)


def run_model(target: Target, options: LoadtestOptions, data_dir: Path, out_dir: Path, say: Callable[[str], None],
              on_level: Callable[[dict], None]) -> dict:
    """Start (or reach) one model's server, run every level, stop what was started."""
    result = {"source": target.source, "started": target.url is None, "levels": []}
    server = None
    try:
        if target.url is None:
            server, url = start_server(target, options, out_dir / "logs" / f"{target.role}-server.log")
            say(f"{target.role}: starting `prunerec serve --engine {options.engine}` on {target.folder} at {url}")
        else:
            url = target.url
            say(f"{target.role}: using {url}")
        started = time.monotonic()
        result["ready"] = wait_ready(url, options.ready_timeout, server, target.role)
        result["ready_seconds"] = round(time.monotonic() - started, 1) if server else None
        result["url"] = url
        engine = result["ready"].get("engine", {}).get("engine", "?")
        say(f"{target.role}: ready ({engine} engine" + (f", {result['ready_seconds']} s)" if server else ")"))
        for users in options.users:
            say(f"{target.role} u={users}: {options.duration_s} s of load ...")
            level = run_level(url, users, options, data_dir, out_dir, target.role)
            result["levels"].append(level)
            result["catalog_share"] = rp.overall_catalog_share(result["levels"])
            on_level(result)
            say(rp.level_line(target.role, level))
    finally:
        if server is not None:
            code = server.stop()
            say(f"{target.role}: server stopped (exit code {code})")
    return result


# ----------------------------------------------------------------------------- the whole test
def settings_of(options: LoadtestOptions, data_dir: Path, histories: int) -> dict:
    return {"engine": options.engine, "users": list(options.users), "duration_s": options.duration_s,
            "spawn_rate": options.spawn_rate, "k": options.k, "serve_args": " ".join(options.serve_args()),
            "data": str(data_dir), "histories": histories,
            "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_report(report: dict, out_dir: Path) -> None:
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "report.md", rp.markdown_report(report))


def run_loadtest(baseline: str, candidate: str, data_dir: str | Path, out_dir: str | Path, options: LoadtestOptions,
                 say: Callable[[str], None] = print) -> dict:
    """Check every input, then measure baseline and candidate in turn; writes OUT/report.json,
    report.md and the plots (report.json also after each level, marked incomplete)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    targets = [resolve_target(role, value, options.allow_remote)
               for role, value in zip(rp.ROLES, (baseline, candidate))]
    bodies, _ = bodies_from_data(data_dir, options.k)
    for target in targets:
        if target.url is not None:
            probe(target.url)
    report = {"settings": settings_of(options, data_dir, len(bodies)), "models": {}, "ratios": [],
              "time_to_first_result": rp.NO_STREAMING, "complete": False}

    def record(role: str) -> Callable[[dict], None]:
        def on_level(model: dict) -> None:
            report["models"][role] = model
            write_report(report, out_dir)
        return on_level

    with sigterm_as_interrupt():
        for target in targets:
            report["models"][target.role] = run_model(target, options, data_dir, out_dir, say, record(target.role))
    report["ratios"] = rp.level_ratios(report["models"]["baseline"]["levels"], report["models"]["candidate"]["levels"])
    report["complete"] = True
    write_report(report, out_dir)
    rp.write_plots(report, out_dir)
    return report
