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
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import torch

from prunerec.model.batching import pad_rows, positions_of
from prunerec.search.trie import InsertionOrderArrays, TitleTrie


class Stepper(Protocol):
    def start(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Log-probabilities [len(prompts), vocab] of the token after each prompt."""

    def advance(self, parents: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        """Extend row parents[i] of the previous step by tokens[i]; log-probabilities of the next token."""


@dataclass
class _Rows:
    """Running beams (or their candidates), contiguous per user in user order, in beam order
    within a user: one engine row each."""

    user: np.ndarray   # int64
    score: np.ndarray  # float64: summed log-probability
    node: np.ndarray   # int64: node id in TitleTrie.in_order


@dataclass
class _Candidates(_Rows):
    """Per user, its best candidates, best first."""

    parent: np.ndarray  # int64: the row (in the last step's output) they extend
    token: np.ndarray   # int64
    rank: np.ndarray    # int64: position among the user's candidates


class _Finished:
    """Per user, the best num_beams complete titles so far: (score, node) best first, ties in
    the order they were found."""

    def __init__(self, users: int, num_beams: int):
        self.score = np.full((users, num_beams), -np.inf)
        self.node = np.zeros((users, num_beams), dtype=np.int64)
        self.count = np.zeros(users, dtype=np.int64)

    def add(self, found: _Rows) -> None:
        """Merge `found` (best first within a user) into each user's list."""
        if not len(found.user):
            return
        num_beams = self.score.shape[1]
        kept_user, kept_slot = np.nonzero(np.arange(num_beams) < self.count[:, None])
        user = np.concatenate([kept_user, found.user])
        score = np.concatenate([self.score[kept_user, kept_slot], found.score])
        node = np.concatenate([self.node[kept_user, kept_slot], found.node])
        arrival = np.arange(len(user))  # the ones already kept first: a stable insert
        order = np.lexsort((arrival, -score, user))
        slot = _rank_within(user[order])
        order, slot = order[slot < num_beams], slot[slot < num_beams]
        self.score[user[order], slot] = score[order]
        self.node[user[order], slot] = node[order]
        self.count = np.minimum(self.count + np.bincount(found.user, minlength=len(self.count)), num_beams)

    def beat_by_none(self, best_running: np.ndarray) -> np.ndarray:
        """Per user: num_beams titles are finished and no running beam scores above the worst."""
        return (self.count >= self.score.shape[1]) & (best_running <= self.score[:, -1])


def _rank_within(sorted_users: np.ndarray) -> np.ndarray:
    """Position of each entry among the entries of its user (entries grouped by user)."""
    return np.arange(len(sorted_users)) - np.searchsorted(sorted_users, sorted_users)


def _candidates(rows: _Rows, logprobs, trie: InsertionOrderArrays, width: int) -> _Candidates:
    """Per user, its best `width` candidates over every running beam's allowed children, best
    first; ties keep beam order, then the trie's child order. One gather and one sort for all
    users of the step."""
    starts = trie.child_start[rows.node]
    counts = trie.child_start[rows.node + 1] - starts
    owner = np.repeat(np.arange(len(rows.node)), counts)
    edges = np.repeat(starts, counts) + np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    tokens = trie.child_token[edges]
    scores = logprobs[torch.from_numpy(owner), torch.from_numpy(tokens)].double().numpy() + rows.score[owner]
    user = rows.user[owner]
    order = np.lexsort((-scores, user))  # stable: equal scores keep beam, then child order
    rank = _rank_within(user[order])
    order, rank = order[rank < width], rank[rank < width]
    return _Candidates(user[order], scores[order], trie.child_node[edges[order]], owner[order], tokens[order], rank)


def _advance(candidates: _Candidates, finished: _Finished, num_beams: int, eos: int) -> _Candidates:
    """One step for every user, Hugging Face's way: each user's candidates are walked best first;
    EOS among the first num_beams closes a title, the others continue until num_beams run; a user
    is done when nothing runs or num_beams titles are finished and no running beam beats the worst.
    Returns the running beams of the users not done."""
    is_eos = candidates.token == eos
    continues = ~is_eos
    continuing_before = np.cumsum(continues) - continues
    first_of_user = np.arange(len(is_eos)) - candidates.rank
    reached = continuing_before - continuing_before[first_of_user] < num_beams  # before the walk stops
    finished.add(_select(candidates, is_eos & (candidates.rank < num_beams)))
    running = _select(candidates, continues & reached)
    users, first = np.unique(running.user, return_index=True)
    best_running = np.full(len(finished.count), np.inf)
    best_running[users] = running.score[first]  # best first: a user's first running beam is its best
    return _select(running, ~finished.beat_by_none(best_running)[running.user])


def _select(rows: _Candidates, mask: np.ndarray) -> _Candidates:
    kept = _Candidates(*(getattr(rows, f.name)[mask] for f in fields(_Candidates)))
    if len(kept.rank):
        kept.rank = _rank_within(kept.user)
    return kept


def constrained_beam_search(stepper: Stepper, prompts: Sequence[Sequence[int]], trie: TitleTrie,
                            num_beams: int) -> list[list[tuple[int, float]]]:
    """Ranked (title index, summed log-probability) lists, one per prompt, best first."""
    arrays = trie.in_order
    users = len(prompts)
    rows = _Rows(np.arange(users), np.zeros(users), np.zeros(users, dtype=np.int64))
    finished = _Finished(users, num_beams)
    logprobs = stepper.start(prompts)
    for _ in range(trie.max_len):
        rows = _advance(_candidates(rows, logprobs, arrays, 2 * num_beams), finished, num_beams, trie.eos_id)
        if not len(rows.user):
            break
        logprobs = stepper.advance(rows.parent.tolist(), rows.token.tolist())
    titles, scores = arrays.title_at[finished.node].tolist(), finished.score.tolist()
    return [list(zip(titles[u][:n], scores[u][:n])) for u, n in enumerate(finished.count.tolist())]


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
