"""bench/overload.py end to end on the torch engine with seconds-long phases: the real server,
locust with the overload users, the verdict and the files it writes."""
import json
import os
import subprocess
import sys

from tests.serve.conftest import REPO


def test_overload_bench_smoke(model_dir, data_dir, tmp_path):
    out = tmp_path / "overload"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "overload.py"), "--engine", "torch", "--model",
                           str(model_dir), "--data", str(data_dir), "--users", "2", "--duration", "3",
                           "--overload-users", "16", "--overload-duration", "3", "--max-concurrency", "1",
                           "--max-queue", "2", "--k", "5", "--out", str(out)],
                          capture_output=True, text=True, timeout=240, env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "overload.json").read_text())
    assert report["complete"] and report["verdict"]["passed"] and report["server_exit_code"] == 0
    steady, overload = report["phases"]
    assert steady["users"] == 2 and steady["accepted"] > 0 and steady["overload_503_retry_after"] == 0
    assert overload["overload_503_retry_after"] > 0 and overload["failed_accepted"] == 0
    # locust's count of overload answers is the server's own count of refusals
    assert overload["server"]["rejected"].get("busy", 0) + overload["server"]["rejected"].get("queue_timeout", 0) \
        == overload["overload_503_retry_after"]
    assert report["memory_ready"]["server_rss_mib"] > 0 and overload["memory_after"]["tree_pss_mib"] > 0
    assert "Verdict: PASSED" in (tmp_path / "overload.md").read_text()
    assert (out / "logs" / "server.log").is_file() and (out / "locust" / "overload_stats.csv").is_file()
