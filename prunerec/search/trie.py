"""A prefix trie over the token ids of every catalog title's response (quoted title, newline, EOS)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class InsertionOrderArrays:
    """The trie as arrays, children in the order titles first reached them (the dict order the
    search breaks ties by): child_start[n]:child_start[n + 1] indexes node n's children in
    child_token and child_node; node 0 is the root."""

    child_start: np.ndarray  # int64 [nodes + 1]
    child_token: np.ndarray  # int64 [edges]
    child_node: np.ndarray   # int64 [edges]
    title_at: np.ndarray     # int64 [nodes]: the title a complete path (ending with EOS) ends at; -1 elsewhere


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

    def csr(self, sort_children: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(child_start, child_token, child_node) int64 arrays: node ids breadth first, root 0;
        each node's children sorted by token, or in the order titles first reached them."""
        return self._breadth_first(sort_children)[1]

    def _breadth_first(self, sort_children: bool) -> tuple[list[dict], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The node dicts in node-id order, and csr's arrays."""
        starts, tokens, nodes = [0], [], []
        queue = [self.root]
        for current in queue:  # breadth first; the list grows while it is walked
            for token in (sorted(current) if sort_children else current):
                tokens.append(token)
                nodes.append(len(queue))
                queue.append(current[token])
            starts.append(len(tokens))
        return queue, tuple(np.asarray(v, dtype=np.int64) for v in (starts, tokens, nodes))

    @cached_property
    def in_order(self) -> InsertionOrderArrays:
        queue, arrays = self._breadth_first(sort_children=False)
        node_of = {id(node): i for i, node in enumerate(queue)}
        title_at = np.full(len(queue), -1, dtype=np.int64)
        for sequence, index in self.ends.items():
            title_at[node_of[id(self.node(sequence))]] = index
        return InsertionOrderArrays(*arrays, title_at)

    def index_of(self, sequence: Sequence[int]) -> int | None:
        """The title index of a complete path, or None."""
        return self.ends.get(tuple(sequence))
