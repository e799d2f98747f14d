"""Long-lived vLLM requests behind beam.py's `Stepper` interface (the search side of the vLLM
engine; the engine thread lives in vllm_engine.py).

A row of the search (a beam) is a position in a vLLM request: output `position` of `request`
holds the log-probabilities of the children of the row's trie node (filled in by the engine-side
logits processor). Extending a row by the token its request decoded at that position keeps the
request; every other extension starts a new request whose prompt is prompt + beam + token. A
request may decode ahead of the search (outputs are buffered by position), so the search stays
exact even when vLLM schedules its requests unevenly.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from prunerec.errors import PrunerecError
from prunerec.search.title_index import NO_NODE, TrieArrays
from prunerec.serve.worker import Deadline, Job

Children = tuple[np.ndarray, np.ndarray]   # (sorted token ids, their log-probabilities)
NO_CHILDREN: Children = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


def children_of_logprobs(logprobs: dict) -> Children:
    """vLLM's {token id: Logprob} of one position as Children (non-finite values left out)."""
    pairs = sorted((int(t), float(v.logprob)) for t, v in logprobs.items() if math.isfinite(v.logprob))
    if not pairs:
        return NO_CHILDREN
    ids, values = zip(*pairs)
    return np.asarray(ids, dtype=np.int64), np.asarray(values, dtype=np.float32)


class LiveRequest:
    """One vLLM request and the outputs it produced so far: (token, Children of that position).
    A request whose params name a sink reads the children from vllm_trie.SINK (the engine drops
    what is left there when it stops tracking the request), others from the logprobs vLLM
    returned."""

    def __init__(self, request_id: str, prompt: list[int], params):
        from prunerec.serve.vllm_trie import SINK, SINK_KEY

        self.id, self.prompt, self.params = request_id, prompt, params
        self.sink = SINK if (getattr(params, "extra_args", None) or {}).get(SINK_KEY) else None
        self.outputs: list[tuple[int, Children]] = []
        self.finished = False
        self.cached_tokens = 0

    def prompt_input(self):
        """The prompt as vLLM's engine input (token ids need no rendering: skips that step of
        add_request)."""
        from vllm.inputs import tokens_input

        return tokens_input(self.prompt)

    def record(self, output) -> None:
        """Append a RequestOutput (DELTA: only the new tokens)."""
        if not self.outputs:
            self.cached_tokens = int(getattr(output, "num_cached_tokens", 0) or 0)
        completion = output.outputs[0]
        logprobs = completion.logprobs or []
        for at, token in enumerate(completion.token_ids):
            if self.sink is not None:
                children = self.sink.take(self.id, len(self.outputs)) or NO_CHILDREN
            else:
                children = children_of_logprobs(logprobs[at]) if at < len(logprobs) else NO_CHILDREN
            self.outputs.append((int(token), children))
        self.finished = bool(output.finished)

    def tokens(self) -> list[int]:
        return [token for token, _ in self.outputs]


class StepJob(Job):
    """Requests to start, and the outputs to wait for: (request, position), or (request, None)
    for 'until it finishes'."""

    def __init__(self, deadline: Deadline, adds: list[LiveRequest], needs: list[tuple[LiveRequest, int | None]]):
        super().__init__(deadline)
        self.adds, self.needs = adds, needs

    def satisfied(self) -> bool:
        return all(request.finished or (position is not None and len(request.outputs) > position)
                   for request, position in self.needs)


