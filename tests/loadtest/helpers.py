"""Run `prunerec loadtest` as a real process and check its report against locust's own CSV."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.serve.conftest import REPO


def loadtest_command(baseline, candidate, data_dir, out, *options) -> list[str]:
    return [sys.executable, "-m", "prunerec.cli", "loadtest", "--baseline", str(baseline), "--candidate",
            str(candidate), "--data", str(data_dir), "--out", str(out), *map(str, options)]


def loadtest_env(extra: dict | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_loadtest(*args, env: dict | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    done = subprocess.run(loadtest_command(*args), cwd=REPO, env=loadtest_env(env), capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-6000:]}"
    return done


def _aggregated(path: Path) -> dict:
    with open(path, newline="") as rows:
        return next(row for row in csv.DictReader(rows) if row["Name"] == "Aggregated")


def check_report(out: Path, users: list[int], stdout: str) -> dict:
    """report.json against locust's CSV files and the server's counters; every answer real."""
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] and report["time_to_first_result"] == "n/a (no streaming)"
    for role, model in report["models"].items():
        assert [level["users"] for level in model["levels"]] == users
        assert model["catalog_share"] == 1.0
        for level in model["levels"]:
            row = _aggregated(out / "locust" / f"{role}-u{level['users']}_stats.csv")
            assert level["requests"] == int(row["Request Count"]) > 0
            assert level["failures"] == int(row["Failure Count"]) == 0
            assert level["rps"] == pytest.approx(float(row["Requests/s"]))
            assert level["p50_ms"] == float(row["50%"]) and level["p99_ms"] == float(row["99%"])
            assert level["catalog_share"] == 1.0 and level["answered"] == level["requests"]
            # the server answered exactly the requests locust counted (in-flight ones finish at the end)
            assert level["server_requests"] == level["server_ok"] == level["requests"]
            assert level["tokens_per_request"] > 20      # 20 beams of a few tokens each
            assert level["tokens_per_s"] == pytest.approx(level["engine_tokens"] * level["rps"] / level["requests"])
        if model["started"]:  # the server the load test started is gone
            with pytest.raises(requests.ConnectionError):
                requests.get(model["url"] + "/health", timeout=5)
    base, cand = report["models"]["baseline"]["levels"], report["models"]["candidate"]["levels"]
    for ratio, b, c in zip(report["ratios"], base, cand):
        assert ratio["throughput"] == pytest.approx(c["rps"] / b["rps"])
        assert ratio["p99_latency"] == pytest.approx(c["p99_ms"] / b["p99_ms"])
        assert f"{ratio['throughput']:.2f}x" in stdout
    markdown = (out / "report.md").read_text()
    assert "## candidate / baseline" in markdown and "n/a (no streaming)" in markdown
    for name in ("latency.png", "throughput.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    return report
