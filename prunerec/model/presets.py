"""Scratch Qwen2 shapes for machines without pretrained weights.

Every preset keeps hidden_size == num_attention_heads x head_dim (vLLM's Qwen2 assumes it).
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import Qwen2Config


@dataclass(frozen=True)
class Preset:
    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_positions: int = 1024
    help: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def config(self, vocab_size: int, eos_id: int) -> Qwen2Config:
        return Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            max_position_embeddings=self.max_positions,
            tie_word_embeddings=True,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
            use_cache=True,
        )


PRESETS = {
    "tiny": Preset("tiny", vocab_size=2048, hidden_size=128, num_layers=4, num_heads=2, num_kv_heads=1,
                   intermediate_size=512, help="~1M parameters; trains in minutes on 2 cores (demo, tests)"),
    "small": Preset("small", vocab_size=8192, hidden_size=256, num_layers=6, num_heads=4, num_kv_heads=2,
                    intermediate_size=1024,
                    help="~8M parameters (6M non-embedding), deeper and wider than tiny: the base for "
                         "real-data and pruning benchmarks on CPUs"),
    # Qwen2-0.5B's proportions at the smallest head size vLLM's CPU attention supports (32), at half
    # its attention width so that it trains on 2 cores in hours: 24 layers, one KV head for 7 query
    # heads (Qwen2-0.5B: 2 for 14), hidden = 7 x 32, MLP / hidden = 4864 / 896 exactly.
    "deep": Preset("deep", vocab_size=8192, hidden_size=224, num_layers=24, num_heads=7, num_kv_heads=1,
                   intermediate_size=1216,
                   help="~24M parameters (22M non-embedding), Qwen2-0.5B's depth, query heads per KV head "
                        "and MLP ratio at head_dim 32: the base where PruneRec's paper proportions apply"),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(name)
    return PRESETS[name]