@dataclass
class SearchStats:
    """vLLM work of searches: requests started, steps waited for, prompt tokens sent and found in
    the prefix cache, tokens decoded (including any a request decoded ahead of its search)."""

    requests: int = 0
    steps: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    decoded_tokens: int = 0

    @property
    def prefill_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    def add(self, other: SearchStats) -> None:
        for name in ("requests", "steps", "prompt_tokens", "cached_tokens", "decoded_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict:
        return {"vllm_requests": self.requests, "steps": self.steps, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens, "prefill_tokens": self.prefill_tokens,
                "decoded_tokens": self.decoded_tokens,
                "computed_tokens": self.prefill_tokens + self.decoded_tokens}

    def per(self, searches: int) -> dict:
        return {k: round(v / searches, 2) for k, v in self.as_dict().items()} if searches else {}


class SparseLogprobs:
    """Log-probabilities of some token ids per row; `x[row, ids]` gives a float tensor like a
    dense [rows, vocab] tensor would (-inf for ids it does not hold). All rows sit in one sorted
    array keyed by (row, id), so a step's lookup is one search however many rows it has."""

    def __init__(self, rows: list[Children]):
        self.rows = rows
        lengths = np.fromiter((len(ids) for ids, _ in rows), dtype=np.int64, count=len(rows))
        row_of = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
        ids = np.concatenate([ids for ids, _ in rows]) if rows else np.zeros(0, dtype=np.int64)
        self.keys = self._key(row_of, ids)
        self.values = (np.concatenate([values for _, values in rows]).astype(np.float32, copy=False)
                       if rows else np.zeros(0, dtype=np.float32))

    @staticmethod
    def _key(rows, ids):
        return np.asarray(rows, dtype=np.int64) << 32 | np.asarray(ids, dtype=np.int64)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        """x[row, ids] for one row, or x[rows, ids] with one row per id."""
        rows, ids = key
        query = self._key(np.broadcast_to(np.asarray(rows, dtype=np.int64), np.shape(ids)), ids)
        if not len(self.keys):
            return torch.full(query.shape, -torch.inf)
        at = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        return torch.from_numpy(np.where(self.keys[at] == query, self.values[at], np.float32(-np.inf)))


@dataclass
class _Row:
    request: LiveRequest
    position: int
    node: int
    prompt: list[int]
    prefix: tuple[int, ...] = field(default=())


class LiveStepper:
    """beam.Stepper over the vLLM engine thread (`engine`: new_id, trie_params, submit, release)."""

    def __init__(self, engine, deadline: Deadline, arrays: TrieArrays, trie_path: str, num_beams: int):
        self.engine, self.deadline, self.arrays, self.trie_path = engine, deadline, arrays, trie_path
        self.logprobs = 2 * int(num_beams)
        self.rows: list[_Row] = []
        self.created: list[LiveRequest] = []
        self.steps = 0

    def _new_request(self, prompt: list[int], prefix: tuple[int, ...], node: int) -> LiveRequest:
        if node == NO_NODE:
            raise PrunerecError(f"the search left the title trie at prefix {list(prefix)}")
        max_tokens = self.arrays.max_len - len(prefix)
        request_id = self.engine.new_id()
        params = self.engine.trie_params(node, max_tokens, self.logprobs, request_id)
        request = LiveRequest(request_id, prompt + list(prefix), params)
        self.created.append(request)
        return request

    def start(self, prompts: Sequence[Sequence[int]]) -> SparseLogprobs:
        root = TrieArrays.ROOT
        self.rows = [_Row(self._new_request(list(p), (), root), 0, root, list(p)) for p in prompts]
        return self._collect([row.request for row in self.rows], [])

    def advance(self, parents: Sequence[int], tokens: Sequence[int]) -> SparseLogprobs:
        rows, adds, kept = [], [], set()
        for parent, token in zip(parents, tokens):
            old, token = self.rows[parent], int(token)
            node, prefix = self.arrays.step(old.node, token), old.prefix + (token,)
            request = old.request
            if id(request) not in kept and request.outputs[old.position][0] == token:
                kept.add(id(request))
                rows.append(_Row(request, old.position + 1, node, old.prompt, prefix))
            else:
                request = self._new_request(old.prompt, prefix, node)
                adds.append(request)
                rows.append(_Row(request, 0, node, old.prompt, prefix))
        dropped = {id(r.request): r.request for r in self.rows if id(r.request) not in kept}
        self.rows = rows
        return self._collect(adds, list(dropped.values()))

    def _collect(self, adds: list[LiveRequest], dropped: list[LiveRequest]) -> SparseLogprobs:
        self.engine.release(dropped)
        self.steps += 1
        self.engine.submit(StepJob(self.deadline, adds, [(row.request, row.position) for row in self.rows]))
        values = []
        for row in self.rows:
            if row.position >= len(row.request.outputs):
                raise PrunerecError(f"vLLM request {row.request.id} ended after {len(row.request.outputs)} "
                                    f"tokens; the search needed {row.position + 1}")
            values.append(row.request.outputs[row.position][1])
        return SparseLogprobs(values)

    def requests(self) -> list[LiveRequest]:
        return list({id(r): r for r in self.created}.values())

    @property
    def stats(self) -> SearchStats:
        return SearchStats(requests=len(self.created), steps=self.steps,
                           prompt_tokens=sum(len(r.prompt) for r in self.created),
                           cached_tokens=sum(r.cached_tokens for r in self.created),
                           decoded_tokens=sum(len(r.outputs) for r in self.created))
