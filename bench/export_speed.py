"""Benchmark: export the unpruned `small` games base and its PruneRec-compressed version, then
compare sizes on disk and ONNX Runtime decoding speed (PyTorch beside it for reference).

For each model: `prunerec export --format hf,onnx` (fp32, verified on 8 test users) into
bench/out/export_speed/<name>/; then greedy decoding with the KV cache through the same steppers
the service uses (OnnxStepper, TorchStepper) on real test prompts at batch 1 and 16: prefill
time, and decode tokens/s over --steps new tokens per row (median of --repeats runs).
Both models are timed in the same run, alternating, so their ratio is what to read.

Writes bench/out/export_speed.json and prints a markdown table.
Usage: python bench/export_speed.py [--base DIR] [--pruned DIR] [--steps 32] [--repeats 5]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from prunerec.export.checks import greedy
from prunerec.export.onnx_stepper import OnnxStepper, make_session
from prunerec.export.pipeline import ExportOptions, run_export
from prunerec.export.verify import verification_prompts
from prunerec.io import folder_bytes, write_json
from prunerec.model.checkpoint import load_rec_model, quiet_loading
from prunerec.model.surgery import count_parameters
from prunerec.search.beam import TorchStepper

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "amazon-games"
BATCHES = (1, 16)


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".onnx", ".data"))


def time_decoding(stepper, prompts, steps: int) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) of one greedy run of `steps` tokens per prompt."""
    started = time.perf_counter()
    stepper.start(prompts)
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    greedy(stepper, prompts, steps)
    total = time.perf_counter() - started
    return prefill, len(prompts) * (steps - 1) / max(total - prefill, 1e-9)


def measure(steppers: dict, prompts, steps: int, repeats: int) -> dict:
    """Median prefill ms and decode tokens/s per (model, engine, batch), models alternating."""
    samples = {key: [] for key in steppers}
    for batch in BATCHES:
        rows = prompts[:batch]
        for _ in range(repeats):
            for key, stepper in steppers.items():
                samples[key].append((batch, *time_decoding(stepper, rows, steps)))
    out = {}
    for (name, engine), runs in samples.items():
        for batch in BATCHES:
            picked = [r for r in runs if r[0] == batch]
            out.setdefault(name, {}).setdefault(engine, {})[f"batch {batch}"] = {
                "prefill_ms": round(1000 * statistics.median(r[1] for r in picked), 2),
                "decode_tokens_per_s": round(statistics.median(r[2] for r in picked), 1)}
    return out


def export_model(name: str, source: Path) -> dict:
    out = HERE / "out" / "export_speed" / name
    report, table = run_export(str(source), out, ExportOptions(formats=("hf", "onnx"), data_dir=str(DATA), users=8,
                                                                overwrite=True))
    print(table, flush=True)
    with quiet_loading():
        rec = load_rec_model(str(out / "hf"))
    return {"out": out, "rec": rec, "report": report,
            "sizes": {"hf_dir_bytes": folder_bytes(out / "hf"), "onnx_dir_bytes": folder_bytes(out / "onnx"),
                      "hf_weights_bytes": weight_bytes(out / "hf"), "onnx_weights_bytes": weight_bytes(out / "onnx")},
            "parameters": count_parameters(rec.model)}


def table(result: dict) -> str:
    lines = ["| model | non-emb params | HF weights | ONNX weights | engine | batch | prefill ms | decode tokens/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, model in result["models"].items():
        for engine, per_batch in result["speed"][name].items():
            for batch, numbers in per_batch.items():
                lines.append(f"| {name} | {model['parameters']['non_embedding']:,} | "
                             f"{model['sizes']['hf_weights_bytes'] / 2**20:.1f} MiB | "
                             f"{model['sizes']['onnx_weights_bytes'] / 2**20:.1f} MiB | {engine} | "
                             f"{batch.split()[1]} | {numbers['prefill_ms']} | {numbers['decode_tokens_per_s']} |")
    for engine in ("onnxruntime", "torch"):
        for batch in result["ratios"][engine]:
            lines.append(f"| pruned / base | | | | {engine} | {batch.split()[1]} | | "
                         f"x{result['ratios'][engine][batch]:.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=HERE / "out" / "base_games_full" / "model")
    parser.add_argument("--pruned", type=Path, default=HERE / "out" / "compress_games" / "prunerec" / "run" / "final")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    models = {"base": export_model("base", args.base), "pruned": export_model("pruned", args.pruned)}
    prompts, _, described = verification_prompts(models["base"]["rec"], DATA, max(BATCHES))
    steppers = {}
    for name, model in models.items():
        pad = model["rec"].tokenizer.pad_token_id
        steppers[(name, "onnxruntime")] = OnnxStepper(make_session(model["out"] / "onnx"), pad)
        steppers[(name, "torch")] = TorchStepper(model["rec"].model.eval(), pad)
    with torch.inference_mode():
        speed = measure(steppers, prompts, args.steps, args.repeats)
    ratios = {engine: {batch: speed["pruned"][engine][batch]["decode_tokens_per_s"]
                       / speed["base"][engine][batch]["decode_tokens_per_s"] for batch in speed["base"][engine]}
              for engine in ("onnxruntime", "torch")}
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "prompts": described,
              "steps": args.steps, "repeats": args.repeats,
              "models": {n: {"source": str(m["report"].get("source", "")), "sizes": m["sizes"],
                             "parameters": m["parameters"]} for n, m in models.items()},
              "speed": speed, "ratios": ratios}
    result["table"] = table(result)
    write_json(HERE / "out" / "export_speed.json", result)
    print(result["table"])


if __name__ == "__main__":
    main()
