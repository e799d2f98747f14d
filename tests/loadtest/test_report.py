"""The pure report code on hand-made locust CSV and Prometheus text: which row and columns the
numbers come from, failure kinds, the answer check, ratios, option parsing, markdown, plots."""
import pytest

from prunerec.errors import PrunerecError
from prunerec.loadtest import report as rp
from prunerec.loadtest.workload import (
    ANSWER_MALFORMED,
    ANSWER_NOT_CATALOG,
    ANSWER_WRONG_COUNT,
    bodies_from_jsonl,
    check_answer,
)

HEADER = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
          "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
          "99.99%,100%")
# a named row that differs from the Aggregated one, and percentiles that differ from the median column
STATS = (f"{HEADER}\n"
         "POST,/v1/recommend,90,3,41,50.5,20.1,300.2,1200.0,30.0,1.0,40,45,50,55,60,70,80,90,99,99,99\n"
         "GET,/other,10,0,5,5.0,4.0,6.0,10.0,3.3,0.0,5,5,5,5,6,6,6,6,6,6,6\n"
         ",Aggregated,100,4,42,48.25,4.0,300.2,1100.0,25.0,1.0,44,47,51,56,61,71,81,95,99,99,99\n")
FAILURES = "\n".join([
    "Method,Name,Error,Occurrences,First Seen,Last Seen",
    f"POST,/v1/recommend,CatchResponseError('{ANSWER_NOT_CATALOG}'),1,2026-01-01T00:00:00Z,2026-01-01T00:00:01Z",
    f"POST,/v1/recommend,CatchResponseError('{ANSWER_WRONG_COUNT}'),1,2026-01-01T00:00:00Z,2026-01-01T00:00:01Z",
    "POST,/v1/recommend,CatchResponseError('HTTP 503'),2,2026-01-01T00:00:00Z,2026-01-01T00:00:01Z",
]) + "\n"


def _metrics(tokens, ok, busy=0):
    return "\n".join([
        "# TYPE prunerec_http_requests_total counter",
        f'prunerec_http_requests_total{{method="POST",route="/v1/recommend",status="200"}} {ok}',
        f'prunerec_http_requests_total{{method="POST",route="/v1/recommend",status="503"}} {busy}',
        'prunerec_http_requests_total{method="GET",route="/ready",status="200"} 7.0',
        "# TYPE prunerec_engine_tokens_total counter",
        f"prunerec_engine_tokens_total {tokens}",
    ]) + "\n"


def _level():
    before = rp.metric_totals(_metrics(1000.0, 5.0))
    after = rp.metric_totals(_metrics(13000.0, 103.0, busy=2))
    return rp.level_summary(4, rp.read_csv_rows(STATS), rp.read_csv_rows(FAILURES), before, after)


def test_metric_totals():
    assert rp.metric_totals(_metrics(12.0, 3.0, busy=1)) == {"engine_tokens": 12.0, "recommend_requests": 4.0,
                                                               "recommend_ok": 3.0}
    assert rp.metric_totals("") == {"engine_tokens": 0.0, "recommend_requests": 0.0, "recommend_ok": 0.0}


def test_level_summary_takes_the_aggregated_row_and_percentile_columns():
    level = _level()
    assert (level["users"], level["requests"], level["failures"], level["rps"]) == (4, 100, 4, 25.0)
    assert (level["p50_ms"], level["p90_ms"], level["p99_ms"]) == (44.0, 61.0, 95.0)
    assert (level["avg_ms"], level["max_ms"]) == (48.25, 300.2)
    assert level["failure_share"] == 0.04
    assert level["failure_kinds"] == {"http": 2, "not_catalog": 1, "malformed": 0, "wrong_count": 1}
    assert level["answered"] == 98 and level["catalog_share"] == pytest.approx(97 / 98)
    assert level["elapsed_s"] == 4.0                           # 100 requests at 25 req/s
    assert level["engine_tokens"] == 12000.0 and level["tokens_per_s"] == 3000.0
    assert level["server_requests"] == 100.0 and level["server_ok"] == 98.0 and level["tokens_per_request"] == 120.0


def test_no_requests_gives_none_not_a_crash():
    empty = HEADER + "\n,Aggregated,0,0,0,0,0,0,0,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n"
    zero = rp.metric_totals("")
    level = rp.level_summary(1, rp.read_csv_rows(empty), [], zero, zero)
    assert level["requests"] == 0 and level["p50_ms"] is None and level["p99_ms"] is None
    assert level["catalog_share"] is None and level["tokens_per_s"] is None and level["failure_share"] is None
    assert "n/a" in rp.level_line("baseline", level)
    with pytest.raises(PrunerecError, match="Aggregated"):
        rp.aggregated_row(rp.read_csv_rows(HEADER + "\n"))


