"""The title trie inside vLLM: a logits processor that turns each constrained request's row into
the exact full-vocabulary log-probabilities of the tokens its trie node allows (-inf elsewhere).

With `LLM(logprobs_mode="processed_logits")` and greedy sampling, a request's returned top-k
"logprobs" are then exactly log_softmax(model logits) at the allowed children, and its sampled
token is the best allowed child. A request names its trie and the node its prompt ends at in
`SamplingParams.extra_args` (see `trie_args`); requests without them are left untouched.

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

from prunerec.rec.title_index import TrieArrays

TRIE_KEY = "prunerec_trie"        # extra_args: path of a TrieArrays .npz file
NODE_KEY = "prunerec_trie_node"   # extra_args: node the request's prompt ends at

_cache: dict[str, TrieArrays] = {}
_cache_lock = threading.Lock()


def trie_args(path: str, node: int) -> dict:
    """SamplingParams.extra_args of a request constrained to the trie at `path` from `node`."""
    return {TRIE_KEY: str(path), NODE_KEY: int(node)}


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
    return path, node


@dataclass
class TrieCursor:
    """Where one request stands in the trie: its start node walked over its output tokens.
    `output` may be a live list that the engine appends to; new tokens are walked lazily."""

    arrays: TrieArrays
    start: int
    output: Sequence[int] = field(default_factory=list)
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
    return TrieCursor(arrays, node, output)


def mask_rows(logits: torch.Tensor, rows: Sequence[int], allowed: Sequence[np.ndarray]) -> torch.Tensor:
    """In place: each row in `rows` becomes log_softmax(row) at its allowed ids, -inf elsewhere.
    Rows whose allowed set is empty (a finished title) are left as they are."""
    keep = [(row, ids) for row, ids in zip(rows, allowed) if len(ids)]
    if not keep:
        return logits
    device = logits.device
    index = torch.tensor([row for row, _ in keep], dtype=torch.long, device=device)
    logp = torch.log_softmax(logits.index_select(0, index).float(), dim=-1)
    counts = torch.tensor([len(ids) for _, ids in keep], dtype=torch.long, device=device)
    local = torch.repeat_interleave(torch.arange(len(keep), device=device), counts)
    cols = torch.from_numpy(np.concatenate([ids for _, ids in keep])).to(device)
    masked = torch.full_like(logp, float("-inf"))
    masked[local, cols] = logp[local, cols]
    logits[index] = masked.to(logits.dtype)
    return logits


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
        return mask_rows(logits, rows, [self.cursors[row].allowed() for row in rows])


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
        return mask_rows(logits, rows, allowed)


_v2_class = None


def __getattr__(name: str):
    global _v2_class
    if name != "TrieLogitsProcessorV2":
        raise AttributeError(name)
    if _v2_class is None:
        from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2

        _v2_class = type("TrieLogitsProcessorV2", (_TrieV2Methods, V2), {"__module__": __name__})
    return _v2_class
