"""The tables of bench/scoring_cost.py: each scoring pass's time and memory, and each method's
estimated total."""
from __future__ import annotations

METHOD_PASSES = {
    "prunerec (layers: greedy-ppl)": ("prunerec/heads", "prunerec/hidden", "prunerec/mlp", "prunerec/layers"),
    "wanda-sp (layers: shortgpt)": ("wanda-sp/heads", "wanda-sp/hidden", "wanda-sp/mlp", "shortgpt/layers"),
    "magnitude (layers: shortgpt)": ("magnitude/heads", "magnitude/hidden", "magnitude/mlp", "shortgpt/layers"),
}


def mib(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def method_totals(passes: list[dict]) -> dict:
    by = {p["name"]: p for p in passes}
    out = {}
    for method, names in METHOD_PASSES.items():
        rows = [by[n] for n in names]
        out[method] = {"estimated_full_seconds": round(sum(r["estimated_full_seconds"] for r in rows), 6),
                       "includes_extrapolation": any(r["run"].startswith("units") for r in rows),
                       "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rows), "passes": list(names)}
    return out


def markdown(result: dict) -> str:
    n, full = result["calibration"]["samples"], result["calibration"]["full_run_samples"]
    lines = [f"Scoring passes on `{result['model']['shape']}` ({result['model']['dtype']}, "
             f"{result['machine']['torch_threads']} torch threads), {n} calibration samples of "
             f"~{result['calibration']['full_tokens']['mean']:.0f} tokens; estimates for a real run "
             f"(`--calib-samples {full}`).", "",
             f"| pass | scored shape (L/q/kv/hidden/mlp) | one unit | units at {full} samples | "
             f"measured on {n} samples | peak RSS (rise) | est. full run |",
             "|---|---|---|---|---|---|---|"]
    for p in result["passes"]:
        s = p["scored_shape"]
        shape = f"{s['layers']}/{s['heads']}/{s['kv_heads']}/{s['hidden']}/{s['mlp']}"
        units = p.get("units_breakdown", str(p["units_full_run"]))
        units = f"{p['units_full_run']} ({units})" if "units_breakdown" in p else units
        if p["run"].startswith("units"):
            meas = f"{p['seconds']:.2f} s for {p['units_measured']} units"
            est = f"**~{duration(p['estimated_full_seconds'])} (extrapolated)**"
        else:
            meas = f"{p['seconds']:.2f} s" + (" (full pass)" if p["data"] != "weights" else "")
            est = duration(p["estimated_full_seconds"])
        mem = f"{mib(p['peak_rss_bytes'])} (+{mib(p['peak_rss_delta_bytes'])})"
        lines.append(f"| {p['name']} | {shape} | {p['unit']} | {units} | {meas} | {mem} | {est} |")
    lines += ["", "| method (scoring only, no distillation) | est. full run | peak RSS |", "|---|---|---|"]
    for method, row in result["method_totals"].items():
        mark = " (extrapolated)" if row["includes_extrapolation"] else ""
        lines.append(f"| {method} | ~{duration(row['estimated_full_seconds'])}{mark} | {mib(row['peak_rss_bytes'])} |")
    return "\n".join(lines)
