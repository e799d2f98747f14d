"""The title trie inside vLLM: a logits processor that turns each constrained request's row into
the exact full-vocabulary log-probabilities of the tokens its trie node allows (-inf elsewhere).

With greedy sampling a request's sampled token is the best allowed child. The search reads the
children's log-probabilities back in one of two ways:
- a request that names a sink id (`trie_args(..., sink=id)`; only when vLLM's engine core runs in
  this process) finds them in `SINK`, as arrays, under its id and output position. vLLM then
  computes no logprobs at all: building its per-token Logprob objects was the largest single
  cost of an engine step (about a third) in a profile of 16 concurrent searches;
- otherwise, with `LLM(logprobs_mode="processed_logits")` and `logprobs = 2 x beams`, the returned
  top-k "logprobs" are exactly log_softmax(model logits) at the allowed children.
A request names its trie and the node its prompt ends at in `SamplingParams.extra_args` (see
`trie_args`); requests without them are left untouched.

One pure core (`TrieCursor`, `mask_rows`) and two thin adapters:
- `TrieLogitsProcessor`: vLLM's V1 interface (the CPU build's model runner). Tested.
- `TrieLogitsProcessorV2`: Model Runner V2 (vLLM's default on CUDA GPUs), whose processors get
  `add_request(slot, params)` and `apply(logits, ctx)`. UNTESTED: written against vLLM 0.32's
  interface, never run (no GPU here). Validate rankings against `prunerec evaluate` before use.

Both are importable as "prunerec.serve.vllm_trie:TrieLogitsProcessor" (resp. ...V2) in vLLM's
engine-core process, which loads the trie arrays from the file a request names (cached).
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from prunerec.search.title_index import TrieArrays

TRIE_KEY = "prunerec_trie"        # extra_args: path of a TrieArrays .npz file
NODE_KEY = "prunerec_trie_node"   # extra_args: node the request's prompt ends at
SINK_KEY = "prunerec_sink"        # extra_args: id under which SINK receives the children's log-probs

_cache: dict[str, TrieArrays] = {}
_cache_lock = threading.Lock()


def trie_args(path: str, node: int, sink: str | None = None) -> dict:
    """SamplingParams.extra_args of a request constrained to the trie at `path` from `node`;
    with `sink`, the processor leaves each step's children log-probabilities in SINK under it."""
    args = {TRIE_KEY: str(path), NODE_KEY: int(node)}
    if sink is not None:
        args[SINK_KEY] = str(sink)
    return args


class LogprobSink:
    """Children log-probabilities by request id and output position: (sorted token ids, float32
    log-probabilities). Written by the logits processor, taken by the search, in one process."""

    def __init__(self):
        self._by_request: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self._lock = threading.Lock()

    def put(self, request_id: str, position: int, ids: np.ndarray, values: np.ndarray) -> None:
        with self._lock:
            self._by_request.setdefault(request_id, {})[position] = (ids, values)

    def take(self, request_id: str, position: int) -> tuple[np.ndarray, np.ndarray] | None:
        with self._lock:
            return self._by_request.get(request_id, {}).pop(position, None)

    def drop(self, request_id: str) -> None:
        with self._lock:
            self._by_request.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._by_request)

    def positions(self) -> int:
        """Output positions held over every request (what a leak would grow)."""
        with self._lock:
            return sum(len(held) for held in self._by_request.values())


SINK = LogprobSink()


def load_arrays(path: str) -> TrieArrays:
    with _cache_lock:
        arrays = _cache.get(path)
        if arrays is None:
            arrays = _cache[path] = TrieArrays.load(path)
        return arrays


def parse_trie_args(extra_args: dict | None) -> tuple[str, int] | None:
    """(path, node) of a constrained request, None for others; ValueError when malformed."""
    if not extra_args or TRIE_KEY not in extra_args:
        return None
    path, node = extra_args[TRIE_KEY], extra_args.get(NODE_KEY, TrieArrays.ROOT)
    if not isinstance(path, str) or not isinstance(node, int) or isinstance(node, bool):
        raise ValueError(f"extra_args {TRIE_KEY} must be a file path and {NODE_KEY} an integer node id")
    if not isinstance(extra_args.get(SINK_KEY, ""), str):
        raise ValueError(f"extra_args {SINK_KEY} must be a request id")
    return path, node


@dataclass
class TrieCursor:
    """Where one request stands in the trie: its start node walked over its output tokens.
    `output` may be a live list that the engine appends to; new tokens are walked lazily."""

    arrays: TrieArrays
    start: int
    output: Sequence[int] = field(default_factory=list)
    sink: str | None = None
    node: int = -2
    consumed: int = 0

    def current(self) -> int:
        if self.node == -2:
            self.node, self.consumed = self.start, 0
        while self.consumed < len(self.output):
            self.node = self.arrays.step(self.node, int(self.output[self.consumed]))
            self.consumed += 1
        return self.node

    def allowed(self) -> np.ndarray:
        return self.arrays.children(self.current())


def new_cursor(extra_args: dict | None, output: Sequence[int]) -> TrieCursor | None:
    parsed = parse_trie_args(extra_args)
    if parsed is None:
        return None
    path, node = parsed
    arrays = load_arrays(path)
    if not 0 <= node < arrays.num_nodes:
        raise ValueError(f"trie node {node} out of range for {path} ({arrays.num_nodes} nodes)")
    return TrieCursor(arrays, node, output, extra_args.get(SINK_KEY))


