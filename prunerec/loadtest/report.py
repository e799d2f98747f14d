"""The load-test report: option parsing, locust CSV rows and Prometheus text turned into numbers
per level, candidate/baseline ratios, report.md and the plots (matplotlib, Agg). No processes,
no network: everything here takes text or dicts."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from prunerec.errors import PrunerecError
from prunerec.loadtest.options import MAX_DURATION_S, MAX_USERS, parse_duration, parse_users  # noqa: F401
from prunerec.loadtest.workload import (
    ANSWER_MALFORMED,
    ANSWER_NOT_CATALOG,
    ANSWER_WRONG_COUNT,
)
from prunerec.plots import pyplot, save_png

ROLES = ("baseline", "candidate")
NO_STREAMING = "n/a (no streaming)"
PLOTS = ("latency.png", "throughput.png")
RECOMMEND_ROUTE = "/v1/recommend"


# ----------------------------------------------------------------------------- options
# ----------------------------------------------------------------------------- locust CSV
def read_csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def aggregated_row(stats_rows: list[dict[str, str]]) -> dict[str, str]:
    """The "Aggregated" row of locust's *_stats.csv (all requests of the run)."""
    for row in stats_rows:
        if row.get("Name") == "Aggregated":
            return row
    raise PrunerecError("locust's stats CSV has no Aggregated row (did locust run?)")


def csv_number(value: str | None) -> float | None:
    """A CSV cell as a number; locust writes "N/A" for percentiles of no requests."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def failure_counts(failure_rows: list[dict[str, str]]) -> dict[str, int]:
    """Failures of locust's *_failures.csv by kind: answer checks (the locustfile's messages)
    and everything else (HTTP status >= 400, connection errors) as "http"."""
    counts = {"http": 0, "not_catalog": 0, "malformed": 0, "wrong_count": 0}
    kinds = {ANSWER_NOT_CATALOG: "not_catalog", ANSWER_MALFORMED: "malformed", ANSWER_WRONG_COUNT: "wrong_count"}
    for row in failure_rows:
        kind = next((name for message, name in kinds.items() if message in row.get("Error", "")), "http")
        counts[kind] += int(row.get("Occurrences") or 0)
    return counts


# ----------------------------------------------------------------------------- Prometheus text
def metric_totals(prometheus_text: str) -> dict[str, float]:
    """The server counters a level reads before and after: engine tokens, recommend requests
    (all statuses) and those answered 200."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"engine_tokens": 0.0, "recommend_requests": 0.0, "recommend_ok": 0.0}
    for family in text_string_to_metric_families(prometheus_text):
        for sample in family.samples:
            if sample.name == "prunerec_engine_tokens_total":
                totals["engine_tokens"] += sample.value
            elif sample.name == "prunerec_http_requests_total" and sample.labels.get("route") == RECOMMEND_ROUTE:
                totals["recommend_requests"] += sample.value
                if sample.labels.get("status") == "200":
                    totals["recommend_ok"] += sample.value
    return totals


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def level_summary(users: int, stats_rows: list[dict[str, str]], failure_rows: list[dict[str, str]],
                  metrics_before: dict[str, float], metrics_after: dict[str, float]) -> dict:
    """One concurrency level of one model: locust's aggregated numbers, the answer check, and
    the server's own counts over the level (after - before)."""
    row = aggregated_row(stats_rows)
    requests, failures = int(row["Request Count"]), int(row["Failure Count"])
    rps = csv_number(row["Requests/s"]) or 0.0
    kinds = failure_counts(failure_rows)
    answered = requests - kinds["http"]
    elapsed_s = requests / rps if rps else None   # locust's own measuring window
    server = {key: metrics_after[key] - metrics_before[key] for key in metrics_after}
    tokens = server["engine_tokens"]
    return {
        "users": users,
        "requests": requests,
        "failures": failures,
        "failure_share": _share(failures, requests),
        "failure_kinds": kinds,
        "rps": rps,
        "p50_ms": csv_number(row["50%"]),
        "p90_ms": csv_number(row["90%"]),
        "p99_ms": csv_number(row["99%"]),
        "avg_ms": csv_number(row["Average Response Time"]),
        "max_ms": csv_number(row["Max Response Time"]),
        "elapsed_s": elapsed_s,
        "answered": answered,
        "catalog_share": _share(answered - kinds["not_catalog"] - kinds["malformed"], answered),
        "engine_tokens": tokens,
        "tokens_per_s": tokens / elapsed_s if elapsed_s else None,
        "tokens_per_request": _share(tokens, server["recommend_requests"]),
        "server_requests": server["recommend_requests"],
        "server_ok": server["recommend_ok"],
    }


