"""The model card (README.md) of an exported Hugging Face folder, and the provenance it shows:
prunerec.json, and when the source is a compress output, compress.json beside the weights
and the run's report.json one level up."""
from __future__ import annotations

import json
from pathlib import Path

from prunerec.model.checkpoint import SETTINGS_FILE

KS = (5, 10, 20)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def provenance(source: str | Path) -> dict:
    """What is known about how the source model was made (empty parts left out)."""
    src = Path(source).expanduser()
    out: dict = {}
    settings = _read(src / SETTINGS_FILE)
    if settings:
        out["prunerec"] = {k: v for k, v in settings.items() if k != "export"}
    stage = _read(src / "compress.json")
    if stage:
        out["compress_stage"] = {k: stage.get(k) for k in ("stage", "pruned", "method", "layer_method", "mode",
                                                          "distilled", "shape", "parameters", "eval") if k in stage}
    report = _read(src.parent / "report.json")
    if report and isinstance(report.get("final"), dict):
        entry = report["final"] if src.name == "final" else next(
            (s for s in report.get("stages", []) if s.get("stage") == src.name), None)
        if entry is not None:
            out["compress_report"] = {
                "report": str(src.parent / "report.json"), "base_model": report.get("model"),
                "data": report.get("data"), "method": (report.get("options") or {}).get("method"),
                "base_parameters": (report.get("base") or {}).get("parameters"),
                "base_eval": ((report.get("base") or {}).get("eval") or {}).get("metrics"),
                "parameters": entry.get("parameters"),
                "non_embedding_removed_share": entry.get("non_embedding_removed_share"),
                "quality_kept": entry.get("quality_kept"),
                "eval": (entry.get("eval") or {}).get("metrics"),
                "eval_users": (entry.get("eval") or {}).get("users"),
            }
    return out


def _metrics_rows(prov: dict) -> list[str]:
    rep = prov.get("compress_report") or {}
    stage = prov.get("compress_stage") or {}
    metrics = rep.get("eval") or ((stage.get("eval") or {}).get("metrics"))
    if not metrics:
        return []
    keys = [f"{m}@{k}" for m in ("HR", "NDCG") for k in KS if f"{m}@{k}" in metrics]
    users = rep.get("eval_users") or (stage.get("eval") or {}).get("users")
    lines = ["## Metrics", "", "Validation, trie-constrained beam search"
             + (f", {users} users" if users else "") + " (from the compress run):", "",
             "| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys),
             "| this model | " + " | ".join(f"{metrics[k]:.4f}" for k in keys) + " |"]
    base = rep.get("base_eval")
    if base:
        lines.append("| base model | " + " | ".join(f"{base[k]:.4f}" if k in base else "-" for k in keys) + " |")
    kept = (rep.get("quality_kept") or {}).get("mean")
    if kept is not None:
        lines += ["", f"Base quality kept (mean over HR/NDCG@{{5,10,20}}): {kept:.1%}."]
    return lines + [""]


