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

import torch

from prunerec.rec.batching import pad_rows, positions_of
from prunerec.rec.trie import TitleTrie


class Stepper(Protocol):
    def start(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Log-probabilities [len(prompts), vocab] of the token after each prompt."""

    def advance(self, parents: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        """Extend row parents[i] of the previous step by tokens[i]; log-probabilities of the next token."""


@dataclass
class _Beam:
    tokens: tuple[int, ...]
    score: float
    node: dict


@dataclass
class _UserSearch:
    running: list[_Beam]
    finished: list[tuple[float, tuple[int, ...]]] = field(default_factory=list)
    done: bool = False


def _candidates(user: _UserSearch, rows: list[int], logprobs: torch.Tensor, width: int):
    """The user's best `width` (score, beam index, token) over every running beam's allowed
    children, best first; ties keep beam order, then the trie's child order (a stable sort).
    One gather over all beams: `logprobs[rows, tokens]` with index tensors."""
    beam_ids, beam_rows, counts, tokens = [], [], [], []
    for beam_index, (beam, row) in enumerate(zip(user.running, rows)):
        if beam.node:
            beam_ids.append(beam_index)
            beam_rows.append(row)
            counts.append(len(beam.node))
            tokens.extend(beam.node)
    if not tokens:
        return []
    counts_t, token_t = torch.tensor(counts), torch.tensor(tokens)
    row_t = torch.repeat_interleave(torch.tensor(beam_rows), counts_t)
    base = torch.repeat_interleave(torch.tensor([user.running[i].score for i in beam_ids], dtype=torch.float64),
                                   counts_t)
    scores = logprobs[row_t, token_t].double() + base
    top = torch.sort(-scores, stable=True).indices[:width]
    owners = torch.repeat_interleave(torch.tensor(beam_ids), counts_t)
    return list(zip(scores[top].tolist(), owners[top].tolist(), token_t[top].tolist()))


def _advance_user(user: _UserSearch, rows: list[int], logprobs: torch.Tensor, num_beams: int, eos: int):
    """One step for one user; returns [(parent_row, token)] of its new running beams."""
    running, parents = [], []
    for rank, (score, beam_index, token) in enumerate(_candidates(user, rows, logprobs, 2 * num_beams)):
        beam = user.running[beam_index]
        if token == eos:
            if rank < num_beams:
                user.finished.append((score, beam.tokens + (token,)))
                user.finished.sort(key=lambda f: -f[0])
                del user.finished[num_beams:]
            continue
        running.append(_Beam(beam.tokens + (token,), score, beam.node[token]))
        parents.append((rows[beam_index], token))
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
    users = [_UserSearch([_Beam((), 0.0, trie.root)]) for _ in prompts]
    rows_of = [[i] for i in range(len(prompts))]
    logprobs = stepper.start(prompts)
    for _ in range(trie.max_len):
        parents, tokens, next_rows = [], [], []
        for user, rows in zip(users, rows_of):
            if user.done:
                next_rows.append([])
                continue
            chosen = _advance_user(user, rows, logprobs, num_beams, trie.eos_id)
            next_rows.append(list(range(len(parents), len(parents) + len(chosen))))
            parents.extend(p for p, _ in chosen)
            tokens.extend(t for _, t in chosen)
        rows_of = next_rows
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
