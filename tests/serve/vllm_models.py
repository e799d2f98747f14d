"""Models for the real-vLLM ranking tests: random narrow Qwen2s over the real Qwen2 tokenizer
(full 151,936-token vocabulary) and the Games catalog, whose title trie has nodes far wider than
128 children. Large initial weights make the rankings peaked (no near ties that rounding
differences between engines could swap)."""
from __future__ import annotations

from pathlib import Path

from prunerec.data.catalog import load_catalog
from prunerec.model.checkpoint import RecModel
from prunerec.model.prompt import PromptSettings
from tests.helpers import tiny_model

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
QWEN2_TOKENIZER = SHARED / "models" / "qwen2-0.5b"
QWEN2_VOCAB = 151936
GAMES = SHARED / "data" / "amazon-games"
SETTINGS = PromptSettings(template="compact", category="games", max_history=5, cutoff_tokens=160)


def available() -> bool:
    return (QWEN2_TOKENIZER / "tokenizer.json").is_file() and (GAMES / "items.jsonl").is_file()


def qwen2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)


def games_tokenizer(vocab_size: int = 1024):
    """A small BPE tokenizer trained on the Games titles (a narrow vocabulary: fast references)."""
    from tests.helpers import tiny_tokenizer

    return tiny_tokenizer(titles=list(dict.fromkeys(load_catalog(GAMES / "items.jsonl").titles)),
                          vocab_size=vocab_size)


def build_model(out: Path, tokenizer, pruned: bool, seed: int = 5, vocab_size: int | None = None) -> Path:
    """Stock: hidden 64 = 2 query heads x 32 over 1 KV head (vLLM's native Qwen2). Pruned: 2 of 4
    query heads kept by prunerec.model.surgery, 2 x 32 = 64 != hidden 128 (vLLM's transformers
    backend). `vocab_size`: the embedding rows (Qwen2 pads its 151,646 tokens to 151,936)."""
    eos, vocab = tokenizer.eos_token_id, vocab_size or len(tokenizer)
    shape = dict(initializer_range=0.3, intermediate_size=128, head_dim=32, max_position_embeddings=512)
    if pruned:
        from prunerec.model.surgery import keep_attention_heads

        model = tiny_model(vocab, eos, seed=seed, hidden_size=128, num_attention_heads=4,
                           num_key_value_heads=2, **shape)
        keep_attention_heads(model, [[0, 1], [0, 1]], [[0, 2], [1, 3]])
    else:
        model = tiny_model(vocab, eos, seed=seed, hidden_size=64, num_attention_heads=2,
                           num_key_value_heads=1, **shape)
    RecModel(model, tokenizer, load_catalog(GAMES / "items.jsonl"), SETTINGS, {"base": "vllm test"}).save(out)
    return out
