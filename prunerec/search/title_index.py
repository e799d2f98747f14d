"""One index of a catalog's titles for every consumer: evaluation, export verification and the
serving engines.

`TitleIndex` holds the unique titles (catalog order), the token ids each is written as (quoted
title, newline, EOS), the prefix trie over them, and `TrieArrays`, a compact array form of the
same trie (CSR: node ids in breadth-first order, root 0, children sorted by token) that a
process without the tokenizer (e.g. vLLM's engine core) loads from one .npz file.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunerec.io import atomic_path
from prunerec.model.encode import response_ids
from prunerec.search.trie import TitleTrie

NO_NODE = -1


@dataclass(frozen=True)
class TrieArrays:
    """child_start[n]:child_start[n + 1] indexes the children of node n in child_token (sorted)
    and child_node (the child's node id)."""

    child_start: np.ndarray   # int64 [nodes + 1]
    child_token: np.ndarray   # int64 [edges]
    child_node: np.ndarray    # int64 [edges]
    eos_id: int
    max_len: int

    ROOT = 0

    @property
    def num_nodes(self) -> int:
        return len(self.child_start) - 1

    def children(self, node: int) -> np.ndarray:
        """Token ids allowed after `node` (sorted); empty for a complete title or NO_NODE."""
        if node == NO_NODE:
            return self.child_token[:0]
        return self.child_token[self.child_start[node]:self.child_start[node + 1]]

    def step(self, node: int, token: int) -> int:
        """The node after `token`, or NO_NODE when the trie does not allow it."""
        if node == NO_NODE:
            return NO_NODE
        begin, end = int(self.child_start[node]), int(self.child_start[node + 1])
        at = begin + int(np.searchsorted(self.child_token[begin:end], token))
        return int(self.child_node[at]) if at < end and int(self.child_token[at]) == int(token) else NO_NODE

    def walk(self, tokens: Sequence[int], node: int = ROOT) -> int:
        for token in tokens:
            node = self.step(node, token)
        return node

    @classmethod
    def from_trie(cls, trie: TitleTrie) -> TrieArrays:
        return cls(*trie.csr(sort_children=True), int(trie.eos_id), int(trie.max_len))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as out:
            np.savez(out, child_start=self.child_start, child_token=self.child_token, child_node=self.child_node,
                     meta=np.asarray([self.eos_id, self.max_len], dtype=np.int64))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrieArrays:
        with np.load(path) as data:
            eos_id, max_len = (int(v) for v in data["meta"])
            return cls(data["child_start"], data["child_token"], data["child_node"], eos_id, max_len)


@dataclass
class TitleIndex:
    titles: list[str]             # unique titles in catalog order; index = title index
    responses: list[list[int]]    # token ids each title is written as (quoted, newline, EOS)
    trie: TitleTrie
    _arrays: TrieArrays | None = field(default=None, repr=False)

    @classmethod
    def build(cls, tokenizer, titles: Sequence[str]) -> TitleIndex:
        titles = list(dict.fromkeys(titles))
        responses = response_ids(tokenizer, titles)
        return cls(titles, responses, TitleTrie(responses, tokenizer.eos_token_id))

    @classmethod
    def of_catalog(cls, tokenizer, catalog) -> TitleIndex:
        return cls.build(tokenizer, catalog.unique_titles())

    @property
    def arrays(self) -> TrieArrays:
        if self._arrays is None:
            self._arrays = TrieArrays.from_trie(self.trie)
        return self._arrays

    @property
    def max_len(self) -> int:
        return self.trie.max_len

    def widest_node(self) -> int:
        return int(np.diff(self.arrays.child_start).max())
