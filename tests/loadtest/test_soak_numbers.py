"""bench/soak.py's numbers on hand-made request logs and memory samples."""
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def soak():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("soak_bench", BENCH / "soak.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_latency_log_and_minutes(soak):
    text = "100.5,10.0,1\n130.0,30.0,1\n159.9,20.0,0\n160.0,40.0,1\n\n219.0,50.0,1\n400.0,1.0,1\n"
    log = soak.read_latency_log(text)
    assert log.shape == (6, 3)
    minutes = soak.per_minute(log, start_s=100.0, minutes=3)
    assert [m["requests"] for m in minutes] == [3, 2, 0]    # 400.0 falls after minute 3
    assert [m["failures"] for m in minutes] == [1, 0, 0]
    assert minutes[0]["p50_ms"] == pytest.approx(20.0)       # the failed request's latency is left out
    assert minutes[0]["p99_ms"] == pytest.approx(np.percentile([10.0, 30.0], 99))
    assert minutes[1]["p50_ms"] == pytest.approx(45.0)
    assert minutes[2]["p99_ms"] is None and minutes[0]["rps"] == pytest.approx(3 / 60)


def test_starts_nearby_counts_requests_started_in_the_same_wave(soak):
    # starts: 10.000, 10.010, 10.020 (one wave), 11.000, 12.000 (alone); end = start + latency
    log = np.array([[10.5, 500.0, 1], [10.11, 100.0, 1], [10.04, 20.0, 1], [11.2, 200.0, 1], [12.001, 1.0, 1]])
    assert soak.starts_nearby(log, window_s=0.03).tolist() == [2, 2, 2, 0, 0]
    assert soak.starts_nearby(log, window_s=0.015).tolist() == [1, 2, 1, 0, 0]
    assert soak.per_minute(log, start_s=0.0, minutes=1)[0]["starts_nearby"] == pytest.approx(6 / 5)


def test_empty_log(soak):
    assert soak.read_latency_log("").shape == (0, 3)
    assert soak.per_minute(soak.read_latency_log(""), 0.0, 2)[0]["requests"] == 0


def test_cpu_steal_from_proc_stat(soak):
    stat = "cpu  519176 0 51719 262664 1213 0 1662 22572 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"
    assert soak.cpu_steal_seconds(stat, 100) == pytest.approx(225.72)  # the 8th value of the "cpu" line
    assert soak.cpu_steal_seconds("cpu0 1 2 3\n", 100) is None and soak.cpu_steal_seconds("", 100) is None


def test_machine_per_minute_steal_and_stalls(soak):
    samples = [{"t": t, "steal_s": steal} for t, steal in [(0.0, 10.0), (30.0, 10.5), (60.0, 12.0), (120.0, 12.0)]]
    samples.append({"t": 125.0, "steal_s": None})  # a sample off Linux is skipped
    stalls = [(10.0, 80.0), (50.0, 700.0), (65.0, 55.0)]
    rows = soak.machine_per_minute(samples, stalls, start_s=0.0, minutes=3)
    assert rows[0] == {"steal_s": pytest.approx(2.0), "longest_stall_ms": 700.0}
    assert rows[1] == {"steal_s": pytest.approx(0.0), "longest_stall_ms": 55.0}
    assert rows[2] == {"steal_s": None, "longest_stall_ms": 0.0}  # no sample after minute 3 ends


def test_hiccup_meter_records_a_stall(soak):
    meter = soak.HiccupMeter()
    meter.start()
    time.sleep(0.05)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1.0)  # this thread keeps the GIL: the meter cannot run, as on a stalled machine
    try:
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass
    finally:
        sys.setswitchinterval(switch)
    time.sleep(0.05)
    stalls = meter.stop()
    assert stalls and max(ms for _, ms in stalls) >= 200


def minutes_of(p99s, failures=0):
    return [{"minute": i + 1, "requests": 100, "failures": failures if i == 0 else 0, "rps": 1.0,
             "p50_ms": 1.0, "p99_ms": p99} for i, p99 in enumerate(p99s)]


def memory_of(values, start=0.0):
    return [{"t": start + 30 * i, "tree_rss_mib": v, "processes": {}} for i, v in enumerate(values)]


def test_verdict_passes_on_steady_numbers(soak):
    result = soak.verdict(minutes_of([50, 100, 100, 110]), memory_of([900, 950, 1000, 1000, 1000, 1040]), 0.0)
    assert result["passed"], result["checks"]
    assert result["memory_after_2_min_mib"] == 1000     # first sample at >= 120 s
    assert result["memory_drift"] == pytest.approx(0.04)
    assert result["p99_drift"] == pytest.approx(0.10)   # last minute against minute 2, not minute 1


@pytest.mark.parametrize("minutes, memory, failed_check", [
    (minutes_of([100, 100, 100], failures=1), memory_of([1000] * 6), "0 failed requests"),
    (minutes_of([100, 100, 100]), memory_of([1000] * 5 + [1060]), "memory at the end"),
    (minutes_of([100, 100, 125]), memory_of([1000] * 6), "p99 of the last minute"),
    (minutes_of([100, 100, 70]), memory_of([1000] * 6), "p99 of the last minute"),   # within is both ways
    (minutes_of([100, 100, 100]), memory_of([1000] * 3), "memory at the end"),       # never reached 2 min
])
def test_verdict_fails_each_goal(soak, minutes, memory, failed_check):
    result = soak.verdict(minutes, memory, 0.0)
    assert not result["passed"]
    failed = [check for check, ok in result["checks"].items() if not ok]
    assert len(failed) == 1 and failed[0].startswith(failed_check), failed


def test_a_rerun_keeps_engines_soaked_with_the_same_settings(soak, tmp_path):
    import json

    settings = {"model": "m", "minutes": 20, "started_at": "earlier"}
    path = tmp_path / "soak.json"
    assert soak.finished_engines(path, settings) == []
    path.write_text(json.dumps({"settings": settings, "engines": [{"engine": "vllm"}]}))
    assert soak.finished_engines(path, {**settings, "started_at": "now"}) == [{"engine": "vllm"}]
    assert soak.finished_engines(path, {**settings, "minutes": 3}) == []
