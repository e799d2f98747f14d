"""Benchmark: what each data set's test period asks of a model trained on its training rows.

For each data set: how many test targets the training rows never showed (as a target or in a
history: a title the model was never taught to write after a history), how many are among the
items popular in training (what popularity, and a model that learned it, ranks first), and how
much the popular items of the test period differ from those of training. A time split (Games)
and a leave-one-out split (Toys) differ most here: a later period buys newer items.

Writes bench/out/split_profile.json (--out) and prints a table.
Usage: python bench/split_profile.py [--data games --data toys]
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from prunerec.data.catalog import Sample, load_dataset
from prunerec.io import write_json

HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parents[1] / "shared" / "data"
TOP = (10, 100, 1000)


def profile(train: list[Sample], test: list[Sample]) -> dict:
    """Shares of the test targets (first target of each row) by what training showed of them."""
    taught = Counter(row.target for row in train)
    seen = set(taught) | {item for row in train for item in row.history}
    in_test_history = {item for row in test for item in row.history}
    targets = [row.target for row in test]
    test_popular = Counter(targets)
    n = len(targets)
    out = {"test_rows": n, "train_rows": len(train),
           "never_a_train_target": round(sum(t not in taught for t in targets) / n, 4),
           "never_in_train_rows": round(sum(t not in seen for t in targets) / n, 4),
           "never_in_any_history": round(sum(t not in seen and t not in in_test_history for t in targets) / n, 4)}
    for k in TOP:
        train_top = {item for item, _ in taught.most_common(k)}
        test_top = {item for item, _ in test_popular.most_common(k)}
        out[f"target_in_train_top{k}"] = round(sum(t in train_top for t in targets) / n, 4)
        out[f"train_top{k}_overlap_test_top{k}"] = round(len(train_top & test_top) / k, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", choices=["games", "toys"], help="data sets (default both)")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "split_profile.json")
    args = parser.parse_args()
    result = {}
    for name in args.data or ["games", "toys"]:
        folder = SHARED_DATA / f"amazon-{name}"
        data = load_dataset(folder, splits=("train", "test"))
        result[name] = {"split": json.loads((folder / "stats.json").read_text()).get("split", "?"),
                        **profile(data["train"], data["test"])}
    write_json(args.out, result)
    keys = [k for k in next(iter(result.values())) if k != "split"]
    print("| | " + " | ".join(result) + " |\n|---|" + "---|" * len(result))
    for key in keys:
        print(f"| {key} | " + " | ".join(str(r[key]) for r in result.values()) + " |")


if __name__ == "__main__":
    main()
