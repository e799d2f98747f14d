"""A prefix trie over the token ids of every catalog title's response (quoted title, newline, EOS)."""
from __future__ import annotations

from collections.abc import Sequence


class TitleTrie:
    """Children of each prefix; a path that ends with EOS is a complete title.

    Titles that are a prefix of another title still work: EOS is an explicit child, so
    `"Halo"` + newline + EOS and `"Halo 2"` + newline + EOS are different paths.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], eos_id: int):
        self.eos_id = eos_id
        self.root: dict = {}
        self.ends: dict[tuple[int, ...], int] = {}  # complete path -> index of its sequence
        for index, seq in enumerate(sequences):
            seq = tuple(seq)
            if not seq or seq[-1] != eos_id:
                raise ValueError(f"title sequence {index} does not end with EOS ({eos_id})")
            node = self.root
            for token in seq:
                node = node.setdefault(token, {})
            self.ends.setdefault(seq, index)
        self.max_len = max(len(s) for s in sequences)

    def node(self, prefix: Sequence[int]) -> dict | None:
        node = self.root
        for token in prefix:
            node = node.get(token)
            if node is None:
                return None
        return node

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Token ids that continue `prefix` toward some title; [] if none (or complete)."""
        node = self.node(prefix)
        return list(node) if node else []

    def index_of(self, sequence: Sequence[int]) -> int | None:
        """The title index of a complete path, or None."""
        return self.ends.get(tuple(sequence))
