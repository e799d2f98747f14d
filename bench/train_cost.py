"""Benchmark: what one `prunerec train` step costs on a real pretrained model, per setting.

Each setting is one `prunerec train` process (batch 8 by default) on the same data and base,
run one after another: seconds per step, training examples per second and the process's
peak RSS (from the kernel's accounting of the finished child). A step's time is read from the
run's own validation log: the elapsed time between the validations at steps --eval-every and
--steps, over the steps between them (the first steps are warm-up; the validations in between
use --valid-limit rows, a few batches).

`--longest N` trains on the N training rows with the most history and title text instead (a
copy of the data in a temporary folder): every batch is then near the longest there is, so the
peak RSS is the worst case of a whole epoch, which a few steps of random batches may miss.

`--tree DIR` runs the settings from another work tree of prunerec (e.g. `git worktree add
/tmp/before <commit>`) and records them under `--label`: the before/after of a change, run
side by side on the same machine.

Writes bench/out/train_cost.json after every setting (a rerun skips the settings it holds).
Usage: python bench/train_cost.py --model runs/smollm2 --data ../shared/data/amazon-toys
       [--settings alpaca10,compact5,compact5-lora16] [--tree /tmp/before --label before]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "train_cost.json"

SETTINGS = {
    "alpaca10": ["--template", "alpaca", "--max-history", "10"],
    "compact5": ["--template", "compact", "--max-history", "5"],
    "compact5-lora16": ["--template", "compact", "--max-history", "5", "--lora", "16"],
    "compact5-lora16-top15": ["--template", "compact", "--max-history", "5", "--lora", "16", "--train-layers", "15"],
    "compact5-lora16-top15-cut160": ["--template", "compact", "--max-history", "5", "--lora", "16",
                                     "--train-layers", "15", "--cutoff", "160"],
    "compact5-top10": ["--template", "compact", "--max-history", "5", "--train-layers", "10"],
    "compact5-top15": ["--template", "compact", "--max-history", "5", "--train-layers", "15"],
    "compact5-top15-bf16": ["--template", "compact", "--max-history", "5", "--train-layers", "15",
                            "--precision", "bf16"],
    "compact5-lora16-top15-bf16": ["--template", "compact", "--max-history", "5", "--lora", "16",
                                   "--train-layers", "15", "--precision", "bf16"],
    "alpaca10-lora16": ["--template", "alpaca", "--max-history", "10", "--lora", "16"],
}


def longest_rows_data(data_dir: str, n_rows: int, work: Path) -> str:
    """A copy of the prepared data whose train split holds only its `n_rows` longest rows."""
    source, copy = Path(data_dir), work / "longest-data"
    copy.mkdir()
    titles = {row["item_id"]: row["title"] for row in map(json.loads, (source / "items.jsonl").open())}
    rows = [json.loads(line) for line in (source / "train.jsonl").open()]
    text_length = lambda row: sum(len(titles[i]) for i in [*row["history"][-10:], row["target"]])  # noqa: E731
    longest = sorted(rows, key=text_length, reverse=True)[:n_rows]
    (copy / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in longest))
    for name in ("items.jsonl", "valid.jsonl", "test.jsonl", "stats.json"):
        if (source / name).is_file():
            (copy / name).write_bytes((source / name).read_bytes())
    return str(copy)


def run_setting(args, name: str, work: Path) -> dict:
    out = work / name
    command = [sys.executable, "-m", "prunerec.cli", "train", "--data", args.data, "--model", args.model,
               "--out", str(out), "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
               "--eval-every", str(args.eval_every), "--valid-limit", str(args.valid_limit),
               "--patience", "100", *SETTINGS[name]]
    env = dict(os.environ)
    if args.tree:
        env["PYTHONPATH"] = str(Path(args.tree).resolve())
    started = time.perf_counter()
    log_path = work / f"{name}.log"
    with open(log_path, "w") as log_file:
        child = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS, not all children's
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{name} failed:\n{log_path.read_text()[-3000:]}")
    summary = json.loads((out / "training.json").read_text())
    log = {row["step"]: row["elapsed_s"] for row in summary["log"]}
    step_s = (log[args.steps] - log[args.eval_every]) / (args.steps - args.eval_every)
    return {"flags": SETTINGS[name], "tree": args.tree, "step_seconds": round(step_s, 3),
            "examples_per_second": round(args.batch_size / step_s, 3),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "wall_seconds": round(wall, 1),
            "train_rows": summary["train_rows"], "tokens_per_example": round(
                summary["train_tokens_per_epoch"] / summary["train_rows"], 1),
            "trainable_parameters": summary.get("trainable_parameters", summary["parameters"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A Qwen2 checkpoint folder (e.g. prunerec import's output).")
    parser.add_argument("--data", required=True)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--valid-limit", type=int, default=8)
    parser.add_argument("--longest", type=int, default=0, help="Train on this many longest rows (worst-case RSS).")
    parser.add_argument("--tree", default=None, help="Run prunerec from this work tree instead.")
    parser.add_argument("--label", default="after")
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results.setdefault("machine", f"{platform.machine()}, {os.cpu_count()} cores")
    runs = results.setdefault("runs", {})
    with tempfile.TemporaryDirectory(prefix="train-cost-") as work:
        source_data = args.data
        if args.longest:
            args.data = longest_rows_data(args.data, args.longest, Path(work))
        for name in args.settings.split(","):
            key = f"{args.label}/{name}"
            if key in runs:
                continue
            runs[key] = {"model": args.model, "data": source_data, "longest_rows": args.longest,
                         "batch_size": args.batch_size,
                         **run_setting(args, name, Path(work))}
            print(key, json.dumps(runs[key]), flush=True)
            OUT.parent.mkdir(exist_ok=True)
            tmp = OUT.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=2) + "\n")
            os.replace(tmp, OUT)


if __name__ == "__main__":
    main()
