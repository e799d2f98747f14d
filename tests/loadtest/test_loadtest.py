"""`prunerec loadtest` for real on the torch engine: two servers started and stopped in turn, the
report consistent with locust's CSV and the servers' counters; SIGTERM stops everything it
started; bad input gets a clear message and a non-zero exit."""
import json
import re
import signal
import subprocess
import time

import pytest
import requests
from click.testing import CliRunner

from prunerec.cli import main
from prunerec.io import free_port
from tests.loadtest.helpers import (
    check_report,
    loadtest_command,
    loadtest_env,
    run_loadtest,
)
from tests.serve.conftest import REPO


def test_torch_loadtest_report_matches_locust(model_dir, data_dir, tmp_path):
    out = tmp_path / "report"
    done = run_loadtest(model_dir, model_dir, data_dir, out, "--engine", "torch", "--users", "1,2",
                        "--duration", "2s", "--k", "5", "--processes", "2")
    report = check_report(out, [1, 2], done.stdout)
    for role in ("baseline", "candidate"):
        assert report["models"][role]["ready"]["engine"]["engine"] == "torch"
        assert report["models"][role]["ready"]["engine"]["processes"] == 2
    assert report["settings"]["serve_args"].startswith("--beams 20 --max-concurrency 16")
    assert "--processes 2" in report["settings"]["serve_args"]
    for line in ("baseline u=1: 2 s of load", "candidate u=2:", "baseline: server stopped (exit code 0)"):
        assert line in done.stderr
    assert "throughput" in done.stdout and "Traceback" not in done.stderr


def test_sigterm_stops_the_server_it_started(model_dir, data_dir, tmp_path):
    out = tmp_path / "report"
    log = tmp_path / "loadtest.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(loadtest_command(model_dir, model_dir, data_dir, out, "--engine", "torch", "--users",
                                                 "1", "--duration", "60s"),
                                cwd=REPO, env=loadtest_env(), stdout=sink, stderr=subprocess.STDOUT)
    try:
        until = time.monotonic() + 120
        while "u=1: 60 s of load" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < until, log.read_text()
            time.sleep(0.25)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "baseline: server stopped (exit code 0)" in text and "interrupted" in text and "Traceback" not in text
    url = re.search(r"at (http://127\.0\.0\.1:(\d+))", text)
    with pytest.raises(requests.ConnectionError):
        requests.get(url[1] + "/health", timeout=5)
    for pattern in (str(out), f"--port {url[2]}"):  # locust (its --csv is under out), the server
        survivors = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout
        assert survivors.split() == [], f"still running: {pattern}"
    assert not (out / "report.json").exists() or not json.loads((out / "report.json").read_text())["complete"]


@pytest.fixture
def cli():
    def invoke(*args):
        result = CliRunner().invoke(main, ["loadtest", *map(str, args)])
        assert result.exit_code != 0 and "Traceback" not in result.output
        return result.output
    return invoke


def test_bad_input(cli, model_dir, data_dir, tmp_path):
    common = ["--data", data_dir, "--out", tmp_path / "out"]
    both = ["--baseline", model_dir, "--candidate", model_dir, *common]
    assert "--users '1,x': write a comma-separated list" in cli(*both, "--users", "1,x")
    assert "each level must be between 1 and 256" in cli(*both, "--users", "1,1000")
    assert "--duration '10 minutes'" in cli(*both, "--duration", "10 minutes")
    unreachable = f"http://127.0.0.1:{free_port()}"
    assert f"cannot reach {unreachable}" in cli("--baseline", model_dir, "--candidate", unreachable, *common)
    assert "no such model folder" in cli("--baseline", tmp_path / "nope", "--candidate", model_dir, *common)
    assert "--allow-remote" in cli("--baseline", "http://192.0.2.1:8000", "--candidate", model_dir, *common)
    assert "--enforce-eager applies to --engine vllm only" in cli(*both, "--engine", "torch", "--enforce-eager")
    assert "--processes applies to --engine torch only" in cli(*both, "--engine", "vllm", "--processes", "2")
    assert not (tmp_path / "out").exists()  # nothing started, nothing written
