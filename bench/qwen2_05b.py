"""Benchmark: a user's Qwen2-0.5B through every command, on CPU, with random weights.

The model has the published Qwen2-0.5B shape (24 layers, hidden 896, 14 q / 2 kv heads of 64,
MLP 4,864, 151,936-row vocabulary, tied embeddings) and the real Qwen2 tokenizer, bf16 on
disk like a real checkpoint; the weights are random (no hub here), so quality is not measured,
only what each step costs. Stages, each a separate process (its wall time and peak RSS, which
includes the processes it starts, come from wait4):

  build     random weights of that shape, bf16, saved as a plain Hugging Face folder
  train     `prunerec train --model FOLDER` (Alpaca template), a few steps
  evaluate  `prunerec evaluate` (trie-constrained beam search) on a few test users
  compress  `prunerec compress` to the paper's target shape (7 q / 1 kv heads, hidden 448,
            MLP 896, 8 layers: 13,316,032 non-embedding parameters), few calibration samples,
            a few distillation steps
  export    `prunerec export --format hf,onnx` of the result (verified)
  serve     `prunerec serve --engine vllm` of the export, a handful of recommendations
  old_heads the head-importance pass as it was before layer inputs were cached (one full masked
            forward per head): a few heads timed and extrapolated to every head (the full
            pass takes hours); the cached pass's time is compress's measured stage-1 head time

Writes bench/out/qwen2_05b.json (--out). Work files (about 4 GB at full size) go to --work.
Usage: python bench/qwen2_05b.py                       # the full shape (about 1-2 h on 2 cores)
       python bench/qwen2_05b.py --layers 4 --target-layers 2 --out /tmp/q.json   # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
QWEN2 = SHARED / "models" / "qwen2-0.5b"
GAMES = SHARED / "data" / "amazon-games"
PAPER_NON_EMBEDDING = 13_316_032
TARGET = {"heads": 7, "kv_heads": 1, "hidden": 448, "mlp": 896}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=24, help="Layers of the built model (24 = Qwen2-0.5B).")
    p.add_argument("--target-layers", type=int, default=8)
    p.add_argument("--calib-samples", type=int, default=4)
    p.add_argument("--distill-steps", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-users", type=int, default=4)
    p.add_argument("--requests", type=int, default=5, help="Recommendations asked of the vLLM server.")
    p.add_argument("--old-heads", type=int, default=2, help="Heads timed on the uncached path.")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--work", type=Path, default=Path("/tmp/prunerec-qwen2-05b"))
    p.add_argument("--out", type=Path, default=HERE / "out" / "qwen2_05b.json")
    p.add_argument("--resume", action="store_true", help="Skip the stages already recorded in WORK/stages.json.")
    p.add_argument("--build-into", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--time-old-heads", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- stages run in a child


def build_model(folder: Path, layers: int) -> None:
    import torch
    from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM

    config = AutoConfig.from_pretrained(QWEN2, num_hidden_layers=layers, max_window_layers=layers,
                                        layer_types=["full_attention"] * layers)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(QWEN2).save_pretrained(folder)


def time_old_heads(base: Path, args) -> dict:
    """Per-head cost of the uncached pass (a full forward over the calibration prompts with one
    head masked), on real prompts of the same count compress scores with."""
    import torch

    from prunerec.compress import hooks
    from prunerec.compress.stages import build_calibration
    from prunerec.data.catalog import load_dataset
    from prunerec.model.checkpoint import load_rec_model
    from prunerec.model.encode import build_examples
    from prunerec.train.sft import subsample

    rec = load_rec_model(str(base))
    data = load_dataset(GAMES, splits=("train",))
    rows = subsample(data["train"], args.calib_samples, 0)
    calib = build_calibration(build_examples(rec.tokenizer, rows, data.catalog, rec.settings),
                              rec.tokenizer.pad_token_id)
    model, n_layers = rec.model, rec.model.config.num_hidden_layers
    batches = [hooks.to_model_device(model, b) for b in calib.prompts]
    with torch.no_grad(), hooks.eval_mode(model):
        t0 = time.perf_counter()
        ref = [hooks.last_token_logp(model, b) for b in batches]
        ref_seconds = time.perf_counter() - t0
        per_head = []
        for i in range(args.old_heads):
            layer = (n_layers - 1) * i // max(1, args.old_heads - 1)
            with hooks.masked_heads(model, {layer: [i % model.config.num_attention_heads]}):
                t0 = time.perf_counter()
                hooks.mean_kl_full_forward(model, batches, ref)
                per_head.append(time.perf_counter() - t0)
    n_heads = n_layers * model.config.num_attention_heads
    unit = sum(per_head) / len(per_head)
    return {"calibration_samples": calib.n_samples, "reference_seconds": round(ref_seconds, 2),
            "heads_timed": len(per_head), "seconds_per_head": round(unit, 2), "heads": n_heads,
            "estimated_seconds": round(ref_seconds + n_heads * unit, 1),
            "basis": f"reference forward + {n_heads} heads x {unit:.2f} s per masked full forward (extrapolated)"}


# ----------------------------------------------------------------------------- the driver


def _env(args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants now (0 once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


def _finish(proc, started: float, name: str, log: Path, sampled_peak: int = 0) -> dict:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak = max(usage.ru_maxrss * 1024, sampled_peak)  # sampled: the whole tree at once (vLLM's workers)
    record = {"seconds": round(time.perf_counter() - started, 1), "peak_rss_gib": round(peak / 2**30, 2),
              "exit_code": proc.returncode, "log": str(log)}
    print(f"{name:<10} {record['seconds']:8.1f} s  peak RSS {record['peak_rss_gib']:6.2f} GiB  (exit "
          f"{proc.returncode})", flush=True)
    if proc.returncode != 0 and name != "serve":
        sys.exit(f"{name} failed; see {log}:\n" + log.read_text()[-3000:])
    return record


def run_stage(name: str, command: list, args) -> dict:
    log = args.work / f"{name}.log"
    with open(log, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in command], cwd=REPO, env=_env(args), stdout=out,
                                stderr=subprocess.STDOUT)
        return _finish(proc, started, name, log)


def prunerec(*words) -> list:
    return [sys.executable, "-m", "prunerec.cli", *words]


def serve_stage(folder: Path, args) -> dict:
    import requests

    from prunerec.data.catalog import load_dataset

    port = 8700 + os.getpid() % 200
    log = args.work / "serve.log"
    test = load_dataset(GAMES, splits=("test",))["test"][:args.requests]
    with open(log, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in prunerec("serve", "--model", folder, "--engine", "vllm",
                                                          "--port", port, "--log-level", "warning")],
                                cwd=REPO, env=_env(args), stdout=out, stderr=subprocess.STDOUT)
        url, answers, ready_seconds, peak = f"http://127.0.0.1:{port}", [], None, 0
        try:
            while ready_seconds is None and proc.poll() is None and time.perf_counter() - started < 1200:
                peak = max(peak, tree_rss(proc.pid))
                try:
                    if requests.get(url + "/ready", timeout=5).status_code == 200:
                        ready_seconds = round(time.perf_counter() - started, 1)
                except requests.ConnectionError:
                    pass
                time.sleep(0.5)
            for sample in test if ready_seconds is not None else []:
                t0 = time.perf_counter()
                body = requests.post(url + "/v1/recommend", json={"history": list(sample.history), "k": 5},
                                     timeout=600).json()
                answers.append({"user": sample.user, "seconds": round(time.perf_counter() - t0, 2),
                                "titles": [item["title"] for item in body["items"]]})
                peak = max(peak, tree_rss(proc.pid))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        record = _finish(proc, started, "serve", log, peak)
    if ready_seconds is None:
        sys.exit(f"the vLLM server never became ready; see {log}")
    return {**record, "ready_seconds": ready_seconds, "recommendations": answers}


def _old_heads(me: list, args) -> dict:
    record = run_stage("old_heads", [*me, "--time-old-heads", args.work / "base", "--calib-samples",
                                     args.calib_samples, "--old-heads", args.old_heads], args)
    line = (args.work / "old_heads.log").read_text().split("OLD_HEADS ", 1)[1].splitlines()[0]
    return {**record, **json.loads(line)}


class _Stages:
    """Stage records, kept in WORK/stages.json after each stage (for --resume)."""

    def __init__(self, path: Path, done: dict):
        self.path, self.records = path, dict(done)

    def __setitem__(self, name: str, run) -> None:
        from prunerec.io import write_json

        if name in self.records:
            print(f"{name:<10} recorded, skipped (--resume)", flush=True)
            return
        self.records[name] = run()
        write_json(self.path, self.records)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _final_parameters(folder: Path) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from prunerec.model.surgery import count_parameters

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return count_parameters(model)


def main(argv=None) -> None:
    from prunerec.io import write_json

    args = parse_args(argv)
    if args.build_into:
        return build_model(args.build_into, args.layers)
    if args.time_old_heads:
        return print("OLD_HEADS " + json.dumps(time_old_heads(args.time_old_heads, args)))
    args.work.mkdir(parents=True, exist_ok=True)
    w, me = args.work, [sys.executable, str(Path(__file__).resolve())]
    steps = ["--batch-size", args.batch_size, "--valid-limit", 8, "--epochs", 1]
    done = _json(w / "stages.json") if args.resume and (w / "stages.json").is_file() else {}
    stages = _Stages(w / "stages.json", done)
    stages["build"] = lambda: run_stage("build", [*me, "--build-into", w / "user", "--layers", args.layers], args)
    stages["train"] = lambda: run_stage("train", prunerec(
        "train", "--data", GAMES, "--model", w / "user", "--out", w / "base", "--max-steps", args.train_steps,
        "--eval-every", args.train_steps, "--train-limit", 64, *steps), args)
    stages["evaluate"] = lambda: run_stage("evaluate", prunerec(
        "evaluate", "--model", w / "base", "--data", GAMES, "--limit", args.eval_users, "--grounding", "trie",
        "--out", w / "eval.json"), args)
    stages["compress"] = lambda: run_stage("compress", prunerec(
        "compress", "--model", w / "base", "--data", GAMES, "--out", w / "pruned",
        *[x for k, v in TARGET.items() for x in (f"--{k.replace('_', '-')}", v)], "--layers", args.target_layers,
        "--calib-samples", args.calib_samples, "--calib-batch-size", args.calib_samples,
        "--max-steps", args.distill_steps, "--train-limit", 64, "--eval-users", 0, *steps), args)
    stages["export"] = lambda: run_stage("export", prunerec(
        "export", "--model", w / "pruned" / "final", "--out", w / "export", "--format", "hf,onnx",
        "--users", 2), args)
    stages["serve"] = lambda: serve_stage(w / "export" / "hf", args)
    stages["old_heads"] = lambda: _old_heads(me, args)
    old = stages.records.pop("old_heads")
    stage1 = _json(w / "pruned" / "stage1" / "compress.json")["pruning"]
    params = _final_parameters(w / "pruned" / "final")
    full = args.layers == 24 and args.target_layers == 8
    result = {
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                    "python": platform.python_version()},
        "command": " ".join([Path(sys.executable).name, "bench/qwen2_05b.py", *(argv or sys.argv[1:])]),
        "model": {"shape": "Qwen2-0.5B" if args.layers == 24 else f"Qwen2-0.5B width, {args.layers} layers",
                  "weights": "random (bf16 on disk)", "tokenizer": "Qwen2 (151,646 tokens, 151,936 rows)"},
        "settings": {k: getattr(args, k) for k in ("calib_samples", "distill_steps", "train_steps", "batch_size",
                                                    "eval_users", "requests")},
        "stages": stages.records,
        "final_parameters": params,
        "paper_non_embedding": PAPER_NON_EMBEDDING,
        "matches_paper_shape": params["non_embedding"] == PAPER_NON_EMBEDDING if full else None,
        "head_importance": {
            "cached_seconds": stage1["scoring_seconds"].get("heads"),
            "cached_basis": "measured: compress stage 1's head scoring "
                            "(stage1/compress.json pruning.scoring_seconds.heads)",
            "uncached": old,
        },
        "export_report": {k: _json(w / "export" / "export-report.json").get(k) for k in ("dtype", "seconds")},
    }
    write_json(args.out, result)
    print(f"non-embedding parameters {params['non_embedding']:,} (paper {PAPER_NON_EMBEDDING:,}); "
          f"head importance cached {result['head_importance']['cached_seconds']} s vs uncached ~"
          f"{old['estimated_seconds']} s; wrote {args.out}")


if __name__ == "__main__":
    main()
