"""Benchmark: seconds per training step of the scratch presets on amazon-games, and the epoch
that implies.

Each preset takes the same optimizer steps the trainer takes (BIGRec response-only loss,
AdamW, gradient clipping, batch 32 of real training rows in the trainer's length-bucketed
batches), on one shared tokenizer trained on the catalog, one preset after another in this
process. The first steps are warm-up and not timed. Presets are measured under the same load,
so on a busy machine the ratio between them holds better than either time alone;
`--reference-preset`/`--reference-seconds` turn a step time measured elsewhere (e.g. on an idle
machine) into estimates for the others by that ratio.

Writes bench/out/preset_speed.json.
Usage: python bench/preset_speed.py [--presets small,deep] [--steps 6] [--reference-preset small
       --reference-seconds 0.835]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from transformers import Qwen2ForCausalLM

from prunerec.data.catalog import load_dataset
from prunerec.io import write_json
from prunerec.model.batching import collate, length_batches, response_ce
from prunerec.model.encode import build_examples
from prunerec.model.presets import PRESETS
from prunerec.model.prompt import PromptSettings
from prunerec.model.surgery import count_parameters
from prunerec.model.tokenizer import train_tokenizer
from prunerec.train.sft import subsample, tokenizer_corpus

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "amazon-games"


def step_seconds(preset: str, tokenizer, batches, warmup: int, bf16: bool = False) -> tuple[float, dict]:
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(PRESETS[preset].config(len(tokenizer), tokenizer.eos_token_id)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = response_ce(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        times.append(time.perf_counter() - t0)
    timed = times[warmup:]
    return sum(timed) / len(timed), count_parameters(model)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="small,deep")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--steps", type=int, default=6, help="timed steps per preset")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reference-preset", default=None)
    parser.add_argument("--reference-seconds", type=float, default=None)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (the trainer runs float32)")
    parser.add_argument("--out", default=str(HERE / "out" / "preset_speed.json"))
    args = parser.parse_args()
    data = load_dataset(args.data, splits=("train",))
    settings = PromptSettings(template="compact", category="video games")
    presets = args.presets.split(",")
    vocab = max(PRESETS[p].vocab_size for p in presets)
    tokenizer = train_tokenizer(tokenizer_corpus(data.catalog, data["train"], settings), vocab)
    rows = subsample(data["train"], args.batch_size * 64, 0)
    examples = build_examples(tokenizer, rows, data.catalog, settings)
    order = length_batches([len(e.input_ids) for e in examples], args.batch_size, seed=0)
    batches = [collate([examples[i] for i in b], tokenizer.pad_token_id) for b in order[:args.warmup + args.steps]]
    steps_per_epoch = -(-len(data["train"]) // args.batch_size)
    results = {}
    for preset in presets:
        load = os.getloadavg()[0]
        seconds, params = step_seconds(preset, tokenizer, batches, args.warmup, args.bf16)
        results[preset] = {"seconds_per_step": round(seconds, 3), "parameters": params,
                           "epoch_hours": round(seconds * steps_per_epoch / 3600, 1),
                           "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}
        print(preset, results[preset], flush=True)
    if args.reference_preset in results and args.reference_seconds:
        scale = args.reference_seconds / results[args.reference_preset]["seconds_per_step"]
        for row in results.values():
            row["estimated_seconds_per_step"] = round(row["seconds_per_step"] * scale, 3)
            row["estimated_epoch_hours"] = round(row["estimated_seconds_per_step"] * steps_per_epoch / 3600, 1)
    write_json(args.out, {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads "
                                     f"{torch.get_num_threads()}", "batch_size": args.batch_size,
                          "train_rows": len(data["train"]), "steps_per_epoch": steps_per_epoch,
                          "timed_steps": args.steps, "bf16_autocast": args.bf16,
                          "reference": [args.reference_preset, args.reference_seconds],
                          "presets": results})


if __name__ == "__main__":
    main()
