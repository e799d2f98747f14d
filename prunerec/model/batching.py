"""Batches of examples for training and scoring: right padding, response positions, length buckets."""
from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from prunerec.model.encode import Example


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded to the longest: [rows, width] ids and a 0/1 mask (long). Left padding
    puts every row's last token in the last column, as generation wants."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        if len(row):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span] = torch.tensor(list(row), dtype=torch.long)
            mask[i, span] = 1
    return ids, mask


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: 0 at each row's first real token (and at its padding)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids plus the flat (row, position) pairs that predict response tokens.

    `predict_rows/predict_cols` index the hidden states whose next token is a response token,
    `targets` holds those tokens: the usual one-position shift.
    """
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    rows, cols, targets = [], [], []
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        attention_mask[row, :length] = 1
        first = length - example.n_response
        for pos in range(max(first, 1), length):
            rows.append(row)
            cols.append(pos - 1)
            targets.append(example.input_ids[pos])
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "predict_rows": torch.tensor(rows, dtype=torch.long),
        "predict_cols": torch.tensor(cols, dtype=torch.long),
        "targets": torch.tensor(targets, dtype=torch.long),
    }


def length_batches(lengths: Sequence[int], batch_size: int, seed: int, pool: int = 64) -> list[list[int]]:
    """Shuffled batches of similar length (less padding), reproducible from the seed."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    chunk = batch_size * pool
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def response_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits only where a response token is predicted: the LM head never sees the prompt."""
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    picked = hidden[batch["predict_rows"], batch["predict_cols"]]
    return model.lm_head(picked)


def response_ce(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the batch's response tokens."""
    logits = response_logits(model, batch)
    return torch.nn.functional.cross_entropy(logits.float(), batch["targets"])
