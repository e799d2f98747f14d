"""Benchmark: what each data set's test period asks of a model trained on its training rows.

For each data set: how many test targets the training rows never showed (as a target or in a
history: a title the model was never taught to write after a history), how many are among the
items popular in training (what popularity, and a model that learned it, ranks first), and how
much the popular items of the test period differ from those of training. A time split (Games)
and a leave-one-out split (Toys) differ most here: a later period buys newer items.
`target_in_test_top<k>` is an oracle: the hit rate of a fixed list of the test period's own k
most popular targets, the most any list that ignores the history could reach. The
`valid_period_*` figures ask the same of the validation period's rows (`prunerec train
--valid-period` trains on them too): on a time split, the period just before the test.

With `--rankings DATA=eval.json` (a `prunerec evaluate` report) it also profiles what that
model ranks in its top 10 the same way, to set beside what the test period buys.

Writes bench/out/split_profile.json (--out) and prints a table.
Usage: python bench/split_profile.py [--data games --data toys] [--rankings games=path/eval.json]
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from prunerec.data.catalog import Dataset, Sample, load_dataset
from prunerec.io import write_json
from prunerec.train.options import FineTuneOptions
from prunerec.train.sft import period_rows, training_rows

HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parents[1] / "shared" / "data"
TOP = (10, 100, 1000)
# the row sets `prunerec train` can be given (flags), profiled by what of the test period they teach
ROW_SETS = {"train rows": FineTuneOptions(), "--recent-per-user 2": FineTuneOptions(recent_per_user=2),
            "--valid-period": FineTuneOptions(valid_period=True),
            "--valid-period --recent-per-user 2": FineTuneOptions(valid_period=True, recent_per_user=2)}


def taught_and_seen(train: list[Sample], name=lambda item: item) -> tuple[Counter, set]:
    """How often training rows teach each item as a target, and every item they show at all
    (target or history); items as `name` gives them (ids, or titles to match a model's rankings)."""
    taught = Counter(name(row.target) for row in train)
    return taught, set(taught) | {name(item) for row in train for item in row.history}


def profile(train: list[Sample], test: list[Sample], valid: list[Sample]) -> dict:
    """Shares of the test targets (first target of each row) by what training showed of them, and by
    what the validation period's rows add."""
    taught, seen = taught_and_seen(train)
    later_taught, later_seen = taught_and_seen(period_rows(valid, held_out_users=set()))
    in_test_history = {item for row in test for item in row.history}
    targets = [row.target for row in test]
    test_popular = Counter(targets)
    n = len(targets)
    out = {"test_rows": n, "train_rows": len(train),
           "never_a_train_target": round(sum(t not in taught for t in targets) / n, 4),
           "never_in_train_rows": round(sum(t not in seen for t in targets) / n, 4),
           "never_in_any_history": round(sum(t not in seen and t not in in_test_history for t in targets) / n, 4),
           "valid_period_rows": sum(later_taught.values()),
           "never_in_train_or_valid_period_rows": round(sum(t not in seen | later_seen for t in targets) / n, 4)}
    for k in TOP:
        train_top = {item for item, _ in taught.most_common(k)}
        test_top = {item for item, _ in test_popular.most_common(k)}
        out[f"target_in_train_top{k}"] = round(sum(t in train_top for t in targets) / n, 4)
        out[f"target_in_test_top{k}"] = round(sum(t in test_top for t in targets) / n, 4)
        out[f"train_top{k}_overlap_test_top{k}"] = round(len(train_top & test_top) / k, 4)
        later_top = {item for item, _ in later_taught.most_common(k)}
        out[f"target_in_valid_period_top{k}"] = round(sum(t in later_top for t in targets) / n, 4)
    return out


def row_set_profile(data: Dataset) -> dict:
    """For each row set `prunerec train` can train on: its rows, the share of test targets it teaches as a
    target, and the share of its rows whose target is an item the test period buys."""
    test = data["test"]
    test_items = {row.target for row in test}
    out = {}
    for name, tuning in ROW_SETS.items():
        rows = training_rows(data, [], tuning, train_limit=None, seed=0)
        taught = {row.target for row in rows}
        out[name] = {"rows": len(rows),
                     "test_targets_taught": round(sum(row.target in taught for row in test) / len(test), 4),
                     "rows_teaching_a_test_item": round(sum(row.target in test_items for row in rows) / len(rows), 4)}
    return out


def ranked_profile(train: list[Sample], titles: tuple[str, ...], rankings: list[list[str]], depth: int = 10) -> dict:
    """Shares of the titles a model ranks in its top `depth`, by what training showed of them."""
    taught, seen = taught_and_seen(train, titles.__getitem__)
    ranked = [title for ranking in rankings for title in ranking[:depth]]
    n = len(ranked)
    out = {"users": len(rankings), "ranked_titles": n, "distinct_ranked_titles": len(set(ranked)),
           "top_title_share_of_lists": round(Counter(ranked).most_common(1)[0][1] / len(rankings), 4),
           "ranked_never_a_train_target": round(sum(t not in taught for t in ranked) / n, 4),
           "ranked_never_in_train_rows": round(sum(t not in seen for t in ranked) / n, 4)}
    for k in TOP:
        train_top = {title for title, _ in taught.most_common(k)}
        out[f"ranked_in_train_top{k}"] = round(sum(t in train_top for t in ranked) / n, 4)
    return out


def parse_rankings(pairs: list[str], data_sets: list[str]) -> dict[str, Path]:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"--rankings {pair!r}: expected DATA=path/to/eval.json of an existing report")
        if name not in data_sets:
            raise SystemExit(f"--rankings {pair!r}: {name!r} is not among the data sets profiled ({data_sets})")
        out[name] = Path(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", choices=["games", "toys"], help="data sets (default both)")
    parser.add_argument("--rankings", action="append", default=[], metavar="DATA=EVAL_JSON",
                        help="a model's evaluate report on that data set's test split, to profile its top 10")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "split_profile.json")
    args = parser.parse_args()
    data_sets = args.data or ["games", "toys"]
    reports = parse_rankings(args.rankings, data_sets)
    result = {}
    for name in data_sets:
        folder = SHARED_DATA / f"amazon-{name}"
        data = load_dataset(folder, splits=("train", "valid", "test"))
        result[name] = {"split": json.loads((folder / "stats.json").read_text()).get("split", "?"),
                        **profile(data["train"], data["test"], data["valid"]),
                        "row_sets": row_set_profile(data)}
        if name in reports:
            report = json.loads(reports[name].read_text())
            grounding = next(iter(report["results"]))
            result[name]["model"] = {"report": str(reports[name]), "grounding": grounding, **ranked_profile(
                data["train"], data.catalog.titles, [row[grounding] for row in report["rankings"]])}
    write_json(args.out, result)
    print_table(result)


def print_table(result: dict) -> None:
    keys = [k for k in next(iter(result.values())) if k not in ("split", "model", "row_sets")]
    print("| | " + " | ".join(result) + " |\n|---|" + "---|" * len(result))
    for key in keys:
        print(f"| {key} | " + " | ".join(str(r[key]) for r in result.values()) + " |")
    for name, r in result.items():
        print(f"\n{name}, what each row set teaches of the test period:")
        for row_set, figures in r["row_sets"].items():
            print(f"  {row_set}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
        if "model" in r:
            print(f"\n{name}, the model's top 10 ({r['model']['report']}):")
            for key, value in r["model"].items():
                if key not in ("report", "grounding"):
                    print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
