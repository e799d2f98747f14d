"""`prunerec loadtest --engine vllm`: the baseline's vLLM server started by the load test (vllm-cpu
here), the candidate a running torch server given by URL; the report consistent with locust's
CSV and the servers' counters, every answer a real catalog item."""
import pytest

from tests.loadtest.helpers import check_report, run_loadtest

pytest.importorskip("vllm")

VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}


def test_vllm_loadtest_report_matches_locust(model_dir, data_dir, start_server, tmp_path):
    candidate = start_server(["--model", model_dir, "--engine", "torch", "--log-level", "warning"])
    candidate.wait_ready()
    out = tmp_path / "report"
    done = run_loadtest(model_dir, candidate.url, data_dir, out, "--engine", "vllm", "--enforce-eager",
                        "--users", "1,2", "--duration", "3s", "--k", "5", env=VLLM_ENV, timeout=500)
    report = check_report(out, [1, 2], done.stdout)
    assert report["models"]["baseline"]["ready"]["engine"]["engine"] == "vllm"
    assert report["models"]["candidate"]["ready"]["engine"]["engine"] == "torch"
    assert not report["models"]["candidate"]["started"] and candidate.proc.poll() is None  # a URL is left running
