"""OUT/genai: the onnxruntime-genai route. onnxruntime-genai's model builder
(`python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT/genai -p fp32 -e cpu`) turns an fp32
Hugging Face copy of the model into its own ONNX graph (GroupQueryAttention, KV cache managed by
onnxruntime-genai) with genai_config.json and the tokenizer; catalog.jsonl and prunerec.json are
added beside them.

What is refused, before anything is written:
  --dtype fp16   the builder makes fp16 graphs for GPU providers only (valid CPU precisions are
                 fp32, int8 and int4); bf16 is built as fp32 over the bf16-rounded weights, like
                 the bf16 ONNX graph.
  head_dim % 16  onnxruntime's CPU GroupQueryAttention kernel rejects such heads at run time
                 ("head_size shall be a multiple of 16").
Models whose heads x head_dim != hidden_size (head- or hidden-pruned) build correctly: the builder
reads config.head_dim (checked on tiny head- and hidden-pruned models: same greedy tokens,
log-probabilities within ~1e-5).

The builder runs in a subprocess: it appends its own folder to sys.path and imports top-level
modules named `builders`, `quantization`, `loaders`, and prints to stdout.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from prunerec.errors import PrunerecError

BUILDER = "onnxruntime_genai.models.builder"
CONFIG_FILE = "genai_config.json"
HEAD_DIM_MULTIPLE = 16  # onnxruntime's CPU GroupQueryAttention
GRAPH_DTYPE = {"fp32": "fp32", "bf16": "fp32"}  # export --dtype -> builder precision (-p), CPU provider


def dtype_problem(dtype: str) -> str | None:
    """Why `--format genai` cannot be combined with this `--dtype` (None when it can)."""
    if dtype in GRAPH_DTYPE:
        return None
    if dtype == "fp16":
        return ("--format genai cannot use --dtype fp16: onnxruntime-genai's model builder makes fp16 models only "
                "for GPU providers (CUDA, DML; its CPU precisions are fp32, int8, int4) and this export targets "
                "the CPU provider. Use --dtype fp32, or bf16 (built as fp32 over the bf16-rounded weights), for "
                "genai; --format onnx gives an fp16 graph that runs on CPU")
    return f"--format genai cannot use --dtype {dtype}; choose from {', '.join(GRAPH_DTYPE)}"


def model_problem(config) -> str | None:
    """Why this model cannot go the genai route (None when it can)."""
    from prunerec.export.hf import head_dim

    arch = (getattr(config, "architectures", None) or [None])[0] or {
        "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}.get(config.model_type, config.model_type)
    if arch not in ("Qwen2ForCausalLM", "LlamaForCausalLM"):
        return f"--format genai: prunerec exports Qwen2 (or Llama) recommenders through the builder, not {arch}"
    hd = head_dim(config)
    if hd % HEAD_DIM_MULTIPLE:
        return (f"--format genai cannot export this model: its head_dim is {hd}, and the GroupQueryAttention "
                f"operator that onnxruntime-genai's builder emits needs a head_dim that is a multiple of "
                f"{HEAD_DIM_MULTIPLE} on onnxruntime's CPU provider (\"head_size shall be a multiple of 16\"). "
                "Export hf,onnx instead: prunerec's own ONNX decoder handles any head_dim")
    return None


def check(dtype: str, config=None) -> None:
    problem = dtype_problem(dtype) or (model_problem(config) if config is not None else None)
    if problem:
        raise PrunerecError(problem)


def _version() -> str | None:
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None
    return getattr(og, "__version__", None)


def builder_command(hf_dir: Path, out: Path, cache: Path, precision: str = "fp32") -> list[str]:
    return [sys.executable, "-m", BUILDER, "-i", str(hf_dir), "-o", str(out), "-p", precision, "-e", "cpu",
            "-c", str(cache)]


def write_genai(rec, folder: Path, export_info: dict) -> dict:
    """Build the genai model of `rec` (fp32 weights; a bf16 model must have been widened with
    .float()) into `folder`, then add catalog.jsonl and prunerec.json. Returns the export record."""
    from prunerec.export import hf

    if _version() is None:
        raise PrunerecError("--format genai needs onnxruntime-genai (pip install onnxruntime-genai)")
    if next(rec.model.parameters()).dtype != torch.float32:
        raise PrunerecError("the genai route builds from fp32 weights")
    folder = Path(folder)
    work = Path(tempfile.mkdtemp(prefix=".genai-build.", dir=folder.parent))
    try:
        stage = work / "hf"
        hf.write_hf(rec, stage, {**export_info, "format": "hf", "staging_for": "genai"})
        command = builder_command(stage, folder, work / "cache")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            tail = "\n".join((done.stdout + "\n" + done.stderr).strip().splitlines()[-15:])
            raise PrunerecError(f"onnxruntime-genai's model builder failed (exit {done.returncode}):\n{tail}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    missing = [name for name in (CONFIG_FILE, "model.onnx") if not (folder / name).is_file()]
    if missing:
        raise PrunerecError(f"onnxruntime-genai's model builder wrote no {', '.join(missing)} in {folder}")
    record = {**export_info, "format": "genai", "graph_dtype": "fp32", "execution_provider": "cpu",
              "onnxruntime_genai": _version(),
              "builder": f"python -m {BUILDER} -i HF_DIR -o OUT/genai -p fp32 -e cpu",
              "builder_seconds": round(seconds, 2),
              "files": sorted(p.name for p in folder.iterdir())}
    rec.save_recommender_files(folder, export=record)
    return record


# ----------------------------------------------------------------------------- running it


def load_model(folder: str | Path, threads: int | None = None):
    """og.Model of OUT/genai on the CPU provider with `threads` intra-op threads (default: torch's)."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    n = int(threads or torch.get_num_threads() or os.cpu_count() or 1)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": n,
                                                                         "inter_op_num_threads": 1}}}}))
    return og.Model(config)


def greedy(model, prompts: Sequence[Sequence[int]], steps: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """onnxruntime-genai's own greedy search (GeneratorParams do_sample=False), one prompt at a
    time: (tokens [batch, steps], log-probabilities [batch, steps, vocab] of the logits each token
    was chosen from, max |logit|). EOS is ignored like in verify.greedy: when the search emits it
    (and the generator reports done), it is fed back in and decoding continues."""
    import onnxruntime_genai as og

    tokens = torch.zeros((len(prompts), steps), dtype=torch.long)
    logprobs, scale = [], 0.0
    for row, prompt in enumerate(prompts):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, num_beams=1, max_length=len(prompt) + steps + 1, min_length=0,
                                  repetition_penalty=1.0)
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray(prompt, dtype=np.int32))
        rows = []
        for step in range(steps):
            logits = torch.from_numpy(np.asarray(generator.get_logits(), dtype=np.float32).reshape(-1).copy())
            scale = max(scale, float(logits.abs().max()))
            rows.append(torch.log_softmax(logits, dim=-1))
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            tokens[row, step] = token
            if step + 1 < steps and generator.is_done():  # EOS: the finished sequence goes on
                generator.rewind_to(generator.token_count())
                generator.append_tokens(np.asarray([token], dtype=np.int32))
        logprobs.append(torch.stack(rows))
        del generator
    return tokens, torch.stack(logprobs), scale