def test_ratios_per_level():
    base = [{"users": 1, "rps": 10.0, "p50_ms": 100.0, "p99_ms": 200.0, "tokens_per_s": 1000.0},
            {"users": 4, "rps": 20.0, "p50_ms": 200.0, "p99_ms": 400.0, "tokens_per_s": 0.0}]
    cand = [{"users": 1, "rps": 25.0, "p50_ms": 40.0, "p99_ms": 100.0, "tokens_per_s": 2500.0},
            {"users": 4, "rps": 30.0, "p50_ms": None, "p99_ms": 100.0, "tokens_per_s": 50.0},
            {"users": 16, "rps": 1.0, "p50_ms": 1.0, "p99_ms": 1.0, "tokens_per_s": 1.0}]  # baseline lacks 16
    ratios = rp.level_ratios(base, cand)
    assert ratios == [{"users": 1, "throughput": 2.5, "p50_latency": 0.4, "p99_latency": 0.5, "tokens_per_s": 2.5},
                      {"users": 4, "throughput": 1.5, "p50_latency": None, "p99_latency": 0.25, "tokens_per_s": None}]
    table = rp.headline_table(ratios).splitlines()
    assert table[1].split() == ["1", "2.50x", "0.40x", "0.50x", "2.50x"]
    assert table[2].split() == ["4", "1.50x", "n/a", "0.25x", "n/a"]


@pytest.mark.parametrize("text, seconds", [("90", 90), ("60s", 60), ("2m", 120), ("1m30s", 90), (" 5S ", 5),
                                           ("1h", 3600)])
def test_parse_duration(text, seconds):
    assert rp.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "0", "1.5m", "-5", "ten", "61m", "2h"])
def test_parse_duration_refuses(text):
    with pytest.raises(PrunerecError, match="--duration"):
        rp.parse_duration(text)


def test_parse_users():
    assert rp.parse_users("16, 1,4") == [1, 4, 16]
    for bad, needle in (("1,x", "comma-separated"), ("", "comma-separated"), ("0,4", "between 1 and"),
                        ("1,999", "between 1 and"), ("4,4", "repeated"), ("-1", "comma-separated")):
        with pytest.raises(PrunerecError, match=needle):
            rp.parse_users(bad)


def test_check_answer():
    titles = ("Halo", "Zelda", "Portal")
    good = {"items": [{"id": 2, "title": "Portal"}, {"id": 0, "title": "Halo"}]}
    assert check_answer(good, 2, titles) is None
    assert check_answer(good, 3, titles) == ANSWER_WRONG_COUNT
    assert check_answer(good, 3, None) == ANSWER_WRONG_COUNT
    assert check_answer({"items": [{"id": 1, "title": "Halo"}]}, 1, titles) == ANSWER_NOT_CATALOG
    assert check_answer({"items": [{"id": 3, "title": "Halo"}]}, 1, titles) == ANSWER_NOT_CATALOG
    assert check_answer({"items": [{"id": True, "title": "Zelda"}]}, 1, titles) == ANSWER_NOT_CATALOG
    assert check_answer({"items": [{"id": 9, "title": "x"}]}, 1, None) is None   # no catalog: count only
    for body in (None, [], {"detail": "x"}, {"items": "Halo"}, {"items": [1]}):
        assert check_answer(body, 1, titles) == ANSWER_MALFORMED


def test_bodies_from_jsonl(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text('{"history": [1, 2]}\n\n{"history": ["Halo"], "k": 3}\n')
    assert bodies_from_jsonl(path, k=5) == [{"history": [1, 2], "k": 5}, {"history": ["Halo"], "k": 3}]
    path.write_text('{"history": []}\n')
    with pytest.raises(PrunerecError, match=":1: expected"):
        bodies_from_jsonl(path)


def _report():
    level = _level()
    other = {**level, "users": 8, "rps": 40.0, "p50_ms": 80.0, "p99_ms": 150.0, "tokens_per_s": 4000.0}
    models = {"baseline": {"source": "runs/base", "started": True, "ready_seconds": 12.0,
                           "ready": {"engine": {"engine": "vllm"}}, "levels": [level, other], "catalog_share": 1.0},
              "candidate": {"source": "http://127.0.0.1:8001", "started": False,
                            "ready": {"engine": {"engine": "vllm"}},
                            "levels": [{**other, "users": 4}, {**level, "users": 8}], "catalog_share": 1.0}}
    settings = {"engine": "vllm", "users": [4, 8], "duration_s": 60, "spawn_rate": None, "k": 10,
                "serve_args": "--beams 20", "data": "data/Games", "histories": 100, "machine": "2 CPU cores"}
    return {"settings": settings, "models": models, "ratios": rp.level_ratios(models["baseline"]["levels"],
                                                                              models["candidate"]["levels"]),
            "time_to_first_result": rp.NO_STREAMING, "complete": True}


def test_markdown_report():
    text = rp.markdown_report(_report())
    assert "## baseline: `runs/base`" in text and "## candidate: `http://127.0.0.1:8001`" in text
    assert "| 4 | 25.00 | 44 | 61 | 95 | 4 (4.0%) | 3000 | 100 | 99.0% |" in text
    assert "| 4 | 1.60x | 1.82x | 1.58x | 1.33x |" in text      # candidate/baseline at 4 users
    assert "| 8 | 0.62x | 0.55x | 0.63x | 0.75x |" in text
    assert "time to first result: n/a (no streaming)" in text and "Incomplete" not in text
    assert "![latency.png](latency.png)" in text


def test_plots_are_written(tmp_path):
    rp.write_plots(_report(), tmp_path)
    for name in rp.PLOTS:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(rp.PLOTS)   # no temporary files left
