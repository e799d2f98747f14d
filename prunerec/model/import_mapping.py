"""The pure half of `prunerec import`: a Llama, Mistral or Qwen2 config and state dict become an exactly
equal Qwen2 config and state dict, or the reasons they cannot.

Why the mapping is exact: a Llama (or a Mistral without a sliding window) is a Qwen2 whose q/k/v
biases are zero and whose attention never slides; both have the same RMSNorm, rotary embedding
(any rope type transformers computes for both), grouped-query attention, SiLU-gated MLP and
embedding tie. So the config maps field by field and the weights keep their names; q/k/v biases
are added as zeros, o_proj and MLP biases (which Qwen2 lacks) are dropped when they are all zero.
Whatever would not map exactly is refused with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import Qwen2Config

from prunerec.model.validate import head_dim

CAUSAL_LM_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# Rope types whose frequencies transformers computes from the config alone, the same way for both.
EXACT_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")

_QKV_BIASES = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")
_O_BIAS = "self_attn.o_proj.bias"
_MLP_BIASES = ("mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias")


# --------------------------------------------------------------------------- config mapping

def config_refusals(source) -> list[str]:
    """Why `source` (a transformers config) cannot become an exactly equal Qwen2; empty if it can."""
    model_type = getattr(source, "model_type", None)
    if model_type not in CAUSAL_LM_CLASSES:
        return [f"model_type '{model_type}' is not supported (supported: {', '.join(CAUSAL_LM_CLASSES)})"]
    reasons = [f"architecture {name} is not a causal LM of type {model_type} ({CAUSAL_LM_CLASSES[model_type]})"
               for name in getattr(source, "architectures", None) or () if name != CAUSAL_LM_CLASSES[model_type]]
    if model_type != "qwen2" and (getattr(source, "sliding_window", None) is not None
                                  or getattr(source, "use_sliding_window", False)):
        reasons.append(f"sliding window attention (sliding_window={getattr(source, 'sliding_window', None)}): "
                       "the Qwen2 mapping assumes full attention")
    reasons += _rope_refusals(getattr(source, "rope_parameters", None) or {})
    return reasons


def _rope_refusals(rope: dict) -> list[str]:
    if "rope_theta" not in rope:
        return [f"rope parameters without rope_theta ({rope}): per-layer-type rope is not supported"]
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in EXACT_ROPE_TYPES:
        return [f"rope scaling type '{rope_type}' is not supported (supported: {', '.join(EXACT_ROPE_TYPES)})"]
    return []


def map_config(source) -> Qwen2Config | list[str]:
    """The Qwen2 config equal to `source` (llama, mistral or qwen2), or the reasons there is none."""
    reasons = config_refusals(source)
    if reasons:
        return reasons
    if source.model_type == "qwen2":
        return Qwen2Config.from_dict(source.to_dict())
    heads = source.num_attention_heads
    return Qwen2Config(
        vocab_size=source.vocab_size, hidden_size=source.hidden_size, intermediate_size=source.intermediate_size,
        num_hidden_layers=source.num_hidden_layers, num_attention_heads=heads,
        num_key_value_heads=source.num_key_value_heads or heads,
        head_dim=head_dim(source),
        hidden_act=source.hidden_act, max_position_embeddings=source.max_position_embeddings,
        initializer_range=source.initializer_range, rms_norm_eps=source.rms_norm_eps, use_cache=source.use_cache,
        tie_word_embeddings=source.tie_word_embeddings, rope_parameters=dict(source.rope_parameters),
        use_sliding_window=False, sliding_window=None, attention_dropout=source.attention_dropout,
        bos_token_id=source.bos_token_id, eos_token_id=source.eos_token_id, pad_token_id=source.pad_token_id,
    )


def config_summary(config) -> dict:
    """The shape of a model config in a few fields (for reports)."""
    heads = config.num_attention_heads
    return {
        "model_type": config.model_type, "layers": config.num_hidden_layers, "hidden": config.hidden_size,
        "heads": heads, "kv_heads": config.num_key_value_heads,
        "head_dim": head_dim(config),
        "intermediate": config.intermediate_size, "vocab": config.vocab_size,
        "tied_embeddings": bool(config.tie_word_embeddings), "hidden_act": config.hidden_act,
        "rms_norm_eps": config.rms_norm_eps, "max_position_embeddings": config.max_position_embeddings,
        "rope": dict(getattr(config, "rope_parameters", None) or {}),
    }


# --------------------------------------------------------------------------- weight mapping

@dataclass
class MappedWeights:
    weights: dict[str, torch.Tensor]      # a complete Qwen2 state dict (tensors shared with the source)
    zero_biases_added: list[str] = field(default_factory=list)
    zero_biases_dropped: list[str] = field(default_factory=list)


def qwen2_weight_shapes(config: Qwen2Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Qwen2ForCausalLM state dict with this config, and its shape."""
    hidden, inner, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    per_head = head_dim(config)
    q_width, kv_width = config.num_attention_heads * per_head, config.num_key_value_heads * per_head
    per_layer = {
        "self_attn.q_proj.weight": (q_width, hidden), "self_attn.q_proj.bias": (q_width,),
        "self_attn.k_proj.weight": (kv_width, hidden), "self_attn.k_proj.bias": (kv_width,),
        "self_attn.v_proj.weight": (kv_width, hidden), "self_attn.v_proj.bias": (kv_width,),
        "self_attn.o_proj.weight": (hidden, q_width),
        "mlp.gate_proj.weight": (inner, hidden), "mlp.up_proj.weight": (inner, hidden),
        "mlp.down_proj.weight": (hidden, inner),
        "input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
    }
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for layer in range(config.num_hidden_layers):
        shapes.update({f"model.layers.{layer}.{name}": shape for name, shape in per_layer.items()})
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def map_weights(state_dict: dict[str, torch.Tensor], config: Qwen2Config) -> MappedWeights | list[str]:
    """The Qwen2 state dict equal to a Llama/Mistral/Qwen2 `state_dict`, or the reasons there is none."""
    shapes = qwen2_weight_shapes(config)
    mapped, reasons = MappedWeights({}), []
    for name, shape in shapes.items():
        if name in state_dict:
            mapped.weights[name] = state_dict[name]
        elif name.endswith(_QKV_BIASES):
            weight = state_dict.get(name[: -len("bias")] + "weight")
            dtype = weight.dtype if weight is not None else torch.float32
            mapped.weights[name] = torch.zeros(shape, dtype=dtype)
            mapped.zero_biases_added.append(name)
        elif name == "lm_head.weight" and config.tie_word_embeddings and "model.embed_tokens.weight" in state_dict:
            mapped.weights[name] = state_dict["model.embed_tokens.weight"]
        else:
            reasons.append(f"missing weight {name}")
    reasons += _shape_refusals(mapped.weights, shapes)
    reasons += _extra_weight_refusals(state_dict, shapes, mapped)
    if config.tie_word_embeddings and not reasons and not torch.equal(mapped.weights["lm_head.weight"],
                                                                     mapped.weights["model.embed_tokens.weight"]):
        reasons.append("lm_head.weight differs from the embeddings although the config ties them")
    return reasons or mapped


