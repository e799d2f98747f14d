"""How vLLM is set up for a served model (pure decisions, no vLLM import): which of its model
implementations a config needs, and whether its engine core runs in this process."""
from __future__ import annotations

from prunerec.errors import PrunerecError
from prunerec.model.validate import head_dim


def needs_transformers_impl(config) -> bool:
    """vLLM's native Qwen2 ignores config.head_dim (hidden_size // heads is assumed)."""
    heads = int(config.num_attention_heads)
    return config.model_type == "qwen2" and heads * head_dim(config) != int(config.hidden_size)


def core_runs_in_process(core: str, model_impl: str) -> bool:
    """Whether vLLM's engine core gets its own process. `auto`: in this process, except for
    vLLM's transformers backend, which patches transformers' model classes process-wide (a
    transformers model loaded later in the server, e.g. for L2 grounding, would break)."""
    if core not in ("auto", "inline", "process"):
        raise PrunerecError(f"unknown vLLM core mode '{core}' (auto, inline or process)")
    if core == "inline" and model_impl == "transformers":
        raise PrunerecError("--vllm-core inline cannot serve this model: its heads x head_dim differs from hidden "
                            "size, so vLLM serves it with its transformers backend, which must run in its own "
                            "process; use --vllm-core auto or process")
    return core == "process" or (core == "auto" and model_impl == "transformers")
