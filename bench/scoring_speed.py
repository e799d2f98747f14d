"""Benchmark: PruneRec's two expensive scoring passes on a real model, timed as `compress` runs them.

- Stage I head KL (paper Algorithm 1, sequential masking) on the base model, over the calibration
  prompts `compress` builds (--samples training rows, the model's own prompt settings unless
  --template / --max-history say otherwise).
- Stage III greedy layer search on the shape stage III sees at the default targets (heads,
  hidden and MLP already cut; which indices are kept does not change the cost, so the cut keeps
  those of largest weight norm), over the same rows as prompt + response.

Each run is stored under --label in OUT (JSON, rewritten atomically after each pass) with its
scores, so that two runs of the same settings (e.g. the code before and after a change, by
PYTHONPATH) are compared: max |score difference| and whether the kept heads / removal order agree.
A run of some passes under an existing label keeps that label's other passes.

Usage: python bench/scoring_speed.py --model DIR --data DIR --label after
           [--samples 16] [--template alpaca --max-history 10] [--pass heads --pass layers]
Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import torch

import prunerec
from prunerec.compress import importance as imp
from prunerec.compress.criteria import LAYER, WIDTH
from prunerec.compress.stages import ScoringOptions, build_calibration
from prunerec.compress.targets import resolve_targets
from prunerec.data.catalog import load_dataset
from prunerec.io import write_json
from prunerec.model import surgery
from prunerec.model.checkpoint import load_rec_model
from prunerec.model.encode import build_examples
from prunerec.train.sft import subsample

HERE = Path(__file__).resolve().parent
OPTS = ScoringOptions()


def _commit(folder: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def calibration(rec, data_dir: str, samples: int, template: str | None, max_history: int | None):
    settings = rec.settings
    if template or max_history:
        settings = dataclasses.replace(settings, template=template or settings.template,
                                       max_history=max_history or settings.max_history)
    data = load_dataset(data_dir, splits=("train",))
    rows = subsample(data["train"], samples, OPTS.seed + 1)
    calib = build_calibration(build_examples(rec.tokenizer, rows, data.catalog, settings), rec.tokenizer.pad_token_id)
    lengths = [int(n) for b in calib.prompts for n in b["attention_mask"].sum(1)]
    lengths_record = {"prompt_tokens_mean": round(sum(lengths) / len(lengths), 1), "prompt_tokens_max": max(lengths)}
    return calib, settings, lengths_record


def cut_to_stage3_shape(model, targets) -> None:
    """Stage I and II's cuts at the targets, keeping the parts of largest weight norm."""
    cfg = model.config
    keep_kv, keep_q = imp.select_heads(imp.magnitude_head_scores(model), cfg.num_key_value_heads,
                                       targets.heads, targets.kv_heads)
    surgery.keep_attention_heads(model, keep_kv, keep_q)
    surgery.keep_hidden(model, imp.magnitude_hidden_scores(model).topk(targets.hidden).indices.sort().values)
    surgery.keep_mlp_channels(model, [s.topk(targets.mlp).indices.sort().values
                                      for s in imp.magnitude_mlp_scores(model)])


def time_heads(model, calib, targets) -> dict:
    started = time.perf_counter()
    scores, extra = WIDTH["prunerec"].heads(model, calib, targets, OPTS)
    return {"seconds": round(time.perf_counter() - started, 3), "scores": scores.tolist(),
            "masked_while_scoring": extra["masked_while_scoring"]}


def time_layers(model, calib, targets) -> dict:
    record: dict = {}
    n_remove = model.config.num_hidden_layers - targets.layers
    started = time.perf_counter()
    LAYER["greedy-ppl"].drop(model, calib.full, n_remove, record, OPTS)
    return {"seconds": round(time.perf_counter() - started, 3), "removal_order": record["removal_order"]}


def _ratio(before: float, after: float) -> float | None:
    return round(before / after, 2) if after > 0 else None


def compare(runs: dict) -> dict:
    """Each label's scores against the first label's ("before" where there is one), per pass."""
    labels = sorted(runs, key=lambda label: label != "before")
    out = {}
    for label in labels[1:]:
        a, b = runs[labels[0]], runs[label]
        row = {}
        if "heads" in a and "heads" in b:
            diff = (torch.tensor(a["heads"]["scores"]) - torch.tensor(b["heads"]["scores"])).abs().max()
            row["heads_max_abs_score_diff"] = float(diff)
            row["heads_same_masked"] = a["heads"]["masked_while_scoring"] == b["heads"]["masked_while_scoring"]
            row["heads_speedup"] = _ratio(a["heads"]["seconds"], b["heads"]["seconds"])
        if "layers" in a and "layers" in b:
            row["layers_same_order"] = a["layers"]["removal_order"] == b["layers"]["removal_order"]
            row["layers_speedup"] = _ratio(a["layers"]["seconds"], b["layers"]["seconds"])
        out[f"{label} vs {labels[0]}"] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--label", required=True, help="name of this run in OUT (e.g. before, after)")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--template", choices=["alpaca", "compact"])
    ap.add_argument("--max-history", type=int)
    ap.add_argument("--pass", dest="passes", action="append", choices=["heads", "layers"])
    ap.add_argument("--out", type=Path, default=HERE / "out" / "scoring_speed.json")
    args = ap.parse_args()
    # heads first: the layer pass cuts the model to stage III's width in place
    passes = [name for name in ("heads", "layers") if name in (args.passes or ("heads", "layers"))]
    rec = load_rec_model(args.model, need_catalog=True)
    rec.model.eval()
    calib, settings, lengths = calibration(rec, args.data, args.samples, args.template, args.max_history)
    targets = resolve_targets(rec.model.config)
    report = json.loads(args.out.read_text()) if args.out.is_file() else {"benchmark": "scoring_speed", "runs": {}}
    run = {"code": str(Path(prunerec.__file__).parent), "commit": _commit(Path(prunerec.__file__).parent),
           "model": args.model, "data": args.data,
           "samples": calib.n_samples, "prompt": dataclasses.asdict(settings), **lengths,
           "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    earlier = report["runs"].get(args.label, {})
    run.update({name: earlier[name] for name in ("heads", "layers") if name in earlier and name not in passes})
    report["runs"][args.label] = run
    for name in passes:
        if name == "layers":
            with torch.no_grad():
                cut_to_stage3_shape(rec.model, targets)
        run[name] = time_heads(rec.model, calib, targets) if name == "heads" else time_layers(rec.model, calib, targets)
        report["comparison"] = compare(report["runs"])
        write_json(args.out, report)
        print(f"{args.label} {name}: {run[name]['seconds']} s", flush=True)
    print(json.dumps(report["comparison"], indent=1))


if __name__ == "__main__":
    main()