def _shape_refusals(weights: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> list[str]:
    return [f"weight {name} has shape {tuple(tensor.shape)}, the config implies {shapes[name]}"
            for name, tensor in weights.items() if tuple(tensor.shape) != shapes[name]]


def _extra_weight_refusals(state_dict, shapes, mapped: MappedWeights) -> list[str]:
    """Refusals for the source tensors Qwen2 has no place for; all-zero o_proj/MLP biases are dropped."""
    non_zero = {"o_proj": [], "MLP": []}
    unexpected = []
    for name, tensor in state_dict.items():
        if name in shapes:
            continue
        kind = "o_proj" if name.endswith(_O_BIAS) else "MLP" if name.endswith(_MLP_BIASES) else None
        if kind is None:
            unexpected.append(name)
        elif torch.count_nonzero(tensor):
            non_zero[kind].append(name)
        else:
            mapped.zero_biases_dropped.append(name)
    reasons = [f"non-zero {kind} biases ({some_names(names)}): Qwen2 has no {kind} bias"
               for kind, names in non_zero.items() if names]
    if unexpected:
        reasons.append(f"unexpected weights Qwen2 has no place for: {some_names(unexpected)}")
    return reasons


def some_names(names: list[str], shown: int = 3) -> str:
    """The first `shown` of `names`, and how many more there are (for messages)."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
