"""The Hugging Face side of an export: OUT/hf (stock Qwen2 folder in the chosen dtype) and,
when num_attention_heads x head_dim != hidden_size, OUT/hf-llama (the same weights as a
LlamaForCausalLM with attention_bias=True and a zero o_proj bias: vLLM's native Qwen2 ignores
config.head_dim (it assumes hidden_size // heads), its Llama honours it)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from prunerec.errors import PrunerecError
from prunerec.model.checkpoint import RecModel
from prunerec.model.validate import head_dim

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def shape(config) -> dict:
    return {"model_type": config.model_type, "layers": int(config.num_hidden_layers),
            "heads": int(config.num_attention_heads),
            "kv_heads": int(config.num_key_value_heads or config.num_attention_heads),
            "head_dim": head_dim(config), "hidden": int(config.hidden_size), "mlp": int(config.intermediate_size),
            "vocab": int(config.vocab_size), "tied_embeddings": bool(config.tie_word_embeddings),
            "max_positions": int(config.max_position_embeddings)}


def needs_llama_copy(config) -> bool:
    """vLLM's native Qwen2 assumes hidden_size == num_attention_heads x head_dim."""
    return config.model_type == "qwen2" and config.num_attention_heads * head_dim(config) != config.hidden_size


def _uses_sliding_window(config) -> bool:
    return bool(getattr(config, "use_sliding_window", False)) and "sliding_attention" in (
        getattr(config, "layer_types", None) or [])


def _ensure_generation_config(model, folder: Path) -> None:
    if not (folder / "generation_config.json").is_file():
        cfg = model.config
        GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                         pad_token_id=cfg.pad_token_id).save_pretrained(folder)


def write_hf(rec: RecModel, folder: Path, export_info: dict) -> None:
    """Weights (safetensors, in the model's dtype), config, generation config, tokenizer,
    catalog.jsonl and prunerec.json (with an "export" record) into `folder`."""
    rec = replace(rec, info={**rec.info, "export": export_info})
    rec.save(folder)
    _ensure_generation_config(rec.model, folder)


def llama_config(config) -> LlamaConfig:
    if config.model_type != "qwen2":
        raise PrunerecError(f"a Llama copy is made from Qwen2 models, not '{config.model_type}'")
    if _uses_sliding_window(config):
        raise PrunerecError("the model uses sliding-window attention, which a Llama config cannot express; "
                            "serve OUT/hf with `prunerec serve` (it picks vLLM's transformers backend by "
                            "itself) or with vLLM's own server and its --model-impl transformers flag")
    rope = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0})
    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=head_dim(config), hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_parameters=rope, tie_word_embeddings=config.tie_word_embeddings, attention_bias=True, mlp_bias=False,
        attention_dropout=config.attention_dropout, initializer_range=config.initializer_range,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        use_cache=True)


@torch.no_grad()
def to_llama(model) -> LlamaForCausalLM:
    """The same network as a LlamaForCausalLM (q/k/v biases kept, o_proj bias zero), same dtype."""
    config = llama_config(model.config)
    dtype = next(model.parameters()).dtype
    llama = LlamaForCausalLM(config).eval()
    state = dict(model.state_dict())
    for i in range(config.num_hidden_layers):
        state[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(config.hidden_size, dtype=dtype)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = llama.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise PrunerecError(f"cannot map the Qwen2 weights onto Llama: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        llama.tie_weights()
    llama = llama.to(dtype)
    llama.generation_config = GenerationConfig.from_dict(model.generation_config.to_dict())
    return llama


def write_llama(rec: RecModel, folder: Path, export_info: dict) -> None:
    llama = to_llama(rec.model)
    write_hf(replace(rec, model=llama), folder, {**export_info, "llama_copy_of": "hf"})
