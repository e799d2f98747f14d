"""Benchmark: how to spend a fixed distillation budget. PruneRec at the default target shape with
named distillation settings (steps per stage, learning rate, lambda, the hidden-state term,
patience), each evaluated on the
base's test users; quality kept against the base and NDCG@10 against the first setting, both
with paired 95% bootstrap intervals.

Base (--base): a folder with model/ and eval.json, as for bench/compress_games.py.
Writes bench/out/distill_budget<tag>/<setting>/ (compress run + eval.json) and
bench/out/distill_budget<tag>.json (with the markdown table for docs/results.md).
Usage: python bench/distill_budget.py --base /path/to/base --data ../shared/data/amazon-toys --tag _toys \
       --settings even-1200,last-heavy
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from compress_games import DATA, METRICS, Paths, _kept_cell, bench_options, compress_and_test, user_rows

from prunerec.compress.pipeline import CompressOptions
from prunerec.evaluate.metrics import average, paired_ratio_ci
from prunerec.io import write_json

HERE = Path(__file__).resolve().parent
MINUTES = "prune + distil + validate, every stage, summed over resumed runs"

@dataclass(frozen=True)
class Setting:
    steps: tuple[int, int, int]  # after stage I, II, III
    lr: float = 1e-3
    lam: float = 0.2
    tau: float = 1.0
    hidden_distill: float = 0.0
    patience: int = 1


LAST_HEAVY = (600, 600, 2400)
SETTINGS = {
    "even-1200": Setting((1200, 1200, 1200)),
    "last-heavy": Setting(LAST_HEAVY),
    "last-heavy-lr2e-3": Setting(LAST_HEAVY, lr=2e-3),
    "last-heavy-kd-only": Setting(LAST_HEAVY, lam=0.0),
    "last-heavy-lam0.5": Setting(LAST_HEAVY, lam=0.5),
    "last-heavy-hidden1": Setting(LAST_HEAVY, hidden_distill=1.0),
    "last-heavy-hidden0.1": Setting(LAST_HEAVY, hidden_distill=0.1),
    "last-only": Setting((300, 300, 3000)),
    "last-4800": Setting((600, 600, 4800)),
    "last-4800-patience3": Setting((600, 600, 4800), patience=3),
    "last-4800-lr2e-3": Setting((600, 600, 4800), lr=2e-3),
    "last-heavy-tau2": Setting(LAST_HEAVY, tau=2.0),
    "long-patience3": Setting((1200, 1200, 4800), patience=3),
    "last-9600-patience3": Setting((600, 600, 9600), patience=3),
    "last-19200-patience3": Setting((600, 600, 19200), patience=3),
    "last-19200-patience10": Setting((600, 600, 19200), patience=10),
}


def options(name: str) -> CompressOptions:
    setting = SETTINGS[name]
    steps = setting.steps
    even = len(set(steps)) == 1  # as bench/compress_games.py runs it, so its runs can be reused
    return bench_options(max_steps=steps[0] if even else 0, stage_steps=None if even else steps, lr=setting.lr,
                         lam=setting.lam, tau=setting.tau, hidden_distill=setting.hidden_distill,
                         patience=setting.patience, eval_every=min(steps) // 3, eval_users=100)


def stage_minutes(folder: Path) -> float:
    """Minutes of the compression's stages (prune + distil + validate), summed over resumed runs."""
    return json.loads((folder / "run" / "report.json").read_text())["wall_seconds_stages"] / 60


def row(name: str, result: dict, rows: list[dict], reference_rows: list[dict], minutes: float) -> dict:
    test = result["test"]
    versus = None
    if rows is not reference_rows:
        base = average(reference_rows)["NDCG@10"]
        versus = {"ratio": average(rows)["NDCG@10"] / base if base else None,
                  "ci95": paired_ratio_ci(rows, reference_rows)["NDCG@10"]}
    setting = SETTINGS[name]
    return {"setting": name, "stage_steps": list(setting.steps), "lr": setting.lr, "lambda": setting.lam,
            "tau": setting.tau, "hidden_distill": setting.hidden_distill, "patience": setting.patience,
            "minutes": round(minutes, 1), "machine": result["machine"],
            "kept": test["kept"], "kept_ci95": test["kept_ci95"], "metrics": test["metrics"],
            "ndcg10_versus_first": versus}


def table(rows: list[dict]) -> str:
    header = ["setting", "steps I/II/III", "lr", "lambda", "tau", "hidden term", "patience", "minutes", "kept HR@10",
              "kept NDCG@10", "NDCG@10 / first setting's"]
    lines = [header, ["---"] * len(header)]
    for r in rows:
        versus = r["ndcg10_versus_first"]
        lines.append([r["setting"], "/".join(map(str, r["stage_steps"])), f"{r['lr']:g}", f"{r['lambda']:g}",
                      f"{r.get('tau', 1.0):g}", f"{r.get('hidden_distill', 0.0):g}", str(r.get("patience", 1)),
                      f"{r['minutes']:.1f}",
                      _kept_cell(r["kept"]["HR@10"], r["kept_ci95"]["HR@10"]),
                      _kept_cell(r["kept"]["NDCG@10"], r["kept_ci95"]["NDCG@10"]),
                      _kept_cell(versus["ratio"], versus["ci95"]) if versus else "-"])
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="folder with model/ and eval.json")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--tag", default="", help="suffix of the output names (e.g. _toys)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated, the first is the reference: {', '.join(SETTINGS)}")
    parser.add_argument("--summarize", action="store_true",
                        help="rebuild the table from the saved results (minutes from each run's report)")
    args = parser.parse_args()
    summary_path, out = HERE / "out" / f"distill_budget{args.tag}.json", HERE / "out" / f"distill_budget{args.tag}"
    if args.summarize:
        summary = json.loads(summary_path.read_text())
        for r in summary["settings"]:
            r["minutes"] = round(stage_minutes(out / r["setting"]), 1)
        summary["minutes"], summary["table"] = MINUTES, table(summary["settings"])
        write_json(summary_path, summary)
        print(summary["table"])
        return
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    paths = Paths(args.base, args.data, args.tag)
    base_eval = paths.base_eval()
    rows, reference_rows = [], None
    for name in names:
        result, evaluation = compress_and_test(out / name, options(name), base_eval, paths)
        user_metric_rows = user_rows(evaluation, paths)
        reference_rows = reference_rows or user_metric_rows
        rows.append(row(name, result, user_metric_rows, reference_rows, stage_minutes(out / name)))
        summary = {"base": str(args.base), "data": str(args.data), "users": base_eval["users"],
                   "minutes": MINUTES,
                   "metrics": list(METRICS), "settings": rows, "table": table(rows)}
        write_json(summary_path, summary)  # after each: keeps what it has
        print(summary["table"], flush=True)


if __name__ == "__main__":
    main()
