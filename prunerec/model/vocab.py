"""Embedding rows past the tokenizer.

Qwen2 pads its embedding matrix past the tokenizer (151,936 rows for 151,646 tokens) so the
matrix splits evenly over devices. The padding rows are kept through pruning and export (the
shape stays stock), but no token id maps to them, so nothing may ever generate them: the trie
holds only real token ids, and free generation excludes the padding rows explicitly.
"""

from __future__ import annotations


def tokenizer_size(tokenizer) -> int:
    """Ids the tokenizer can decode (its vocabulary plus added tokens)."""
    return len(tokenizer)


def padding_ids(tokenizer, vocab_size: int) -> list[int]:
    """Embedding rows no token maps to ([] when the matrix is not padded)."""
    return list(range(tokenizer_size(tokenizer), int(vocab_size)))


def generation_ids(tokenizer, vocab_size: int) -> list[int] | None:
    """Every id free generation may write, or None when that is every row (no padding)."""
    n = tokenizer_size(tokenizer)
    return list(range(n)) if n < int(vocab_size) else None
