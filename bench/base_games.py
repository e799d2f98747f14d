"""Benchmark: a scratch preset (`small` unless --preset) as a BIGRec base on amazon-games.

Variants (run in this order, each: prepare data -> train with a time budget -> evaluate on test):
  top2000  the 2,000 most popular items (by training-target count) and the rows about them:
           targets in the sub-catalog, history items outside it dropped, rows left empty dropped
  full     the whole 17,332-item catalog, training on a seeded random subset of rows

Writes bench/out/base_games_<variant><tag>/{data,model,eval.json} and bench/out/base_games_<variant><tag>.json.
`--continue-from TAG` starts from the training state of the run with that tag (copied, the original
stays as it is) and trains on until the new budget, which counts the time already spent.
Usage: python bench/base_games.py [--variants top2000,full] [--minutes 40] [--users 2000] [--tag _long]
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from prunerec.data.catalog import load_dataset, write_dataset
from prunerec.data.subcatalog import restrict_to_top
from prunerec.evaluate.metrics import ratios
from prunerec.evaluate.pipeline import report_user_rows, run_evaluate
from prunerec.io import write_json
from prunerec.model.presets import PRESETS
from prunerec.train.pipeline import run_train

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-games"
OUT = Path(__file__).resolve().parent / "out"


def prepare(variant: str, root: Path) -> Path:
    data_dir = root / "data"
    if (data_dir / "stats.json").is_file():
        return data_dir
    if variant == "full":
        return SOURCE
    n_items = int(variant.removeprefix("top"))
    catalog, splits = restrict_to_top(load_dataset(SOURCE), n_items)
    write_dataset(data_dir, catalog, splits, {"source": str(SOURCE), "variant": variant, "category": "video games"})
    return data_dir


def versus_earlier(report: dict, variant: str, tag: str, data_dir: Path) -> dict:
    """This run over the run it continued, on the same test users, with paired intervals."""
    path = OUT / f"base_games_{variant}{tag}" / "eval.json"
    earlier = json.loads(path.read_text())
    if [r["user"] for r in earlier["rankings"]] != [r["user"] for r in report["rankings"]]:
        raise SystemExit(f"{path} was evaluated on other test users")
    titles = load_dataset(data_dir, splits=()).catalog.titles
    return {"earlier": str(path), "ratios": ratios(report_user_rows(report, titles),
                                                   report_user_rows(earlier, titles))}


def run_variant(variant: str, args) -> dict:
    root = OUT / f"base_games_{variant}{args.tag}"
    data_dir = prepare(variant, root)
    model_dir = root / "model"
    if args.continue_from is not None and not (model_dir / ".train-state").is_dir():
        source = OUT / f"base_games_{variant}{args.continue_from}" / "model" / ".train-state"
        shutil.copytree(source, model_dir / ".train-state")
    train_limit = args.full_train_limit if variant == "full" else None
    minutes = args.minutes_full if variant == "full" else args.minutes
    if not (model_dir / "training.json").is_file():
        run_train(data_dir, args.preset, model_dir, category="video games", max_history=args.max_history,
                  epochs=args.epochs, batch_size=32, lr=args.lr, warmup=100, patience=3, eval_every=400,
                  time_budget=minutes, decay_to_budget=args.decay_to_budget, train_limit=train_limit,
                  valid_limit=1000, seed=0,
                  resume=(model_dir / ".train-state").is_dir())
    report, table = run_evaluate(model_dir, data_dir, split="test", grounding="trie", beams=20, batch_size=16,
                                 limit=args.users, out=root / "eval.json")
    versus = ({} if args.continue_from is None else
              {"versus_continued_from": versus_earlier(report, variant, args.continue_from, data_dir)})
    training = json.loads((model_dir / "training.json").read_text())
    summary = {"variant": variant, "data": str(data_dir),
               "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
               "training": {k: v for k, v in training.items() if k != "log"}, "evaluation": {
                   k: v for k, v in report.items() if k != "rankings"}, "table": table, **versus}
    write_json(OUT / f"base_games_{variant}{args.tag}.json", summary)
    print(table, flush=True)
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="top2000,full")
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS),
                        help="scratch preset to train (deep: the paper's proportions; give it its own --tag)")
    parser.add_argument("--minutes", type=float, default=40.0, help="training budget of the sub-catalog variant")
    parser.add_argument("--minutes-full", type=float, default=40.0, help="training budget of the full variant")
    parser.add_argument("--users", type=int, default=None, help="test users (default: all rows of the split)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--max-history", type=int, default=5)
    parser.add_argument("--full-train-limit", type=int, default=None)
    parser.add_argument("--decay-to-budget", action="store_true",
                        help="learning rate falls to zero at the end of the time budget (see the trainer)")
    parser.add_argument("--tag", default="", help="suffix of the output names, to keep earlier runs")
    parser.add_argument("--continue-from", default=None, metavar="TAG",
                        help="copy the training state of the run with this tag ('' = untagged) and go on")
    args = parser.parse_args()
    started = time.time()
    for variant in args.variants.split(","):
        run_variant(variant, args)
    print(f"bench finished in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