def model_card(*, name: str, shape: dict, parameters: dict, dtype: str, prov: dict, vllm_folder: str,
               path: str = "PATH", llama: bool = False, genai_path: str | None = None) -> str:
    info = prov.get("prunerec") or {}
    prompt = info.get("prompt") or {}
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [recommendation, bigrec, prunerec, " + ("llama" if llama else "qwen2") + "]", "---", "",
             f"# {name}", "",
             "A generative recommender (BIGRec): given the titles a user interacted with, it writes the title of "
             "the next item. `catalog.jsonl` lists the items it recommends from; `prunerec.json` holds the prompt "
             "settings" + (f" (template `{prompt.get('template')}`, category `{prompt.get('category')}`)"
                           if prompt else "") + ".", ""]
    if llama:
        lines += [("This folder holds the same network as `../hf/` written as `LlamaForCausalLM` "
                  "(`attention_bias: true`, zero `o_proj` bias, explicit `head_dim`), because vLLM's native "
                  "Qwen2 ignores `head_dim` and this model has heads x head_dim != hidden size."), ""]
    s = shape
    lines += ["## Shape", "",
              f"- {s['layers']} layers, {s['heads']} query / {s['kv_heads']} KV heads of {s['head_dim']}, "
              f"hidden {s['hidden']}, MLP {s['mlp']}, vocabulary {s['vocab']}"
              + (", tied embeddings" if s["tied_embeddings"] else ""),
              f"- parameters: {parameters['total']:,} in total, {parameters['non_embedding']:,} non-embedding",
              f"- weights: safetensors, {dtype}", ""]
    lines += ["## Provenance", ""]
    rep, stage = prov.get("compress_report") or {}, prov.get("compress_stage") or {}
    if info.get("base"):
        lines.append(f"- base: `{info['base']}`")
    training = info.get("training") or {}
    if training:
        lines.append(f"- fine-tuned (prunerec train) on `{training.get('data')}`: {training.get('steps')} steps, "
                     f"best validation loss {training.get('best_valid_loss')}")
    comp = info.get("compress") or {}
    if comp:
        lines.append(f"- compressed (prunerec compress) from `{comp.get('base')}`: method {comp.get('method')}, "
                     f"stage {comp.get('stage')}, distilled: {comp.get('distilled')}, "
                     f"targets {json.dumps(comp.get('targets'))}")
    if rep:
        removed = rep.get("non_embedding_removed_share")
        base_params = rep.get("base_parameters") or {}
        if removed is not None and base_params:
            lines.append(f"- non-embedding parameters: {base_params.get('non_embedding', 0):,} in the base -> "
                         f"{parameters['non_embedding']:,} ({removed:.2%} removed); report: `{rep['report']}`")
    elif stage:
        lines.append(f"- compress stage record: {stage.get('stage')} ({stage.get('pruned')})")
    if lines[-1] == "":
        lines.append("- no provenance recorded")
    lines.append("")
    lines += _metrics_rows(prov)
    lines += ["## Use", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f"model = AutoModelForCausalLM.from_pretrained(\"{path}\")  # stock class, no trust_remote_code",
              f"tokenizer = AutoTokenizer.from_pretrained(\"{path}\")", "```", "",
              "Ranked recommendations (trie-constrained beam search over the catalog):", "",
              "```", f"prunerec evaluate --model {path} --data DATA_DIR", f"prunerec serve --model {path}", "```", "",
              "With vLLM (`python -m vllm.entrypoints.openai.api_server --model FOLDER`): serve "
              + f"the `{vllm_folder}/` folder of the export"
              + ("; this model has heads x head_dim != hidden size, which vLLM's native Qwen2 gets wrong, so use "
                 "the Llama copy (or pass vLLM's own `--model-impl transformers`; `prunerec serve` "
                 "picks that backend by itself)." if vllm_folder != "hf" else "."), ""]
    if genai_path:
        lines += _genai_rows(genai_path)
    return "\n".join(lines)


def _genai_rows(genai_path: str) -> list[str]:
    return ["## onnxruntime-genai", "",
            f"`{genai_path}` holds the model built by onnxruntime-genai's model builder (fp32, CPU provider) "
            "with its `genai_config.json`, the tokenizer, `catalog.jsonl` and `prunerec.json`. Greedy decoding:", "",
            "```python", "import onnxruntime_genai as og", "",
            f"model = og.Model(\"{genai_path}\")", "tokenizer = og.Tokenizer(model)",
            "params = og.GeneratorParams(model)",
            "params.set_search_options(do_sample=False, max_length=256)",
            "generator = og.Generator(model, params)",
            "generator.append_tokens(tokenizer.encode(prompt))  # the prompt prunerec builds (prunerec.json)",
            "while not generator.is_done():", "    generator.generate_next_token()",
            "print(tokenizer.decode(generator.get_sequence(0)))", "```", "",
            "Its search is not restricted to catalog titles; for ranked recommendations use `prunerec evaluate`/"
            "`prunerec serve` on this folder or the export's `onnx/` folder.", ""]
