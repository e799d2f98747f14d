"""Serving speed of base and pruned models on every engine, side by side.

For each pair (BASE, PRUNED) of model folders, serves each model with each engine in turn
(`prunerec serve`, one server at a time) and drives it with locust at each concurrency level
(prunerec.loadtest's machinery: the same requests, answers checked against the catalog). Records
req/s, p50 and p99 per level; for vLLM also the engine's work per recommendation over the level
(vLLM requests, steps a search waited for, prompt tokens computed / found in the prefix cache,
tokens decoded: the server's /ready counters before and after); and the per-token FLOPs of each
model (weight matmuls, LM head included), so each measured pruned/base speed-up sits next to
the FLOPs ratio it could approach.

Give export folders (`prunerec export --format hf,onnx` OUT: OUT/hf serves vllm/torch, OUT/onnx
serves onnx) to cover all three engines; a plain checkpoint folder has no ONNX model and its
onnx runs are recorded as skipped.

Writes OUT.json (atomically, after every run) and OUT.md (markdown tables).
Usage:
  python bench/serve_engines.py --pair BASE PRUNED [--pair BASE2 PRUNED2 ...] --data DIR
      [--engines vllm,torch,onnx] [--users 1,4,16,64] [--duration 60s] [--out bench/out/serve_engines]
Smoke test (tiny models, minutes): --users 1,2 --duration 3s --enforce-eager
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prunerec.errors import PrunerecError  # noqa: E402
from prunerec.io import write_json, write_text  # noqa: E402
from prunerec.loadtest.options import LoadtestOptions  # noqa: E402
from prunerec.loadtest.report import parse_duration, parse_users  # noqa: E402
from prunerec.loadtest.runner import Target, run_model  # noqa: E402
from prunerec.loadtest.workload import auth_headers  # noqa: E402
from prunerec.model.validate import head_dim  # noqa: E402
from prunerec.serve.model import resolve_folder  # noqa: E402
from prunerec.serve.options import ServeOptions  # noqa: E402

ENGINES = ("vllm", "torch", "onnx")
WORK_KEYS = ("vllm_requests", "steps", "prefill_tokens", "cached_tokens", "decoded_tokens", "computed_tokens")


def per_token_flops(config) -> int:
    """Forward FLOPs of one token through the weight matmuls (2 per multiply-add), LM head
    included; attention over the context is left out (it is the same for base and pruned at
    equal head counts and small at these context lengths)."""
    heads, kv = int(config.num_attention_heads), int(getattr(config, "num_key_value_heads", None) or
                                                     config.num_attention_heads)
    per_head = head_dim(config)
    hidden, inter = int(config.hidden_size), int(config.intermediate_size)
    layer = hidden * heads * per_head * 2 + hidden * kv * per_head * 2 + 3 * hidden * inter
    return 2 * (int(config.num_hidden_layers) * layer + hidden * int(config.vocab_size))


def model_flops(folder: Path) -> int:
    from transformers import AutoConfig

    return per_token_flops(AutoConfig.from_pretrained(resolve_folder(folder, "torch")))


def engine_counters(url: str) -> dict:
    """The vLLM engine's running totals (empty for other engines)."""
    try:
        engine = requests.get(url + "/ready", headers=auth_headers(), timeout=30).json().get("engine", {})
    except (requests.RequestException, ValueError):
        return {}
    if "totals" not in engine:
        return {}
    return {"searches": engine["searches"], "engine_steps": engine["engine_steps"], **engine["totals"]}


def work_per_recommendation(before: dict, after: dict) -> dict | None:
    searches = after.get("searches", 0) - before.get("searches", 0)
    if not before or searches <= 0:
        return None
    out = {key: round((after[key] - before[key]) / searches, 2) for key in WORK_KEYS}
    out["engine_steps"] = round((after["engine_steps"] - before["engine_steps"]) / searches, 2)
    return out


def run_one(folder: Path, engine: str, options: LoadtestOptions, data_dir: Path, out_dir: Path, role: str) -> dict:
    """Serve `folder` on `engine`, run every level; the vLLM work per level comes from /ready."""
    try:
        resolve_folder(folder, engine)
    except PrunerecError as err:
        return {"skipped": str(err)}
    counters: list[dict] = []

    def on_level(result: dict) -> None:
        counters.append(engine_counters(result["url"]))

    def say(message: str) -> None:
        print(f"[{engine}] {message}", file=sys.stderr, flush=True)

    target = Target(role, str(folder), folder=folder)
    serve = options.serve
    run_options = replace(options, serve=replace(serve, engine=engine,
                                                 enforce_eager=serve.enforce_eager and engine == "vllm",
                                                 processes=serve.processes if engine == "torch" else None))
    result = run_model(target, run_options, data_dir, out_dir / f"{role}-{engine}", say, on_level)
    previous = result["ready"].get("engine", {})
    previous = ({"searches": previous["searches"], "engine_steps": previous["engine_steps"], **previous["totals"]}
                if "totals" in previous else {})
    for level, now in zip(result["levels"], counters):
        level["vllm_work"] = work_per_recommendation(previous, now)
        previous = now
    return result


