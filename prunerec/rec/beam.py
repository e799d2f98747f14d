"""Trie-constrained beam search, engine-agnostic.

The search itself is pure bookkeeping over log-probabilities; an engine supplies them
through a `Stepper` (prefill the prompts, then extend chosen beams by one token). It follows
Hugging Face's beam search with length_penalty=0 (scores are summed log-probabilities):
per user, the best 2*num_beams candidates are walked in order, a candidate that closes a
title (EOS) joins the finished list when ranked among the first num_beams, the others
continue as running beams; a user is done when num_beams titles are finished and no running
beam can still beat the worst of them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from prunerec.rec.batching import pad_rows, positions_of
from prunerec.rec.trie import InsertionOrderArrays, TitleTrie


class Stepper(Protocol):
    def start(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Log-probabilities [len(prompts), vocab] of the token after each prompt."""

    def advance(self, parents: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        """Extend row parents[i] of the previous step by tokens[i]; log-probabilities of the next token."""


@dataclass
class _Beam:
    tokens: tuple[int, ...]
    score: float
    node: int  # node id in TitleTrie.in_order


@dataclass
class _UserSearch:
    running: list[_Beam]
    rows: list[int] = field(default_factory=list)  # the row of each running beam in the last step's output
    finished: list[tuple[float, tuple[int, ...]]] = field(default_factory=list)
    done: bool = False


@dataclass
class _Candidate:
    score: float
    beam: int   # index into the user's running beams
    token: int
    node: int   # node after the token


def _candidates(users: Sequence[_UserSearch], logprobs, trie: InsertionOrderArrays,
                width: int) -> list[list[_Candidate]]:
    """Per user, its best `width` candidates over every running beam's allowed children, best
    first; ties keep beam order, then the trie's child order. One gather and one sort for all
    users of the step."""
    owner_user, owner_beam, nodes, rows, base = [], [], [], [], []
    for user_index, user in enumerate(users):
        for beam_index, (beam, row) in enumerate(zip(user.running, user.rows)):
            owner_user.append(user_index)
            owner_beam.append(beam_index)
            nodes.append(beam.node)
            rows.append(row)
            base.append(beam.score)
    picked: list[list[_Candidate]] = [[] for _ in users]
    if not nodes:
        return picked
    nodes = np.asarray(nodes, dtype=np.int64)
    starts = trie.child_start[nodes]
    counts = trie.child_start[nodes + 1] - starts
    owner = np.repeat(np.arange(len(nodes)), counts)
    edges = np.repeat(starts, counts) + np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    tokens = trie.child_token[edges]
    row_ids = np.asarray(rows, dtype=np.int64)[owner]
    scores = logprobs[torch.from_numpy(row_ids), torch.from_numpy(tokens)].double().numpy() + np.asarray(base)[owner]
    user_of = np.asarray(owner_user, dtype=np.int64)[owner]
    order = np.lexsort((-scores, user_of))  # stable: equal scores keep beam, then child order
    sorted_users = user_of[order]
    first_of_user = np.searchsorted(sorted_users, sorted_users)
    order = order[np.arange(len(order)) - first_of_user < width]
    columns = (scores[order].tolist(), np.asarray(owner_beam)[owner[order]].tolist(), tokens[order].tolist(),
               trie.child_node[edges[order]].tolist(), user_of[order].tolist())
    for score, beam, token, node, user_index in zip(*columns):
        picked[user_index].append(_Candidate(score, beam, token, node))
    return picked


def _advance_user(user: _UserSearch, candidates: list[_Candidate], num_beams: int, eos: int):
    """One step for one user; returns [(parent_row, token)] of its new running beams."""
    running, parents = [], []
    for rank, candidate in enumerate(candidates):
        beam = user.running[candidate.beam]
        if candidate.token == eos:
            if rank < num_beams:
                user.finished.append((candidate.score, beam.tokens + (eos,)))
                user.finished.sort(key=lambda f: -f[0])
                del user.finished[num_beams:]
            continue
        running.append(_Beam(beam.tokens + (candidate.token,), candidate.score, candidate.node))
        parents.append((user.rows[candidate.beam], candidate.token))
        if len(running) == num_beams:
            break
    user.running = running
    full = len(user.finished) >= num_beams
    user.done = not running or (full and max(b.score for b in running) <= user.finished[-1][0])
    if user.done:
        user.running = []
        parents = []
    return parents


def constrained_beam_search(stepper: Stepper, prompts: Sequence[Sequence[int]], trie: TitleTrie,
                            num_beams: int) -> list[list[tuple[int, float]]]:
    """Ranked (title index, summed log-probability) lists, one per prompt, best first."""
    arrays = trie.in_order
    users = [_UserSearch([_Beam((), 0.0, 0)], [i]) for i in range(len(prompts))]
    logprobs = stepper.start(prompts)
    for _ in range(trie.max_len):
        active = [user for user in users if not user.done]
        parents, tokens = [], []
        for user, candidates in zip(active, _candidates(active, logprobs, arrays, 2 * num_beams)):
            chosen = _advance_user(user, candidates, num_beams, trie.eos_id)
            user.rows = list(range(len(parents), len(parents) + len(chosen)))
            parents.extend(p for p, _ in chosen)
            tokens.extend(t for _, t in chosen)
        if not parents:
            break
        logprobs = stepper.advance(parents, tokens)
    return [[(trie.index_of(seq), score) for score, seq in user.finished] for user in users]


class TorchStepper:
    """Runs the steps on a transformers causal LM with a KV cache (left-padded prompts)."""

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self.cache = self.mask = self.positions = None

    @torch.no_grad()
    def start(self, prompts):
        ids, mask = pad_rows(prompts, self.pad_id, left=True)
        positions = positions_of(mask)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        self.cache, self.mask, self.positions = out.past_key_values, mask, positions[:, -1]
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    @torch.no_grad()
    def advance(self, parents, tokens):
        index = torch.tensor(parents, dtype=torch.long)
        self.cache.reorder_cache(index)
        self.mask = torch.cat([self.mask[index], torch.ones((len(parents), 1), dtype=torch.long)], dim=1)
        self.positions = self.positions[index] + 1
        out = self.model(input_ids=torch.tensor(tokens).unsqueeze(1), attention_mask=self.mask,
                         position_ids=self.positions.unsqueeze(1), past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)