def overall_catalog_share(levels: list[dict]) -> float | None:
    answered = sum(level["answered"] for level in levels)
    real = sum(level["catalog_share"] * level["answered"] for level in levels if level["catalog_share"] is not None)
    return _share(real, answered)


# ----------------------------------------------------------------------------- ratios
def ratio(candidate: float | None, baseline: float | None) -> float | None:
    if candidate is None or baseline is None or baseline == 0:
        return None
    return candidate / baseline


def level_ratios(baseline_levels: list[dict], candidate_levels: list[dict]) -> list[dict]:
    """candidate / baseline at each level both models finished: throughput and tokens/s (> 1:
    the candidate serves more), p50 and p99 latency (< 1: the candidate answers faster)."""
    by_users = {level["users"]: level for level in baseline_levels}
    rows = []
    for cand in candidate_levels:
        base = by_users.get(cand["users"])
        if base is None:
            continue
        rows.append({"users": cand["users"], "throughput": ratio(cand["rps"], base["rps"]),
                     "p50_latency": ratio(cand["p50_ms"], base["p50_ms"]),
                     "p99_latency": ratio(cand["p99_ms"], base["p99_ms"]),
                     "tokens_per_s": ratio(cand["tokens_per_s"], base["tokens_per_s"])})
    return rows


