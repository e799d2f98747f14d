"""Benchmark: users/s of trie-constrained evaluation before and after batching, side by side.

Same model, same users, same trie (every catalog title), same beams:
- before: what `prunerec evaluate` ran until now: a stock KV cache (TorchStepper: the prompt's
  keys and values copied into every beam and reordered after every step), batches of 8 users in
  user order, one process;
- after, 1 process: the shared-prompt stepper (each prompt's KV cache once per user), batches of
  16 users of similar prompt lengths;
- after, N processes: the same, the batches spread over one worker process per usable core (the
  library's default).
Every "after" ranking is checked against "before": same titles in the same order for every user,
and the largest score difference (float rounding only).

Writes bench/out/eval_speed.json.
Usage: python bench/eval_speed.py --model runs/small_brief [--users 150] [--beams 20]
       python bench/eval_speed.py --preset small   (random weights, tokenizer trained on the catalog)
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from prunerec.data.catalog import load_dataset
from prunerec.evaluate.options import EvalOptions
from prunerec.evaluate.parallel import usable_cores
from prunerec.evaluate.pipeline import Recommender, pick_users, rank_users
from prunerec.io import write_json
from prunerec.model.checkpoint import RecModel, load_rec_model
from prunerec.model.presets import PRESETS
from prunerec.model.prompt import PromptSettings
from prunerec.search.beam import TorchStepper, constrained_beam_search

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "amazon-games"


def random_preset(name: str, data_dir: Path) -> RecModel:
    """A preset with seeded random weights and a tokenizer trained on the catalog."""
    from prunerec.model.tokenizer import train_tokenizer
    from prunerec.train.sft import tokenizer_corpus

    data = load_dataset(data_dir, splits=("train",))
    settings = PromptSettings(template="compact", category="video games")
    preset = PRESETS[name]
    tokenizer = train_tokenizer(tokenizer_corpus(data.catalog, data["train"], settings), preset.vocab_size)
    torch.manual_seed(0)
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM(preset.config(len(tokenizer), tokenizer.eos_token_id)).eval()
    return RecModel(model, tokenizer, data.catalog, settings, {"base": f"random preset '{name}'"})


def rank_before(recommender: Recommender, prompts, num_beams: int, batch_size: int = 8):
    """The previous evaluation loop: stock-cache stepper, batches in user order, this process."""
    out = []
    pad = recommender.rec.tokenizer.pad_token_id
    for start in range(0, len(prompts), batch_size):
        ranked = constrained_beam_search(TorchStepper(recommender.rec.model, pad), prompts[start:start + batch_size],
                                         recommender.trie, num_beams)
        out.extend([(recommender.titles[i], score) for i, score in row] for row in ranked)
    return out


def timed(name: str, fn, n_users: int) -> tuple[dict, list]:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    ranked = fn()
    seconds = time.perf_counter() - t0
    row = {"name": name, "seconds": round(seconds, 2), "users_per_second": round(n_users / seconds, 3),
           "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    print(f"{name}: {row['users_per_second']:.2f} users/s ({row['seconds']} s; load {row['load_average_1min']})",
          flush=True)
    return row, ranked


def compare(before, after) -> dict:
    same = sum([t for t, _ in a] == [t for t, _ in b] for a, b in zip(before, after))
    diff = max((abs(x[1] - y[1]) for a, b in zip(before, after) for x, y in zip(a, b)), default=0.0)
    return {"identical_rankings": same, "users": len(before), "max_score_difference": diff}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a trained recommender folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="random weights of a preset instead of --model")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--users", type=int, default=150)
    parser.add_argument("--beams", type=int, default=20)
    parser.add_argument("--out", default=str(HERE / "out" / "eval_speed.json"))
    args = parser.parse_args()
    if bool(args.model) == bool(args.preset):
        parser.error("give exactly one of --model and --preset")
    rec = load_rec_model(args.model) if args.model else random_preset(args.preset, Path(args.data))
    data = load_dataset(args.data, splits=("test",))
    recommender = Recommender(rec, data.catalog)
    users = pick_users(data["test"], args.users, 0)
    prompts = recommender.prompts(users)
    cores = usable_cores()
    runs = []
    before_row, before = timed("before: stock cache, batch 8, 1 process",
                               lambda: rank_before(recommender, prompts, args.beams), len(prompts))
    runs.append(before_row)
    for workers in sorted({1, cores}):
        options = EvalOptions(beams=args.beams, batch_size=16, workers=workers)
        row, after = timed(f"after: shared prompt, batch 16, {workers} process{'es' if workers > 1 else ''}",
                           lambda options=options: rank_users(recommender, prompts, "trie", options), len(prompts))
        row.update(compare(before, after), speedup=round(before_row["seconds"] / row["seconds"], 2))
        runs.append(row)
    summary = {
        "model": args.model or f"random preset {args.preset}", "data": str(args.data), "users": len(prompts),
        "beams": args.beams, "catalog_titles": len(recommender.titles), "grounding": "trie",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {cores} usable, torch threads "
                   f"{torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
        "runs": runs,
        "full_test_minutes": {r["name"]: round(len(data["test"]) / r["users_per_second"] / 60, 1) for r in runs},
    }
    write_json(args.out, summary)


if __name__ == "__main__":
    main()