def mask_rows(logits: torch.Tensor, rows: Sequence[int], allowed: Sequence[np.ndarray]) -> np.ndarray:
    """In place: each row in `rows` becomes log_softmax(row) at its allowed ids, -inf elsewhere.
    Rows whose allowed set is empty (a finished title) are left as they are. Returns the allowed
    ids' log-probabilities (float32), concatenated in the order of `rows`."""
    keep = [(row, ids) for row, ids in zip(rows, allowed) if len(ids)]
    if not keep:
        return np.zeros(0, dtype=np.float32)
    device = logits.device
    index = torch.tensor([row for row, _ in keep], dtype=torch.long, device=device)
    logp = torch.log_softmax(logits.index_select(0, index).float(), dim=-1)
    counts = torch.tensor([len(ids) for _, ids in keep], dtype=torch.long, device=device)
    local = torch.repeat_interleave(torch.arange(len(keep), device=device), counts)
    cols = torch.from_numpy(np.concatenate([ids for _, ids in keep])).to(device)
    masked = torch.full_like(logp, float("-inf"))
    values = logp[local, cols]
    masked[local, cols] = values
    logits[index] = masked.to(logits.dtype)
    return values.cpu().numpy()


def fill_sink(cursors: Sequence[TrieCursor], allowed: Sequence[np.ndarray], values: np.ndarray) -> None:
    """Hand each sink cursor's share of mask_rows' `values` to SINK at its output position."""
    offset = 0
    for cursor, ids in zip(cursors, allowed):
        if cursor.sink is not None and len(ids):
            SINK.put(cursor.sink, cursor.consumed, ids, values[offset:offset + len(ids)])
        offset += len(ids)


def _v1_base():
    from vllm.v1.sample.logits_processor import LogitsProcessor

    return LogitsProcessor


class TrieLogitsProcessor(_v1_base()):
    """vLLM V1 adapter (CPU model runner; GPU with Model Runner V1)."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.cursors: dict[int, TrieCursor] = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        parse_trie_args(sampling_params.extra_args)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes the argmax; True would skip it on greedy batches

    def update_state(self, batch_update) -> None:
        from vllm.v1.sample.logits_processor.builtin import process_dict_updates

        # a re-added (preempted, resumed) request gets a fresh cursor that re-walks its whole output
        process_dict_updates(self.cursors, batch_update,
                             lambda params, _prompt, output: new_cursor(params.extra_args, output))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.cursors:
            return logits
        rows = [row for row in self.cursors if row < logits.shape[0]]
        cursors = [self.cursors[row] for row in rows]
        allowed = [cursor.allowed() for cursor in cursors]
        fill_sink(cursors, allowed, mask_rows(logits, rows, allowed))
        return logits


class _TrieV2Methods:
    """Model Runner V2 adapter. UNTESTED (written for vLLM 0.32's V2 interface, never run: no GPU
    here). Per slot: the start node and the prompt length; the committed output tokens are read
    back from the runner's token table each step (one device->host copy of a few ids per row).
    Exposed as `TrieLogitsProcessorV2` (built on first access, so that this module imports on
    builds without Model Runner V2)."""

    def __init__(self, vllm_config, req_states):
        self.req_states = req_states
        self.cursors: dict[int, TrieCursor] = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        parse_trie_args(sampling_params.extra_args)

    def add_request(self, req_idx: int, sampling_params) -> bool:
        self.cursors.pop(req_idx, None)
        cursor = new_cursor(sampling_params.extra_args, [])
        if cursor is None:
            return False
        self.cursors[req_idx] = cursor
        return True

    def apply_staged_writes(self) -> None:
        pass

    def _catch_up(self, slot: int, visible: int) -> np.ndarray:
        cursor = self.cursors[slot]
        prompt_len = int(self.req_states.prompt_len.np[slot])
        produced = visible - prompt_len
        if produced < cursor.consumed:  # the slot was refilled: walk again from the start
            cursor.node, cursor.consumed = cursor.start, 0
        if produced > cursor.consumed:
            table = self.req_states.all_token_ids.gpu
            new = table[slot, prompt_len + cursor.consumed:prompt_len + produced].tolist()
            cursor.output = list(cursor.output[:cursor.consumed]) + new
        return cursor.allowed()

    def apply(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        if not self.cursors:
            return logits
        slots = ctx.expanded_idx_mapping.tolist()
        positions = ctx.pos.tolist()
        rows, allowed = [], []
        for row, (slot, pos) in enumerate(zip(slots, positions)):
            if slot in self.cursors:
                rows.append(row)
                allowed.append(self._catch_up(slot, pos + 1))
        mask_rows(logits, rows, allowed)
        return logits


_v2_class = None


def __getattr__(name: str):
    global _v2_class
    if name != "TrieLogitsProcessorV2":
        raise AttributeError(name)
    if _v2_class is None:
        from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2

        _v2_class = type("TrieLogitsProcessorV2", (_TrieV2Methods, V2), {"__module__": __name__})
    return _v2_class
