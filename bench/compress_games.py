"""Benchmark: PruneRec against other pruning criteria and its own ablations on amazon-games.

Base: the `small` preset trained by bench/base_games.py on the full catalog
(bench/out/base_games_full/model, evaluated on the same test users into eval.json).
Every variant reaches the default target shape (>= 95% of non-embedding parameters removed)
with the same distillation budget (--max-steps per distillation; the one-shot ablation, which
distils once, gets the three stages' steps together), then is evaluated on the same test users
as the base with trie-constrained beam search. Quality kept = metric / base metric, with a 95%
paired bootstrap interval (the same resampled users for both).

Variants: prunerec, random, magnitude (+ShortGPT layers), wanda-sp (+ShortGPT layers),
prunerec-shortgpt (PruneRec widths, ShortGPT layers), no-distill, one-shot.

Writes bench/out/compress_games/<variant>/ (the compress run and eval.json) and
bench/out/compress_games_<variant>.json; `--summarize` gathers them into
bench/out/compress_games.json and prints the table for docs/results.md.
Usage: python bench/compress_games.py --variants prunerec,random [--max-steps 300] [--users 2500]
       python bench/compress_games.py --summarize
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import time
from pathlib import Path

import torch

from prunerec.compress.pipeline import CompressOptions, run_compress
from prunerec.data.catalog import load_dataset
from prunerec.io import write_json
from prunerec.rec.evaluate import report_user_rows
from prunerec.rec.metrics import (
    average,
    bootstrap_ci,
    paired_ratio_ci,
)
from prunerec.recipes import run_evaluate

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "amazon-games"
BASE = HERE / "out" / "base_games_full"
OUT = HERE / "out" / "compress_games"
METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")
VARIANTS = {
    "prunerec": {},
    "random": {"method": "random"},
    "magnitude": {"method": "magnitude"},
    "wanda-sp": {"method": "wanda-sp"},
    "prunerec-shortgpt": {"layer_method": "shortgpt"},
    "no-distill": {"distill": False},
    "one-shot": {"one_shot": True},
}


def options_for(variant: str, args) -> CompressOptions:
    changes = VARIANTS[variant]
    steps = args.max_steps * 3 if changes.get("one_shot") else args.max_steps
    return CompressOptions(max_steps=steps, lr=args.lr, eval_every=args.max_steps // 3, eval_users=args.eval_users,
                           valid_limit=300, calib_samples=64, seed=0, **changes)


@functools.cache
def _titles() -> tuple[str, ...]:
    return load_dataset(DATA, splits=()).catalog.titles


def user_rows(report: dict) -> list[dict]:
    return report_user_rows(report, _titles())


def quality_rows(report: dict, base_eval: dict) -> dict:
    if [r["user"] for r in report["rankings"]] != [r["user"] for r in base_eval["rankings"]]:
        raise SystemExit("the variant was evaluated on other users than the base")
    rows, base_rows = user_rows(report), user_rows(base_eval)
    means, cis = average(rows), bootstrap_ci(rows)
    kept = {k: means[k] / b if (b := average(base_rows)[k]) else None for k in METRICS}
    return {"metrics": {k: means[k] for k in METRICS}, "ci95": {k: cis[k] for k in METRICS},
            "kept": kept, "kept_ci95": {k: v for k, v in paired_ratio_ci(rows, base_rows).items() if k in METRICS}}


def run_variant(variant: str, args, base_eval: dict) -> dict:
    folder = OUT / variant
    options = options_for(variant, args)
    started = time.time()
    report = run_compress(BASE / "model", DATA, folder / "run", options, resume=(folder / "run").exists())
    compress_seconds = time.time() - started
    evaluation, table = run_evaluate(folder / "run" / "final", DATA, split="test", grounding="trie", beams=20,
                                     batch_size=16, limit=base_eval["users"], out=folder / "eval.json")
    summary = {"variant": variant, "options": dataclasses.asdict(options),
               "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
               "compress_seconds": round(compress_seconds, 1),
               "shape": report["final"]["shape"], "parameters": report["final"]["parameters"],
               "non_embedding_removed_share": report["final"]["non_embedding_removed_share"],
               "validation_kept": report["final"].get("quality_kept"),
               "test": quality_rows(evaluation, base_eval)}
    write_json(HERE / "out" / f"compress_games_{variant}.json", summary)
    print(table, flush=True)
    return summary


def _cell(value: float, ci) -> str:
    return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def _kept_cell(value, ci) -> str:
    if value is None:
        return "-"
    return f"{value:.0%} [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else f"{value:.0%}"


def _versus(rows: list[dict], prunerec_rows: list[dict] | None) -> str:
    """NDCG@10 of a variant over PruneRec's on the same users, with its paired 95% interval."""
    if prunerec_rows is None or rows is prunerec_rows:
        return "-"
    mean, baseline = average(rows)["NDCG@10"], average(prunerec_rows)["NDCG@10"]
    return _kept_cell(mean / baseline if baseline else None, paired_ratio_ci(rows, prunerec_rows)["NDCG@10"])


def summarize() -> str:
    base_eval = json.loads((BASE / "eval.json").read_text())
    base_rows = user_rows(base_eval)
    assert average(base_rows)["HR@10"] == base_eval["results"]["trie"]["metrics"]["HR@10"]
    results = {v: json.loads(p.read_text()) for v in VARIANTS
               if (p := HERE / "out" / f"compress_games_{v}.json").is_file()}
    variant_rows = {v: user_rows(json.loads((OUT / v / "eval.json").read_text())) for v in results}
    prunerec_rows = variant_rows.get("prunerec")
    popularity = base_eval["results"]["popularity"]
    header = ["variant", "removed", *METRICS, "kept HR@10", "kept NDCG@10", "kept (mean of 6)", "NDCG@10 / PruneRec's"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    base_ci = bootstrap_ci(base_rows)
    lines.append(" | ".join(["base (small)", "0%", *(_cell(average(base_rows)[k], base_ci[k]) for k in METRICS),
                             "100%", "100%", "100%", "-"]))
    for variant, result in results.items():
        test = result["test"]
        mean_kept = [test["kept"][k] for k in METRICS if test["kept"][k] is not None]
        lines.append(" | ".join([variant, f"{result['non_embedding_removed_share']:.1%}",
                                 *(_cell(test["metrics"][k], test["ci95"][k]) for k in METRICS),
                                 _kept_cell(test["kept"]["HR@10"], test["kept_ci95"]["HR@10"]),
                                 _kept_cell(test["kept"]["NDCG@10"], test["kept_ci95"]["NDCG@10"]),
                                 f"{sum(mean_kept) / len(mean_kept):.0%}",
                                 _versus(variant_rows[variant], prunerec_rows)]))
    lines.append(" | ".join(["popularity", "-", *(_cell(popularity["metrics"][k], popularity["ci95"][k])
                                                  for k in METRICS), "-", "-", "-", "-"]))
    table = "| " + " |\n| ".join(lines) + " |"
    write_json(HERE / "out" / "compress_games.json", {"users": base_eval["users"], "variants": results,
                                                       "table": table})
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--max-steps", type=int, default=300, help="steps per distillation (batch 32)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-users", type=int, default=300, help="validation users per stage inside compress")
    parser.add_argument("--summarize", action="store_true")
    args = parser.parse_args()
    if args.summarize:
        print(summarize())
        return
    base_eval = json.loads((BASE / "eval.json").read_text())
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        started = time.time()
        run_variant(variant, args, base_eval)
        print(f"{variant} finished in {time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