# ----------------------------------------------------------------------------- text
def _fmt(value, spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def level_line(role: str, level: dict) -> str:
    """The progress line printed when a level finishes."""
    return (f"{role} u={level['users']}: {level['rps']:.2f} req/s, p50 {_fmt(level['p50_ms'], '.0f')} ms, "
            f"p99 {_fmt(level['p99_ms'], '.0f')} ms, {level['failures']} failures of {level['requests']}, "
            f"{_fmt(level['tokens_per_s'], '.0f')} tokens/s, catalog items {_pct(level['catalog_share'])}")


def headline_table(ratios: list[dict]) -> str:
    """The candidate/baseline table printed at the end."""
    lines = [f"{'users':>5}  {'throughput':>10}  {'p50 latency':>11}  {'p99 latency':>11}  {'tokens/s':>8}"]
    for row in ratios:
        lines.append(f"{row['users']:>5}  {_fmt(row['throughput'], '.2f', 'x'):>10}  "
                     f"{_fmt(row['p50_latency'], '.2f', 'x'):>11}  {_fmt(row['p99_latency'], '.2f', 'x'):>11}  "
                     f"{_fmt(row['tokens_per_s'], '.2f', 'x'):>8}")
    return "\n".join(lines)


def _model_section(role: str, model: dict) -> list[str]:
    engine = (model.get("ready") or {}).get("engine") or {}
    how = "started by the load test" if model.get("started") else "given URL"
    lines = [f"## {role}: `{model['source']}`", "",
             f"{how}; engine {engine.get('engine', 'unknown')}"
             + (f", ready in {model['ready_seconds']:.1f} s" if model.get("ready_seconds") is not None else "")
             + f"; answers with only real catalog items: {_pct(model.get('catalog_share'))}", ""]
    rows = [[str(lv["users"]), f"{lv['rps']:.2f}", _fmt(lv["p50_ms"], ".0f"), _fmt(lv["p90_ms"], ".0f"),
             _fmt(lv["p99_ms"], ".0f"), f"{lv['failures']} ({_pct(lv['failure_share'])})",
             _fmt(lv["tokens_per_s"], ".0f"), str(lv["requests"]), _pct(lv["catalog_share"])]
            for lv in model["levels"]]
    return lines + _markdown_table(["users", "req/s", "p50 ms", "p90 ms", "p99 ms", "failures", "tokens/s",
                                    "requests", "catalog items"], rows)


def markdown_report(report: dict) -> str:
    s = report["settings"]
    lines = ["# Load test: candidate vs baseline", "",
             (f"- engine `{s['engine']}`, users {s['users']}, {s['duration_s']} s per level, spawn rate "
              f"{s['spawn_rate'] or 'all users within 1 s'}, k {s['k']}"),
             f"- serve settings (both models): {s['serve_args']}",
             (f"- {s['histories']} request histories from the test split of `{s['data']}`, each user sending the "
              f"next as soon as its previous answer arrives"),
             f"- machine: {s['machine']}; locust ran on the same machine",
             f"- time to first result: {NO_STREAMING}", ""]
    for role in ROLES:
        if role in report["models"]:
            lines += _model_section(role, report["models"][role]) + [""]
    if report.get("ratios"):
        lines += ["## candidate / baseline", "",
                  "throughput and tokens/s above 1: the candidate serves more; latency below 1: it answers faster.", ""]
        lines += _markdown_table(["users", "throughput", "p50 latency", "p99 latency", "tokens/s"],
                                 [[str(r["users"]), _fmt(r["throughput"], ".2f", "x"),
                                   _fmt(r["p50_latency"], ".2f", "x"), _fmt(r["p99_latency"], ".2f", "x"),
                                   _fmt(r["tokens_per_s"], ".2f", "x")]
                                  for r in report["ratios"]])
        lines.append("")
    if report.get("complete") is False:
        lines += ["**Incomplete**: the run stopped before every level finished.", ""]
    lines += ["## What the numbers are", "",
              "- req/s: requests locust completed per second (failed ones included), over its measuring window.",
              ("- p50/p90/p99: locust's response-time percentiles in ms (client side, over loopback; locust rounds "
               "times above 100 ms to 2 significant digits)."),
              ("- failures: HTTP errors (503 busy, 504 timeout, ...) and answers that failed the check (not k items, "
               "an id that is not in the catalog or whose title differs)."),
              ("- tokens/s: growth of the server's `prunerec_engine_tokens_total` over the level (tokens of every "
               "beam the constrained search returned, plus free-generation tokens) over locust's window."),
              "- catalog items: share of 200 answers whose items were all real catalog items (must be 100%).",
              "", "## Plots", ""] + [f"![{p}]({p})" for p in PLOTS]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def _series(model: dict, key: str) -> tuple[list[int], list[float]]:
    levels = [lv for lv in model["levels"] if lv.get(key) is not None]
    return [lv["users"] for lv in levels], [lv[key] for lv in levels]


def _users_axis(ax, users: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(users, [str(u) for u in users])
    ax.set_xlabel("concurrent users")
    ax.grid(alpha=0.3)


COLORS = {"baseline": "tab:blue", "candidate": "tab:orange"}


def plot_latency(report: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for role, model in report["models"].items():
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            xs, ys = _series(model, key)
            ax.plot(xs, ys, style, marker="o", color=COLORS[role], label=f"{role} {key[:3]}")
    _users_axis(ax, report["settings"]["users"])
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency vs concurrency (solid p50, dashed p99)")
    ax.legend(fontsize=8)
    save_png(fig, path)


def plot_throughput(report: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key, label in ((axes[0], "rps", "requests/s"), (axes[1], "tokens_per_s", "engine tokens/s")):
        for role, model in report["models"].items():
            xs, ys = _series(model, key)
            ax.plot(xs, ys, marker="o", color=COLORS[role], label=role)
        _users_axis(ax, report["settings"]["users"])
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle("Throughput vs concurrency")
    save_png(fig, path)


def write_plots(report: dict, out_dir: Path) -> None:
    plot_latency(report, out_dir / PLOTS[0])
    plot_throughput(report, out_dir / PLOTS[1])
