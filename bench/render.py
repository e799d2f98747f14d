"""Markdown tables of benchmark JSON files (used to write docs/results.md without copying by hand)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

KS = (5, 10, 20)
NAMES = {"trie": "small preset, constrained beam (20)", "l2": "small preset, L2 grounding", "popularity": "popularity"}


def cell(result: dict, key: str) -> str:
    lo, hi = result["ci95"][key]
    return f"{result['metrics'][key]:.4f} [{lo:.4f}, {hi:.4f}]"


def _ratio(ratios: dict, key: str) -> str:
    r = ratios[key]
    return f"{key} {r['ratio']:.2f}x [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"


def _paired(ratios: dict | None) -> str:
    if not ratios:
        return ""
    return " (paired 95% intervals: " + ", ".join(_ratio(ratios, k) for k in ("HR@10", "NDCG@10")) + ")"


def base_table(summary: dict) -> str:
    evaluation, training = summary["evaluation"], summary["training"]
    results = evaluation["results"]
    header = ["method"] + [f"{m}@{k}" for m in ("HR", "NDCG") for k in KS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, result in results.items():
        lines.append("| " + " | ".join([NAMES.get(key, key)]
                                       + [cell(result, f"{m}@{k}") for m in ("HR", "NDCG") for k in KS]) + " |")
    trie, pop = results["trie"]["metrics"], results["popularity"]["metrics"]
    facts = [
        f"- test users: {evaluation['users']} (catalog: {evaluation['catalog_titles']} distinct titles)",
        (f"- HR@10 model / popularity: {trie['HR@10'] / max(pop['HR@10'], 1e-12):.2f}x; "
        f"NDCG@10: {trie['NDCG@10'] / max(pop['NDCG@10'], 1e-12):.2f}x"
        + _paired(results["trie"].get("over_popularity"))),
        (f"- training: {training['train_rows']} rows available, {training['steps']} steps of 32 "
        f"(best at step {training['best_step']}, validation loss {training['best_valid_loss']:.3f}), "
        f"{training['train_seconds'] / 60:.1f} min ({training['stop_reason']})"),
        (f"- evaluation speed: {results['trie']['users_per_second']:.2f} users/s "
        f"({results['trie']['seconds'] / 60:.1f} min for {evaluation['users']} users)"),
        f"- machine: {summary['machine']}",
    ]
    if "versus_continued_from" in summary:
        versus = summary["versus_continued_from"]
        facts.append(f"- over the run it continued ({Path(versus['earlier']).parent.name}), same users: "
                     + ", ".join(_ratio(versus["ratios"], k) for k in ("HR@10", "NDCG@10")))
    return "\n".join(lines + [""] + facts)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(f"### {Path(path).stem}\n")
        print(base_table(json.loads(Path(path).read_text())))
        print()