def measure(pairs, data_dir: Path, engines, options: LoadtestOptions, out: Path) -> dict:
    record = {"settings": {"users": list(options.users), "duration_s": options.duration_s, "k": options.k,
                           "beams": options.serve.beams, "engines": list(engines), "data": str(data_dir),
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
              "pairs": []}
    for number, (base, pruned) in enumerate(pairs):
        entry = {"base": str(base), "pruned": str(pruned),
                 "flops_per_token": {"base": model_flops(base), "pruned": model_flops(pruned)}, "runs": {}}
        record["pairs"].append(entry)
        for engine in engines:
            for role, folder in (("base", base), ("pruned", pruned)):
                runs_dir = out.parent / f"{out.name}-runs" / f"pair{number}"
                entry["runs"].setdefault(engine, {})[role] = run_one(folder, engine, options, data_dir, runs_dir, role)
                write_json(out.with_suffix(".json"), record)
    record["complete"] = True
    write_json(out.with_suffix(".json"), record)
    write_text(out.with_suffix(".md"), markdown(record))
    return record


def _cell(value, digits=1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(record: dict) -> str:
    lines = ["| pair | model | engine | users | req/s | p50 ms | p99 ms | vLLM requests/rec | vLLM steps/rec "
             "| prefill tokens/rec | decoded tokens/rec |", "|" + "---|" * 11]
    ratios = ["| pair | engine | users | req/s pruned/base | FLOPs/token pruned/base | ideal speed-up |",
              "|---|---|---|---|---|---|"]
    for number, pair in enumerate(record["pairs"]):
        flops = pair["flops_per_token"]
        flops_ratio = flops["pruned"] / flops["base"]
        for engine, runs in pair["runs"].items():
            for role in ("base", "pruned"):
                run = runs.get(role, {})
                if "skipped" in run:
                    lines.append(f"| {number} | {role} | {engine} | - | skipped: {run['skipped'][:60]} |||||||")
                    continue
                for level in run.get("levels", []):
                    work = level.get("vllm_work") or {}
                    lines.append(f"| {number} | {role} | {engine} | {level['users']} | {_cell(level['rps'], 2)} "
                                 f"| {_cell(level['p50_ms'], 0)} | {_cell(level['p99_ms'], 0)} "
                                 f"| {_cell(work.get('vllm_requests'))} | {_cell(work.get('steps'))} "
                                 f"| {_cell(work.get('prefill_tokens'), 0)} | {_cell(work.get('decoded_tokens'), 0)} |")
            base_levels = {lv["users"]: lv for lv in runs.get("base", {}).get("levels", [])}
            for level in runs.get("pruned", {}).get("levels", []):
                base = base_levels.get(level["users"])
                speedup = level["rps"] / base["rps"] if base and base["rps"] else None
                ratios.append(f"| {number} | {engine} | {level['users']} | {_cell(speedup, 2)} "
                              f"| {flops_ratio:.3f} | {1 / flops_ratio:.2f}x |")
    pairs = [f"- pair {n}: base `{p['base']}`, pruned `{p['pruned']}`" for n, p in enumerate(record["pairs"])]
    settings = json.dumps(record["settings"])
    return "\n".join(["# Serving engines: base vs pruned", "", *pairs, "", f"Settings: `{settings}`", "",
                      *lines, "", *ratios, ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", nargs=2, action="append", required=True, metavar=("BASE", "PRUNED"), type=Path)
    ap.add_argument("--data", required=True, type=Path, help="prepared data folder (requests come from its test split)")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--users", default="1,4,16,64")
    ap.add_argument("--duration", default="60s", help="per level and run, e.g. 45s or 2m")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--max-concurrency", type=int, default=16, help="serve option (every run)")
    ap.add_argument("--enforce-eager", action="store_true", help="vLLM without graph compilation (faster start)")
    ap.add_argument("--processes", type=int, default=None,
                    help="serve option for the torch runs: forked search processes (default: one per torch thread)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "serve_engines",
                    help="output path without suffix (.json and .md are written)")
    args = ap.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    try:
        unknown = [e for e in engines if e not in ENGINES]
        if unknown:
            raise PrunerecError(f"--engines: unknown {', '.join(unknown)} (choose from {', '.join(ENGINES)})")
        for base, pruned in args.pair:
            for folder in (base, pruned):
                if not folder.is_dir():
                    raise PrunerecError(f"--pair: no such model folder {folder}")
        if not (args.data / "test.jsonl").is_file():
            raise PrunerecError(f"--data {args.data}: no test.jsonl (a prepared data folder is needed)")
        serve = ServeOptions(beams=args.beams, enforce_eager=args.enforce_eager,
                             max_concurrency=args.max_concurrency, processes=args.processes)
        options = LoadtestOptions(users=tuple(parse_users(args.users)), duration_s=parse_duration(args.duration),
                                  k=args.k, serve=serve)
        record = measure(args.pair, args.data, engines, options, args.out)
    except PrunerecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
