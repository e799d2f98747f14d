"""BPE tokenizers for scratch models, trained on catalog titles and the prompt template.

Trained with Qwen2's own pre-tokenizer (its split regex, isolated, then byte-level without a
regex of its own) and saved as a stock `Qwen2Tokenizer`, so that transformers, vLLM and
onnxruntime-genai load it like any Qwen2 tokenizer and encode identically after a round trip.
"""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer

from prunerec.model.tokenization_constants import EOS, SPECIAL_TOKENS

QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


def _bpe_pipeline() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Qwen2Tokenizer:
    """Train a byte-level BPE on `texts` and wrap it as a stock Qwen2 tokenizer."""
    if vocab_size < 300:
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level BPE (>= 300)")
    bpe = _bpe_pipeline()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    vocab = bpe.get_vocab()
    merges = _merges(bpe)
    return Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token=EOS, pad_token=EOS, unk_token=None)


def _merges(bpe: Tokenizer) -> list[tuple[str, str]]:
    import json

    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1))
            for m in json.loads(bpe.to_str())["model"]["merges"]]
