"""Importance scores for PruneRec's three stages, and the one import point for every score
(pure computation).

Calibration data: an iterable of dict batches (or a single dict) with ``input_ids`` [B,T],
``attention_mask`` [B,T] (padding = 0, right padding expected but not required) and, for
perplexity, optional ``labels`` [B,T] with -100 at ignored positions (when absent, every real
token is a label). Higher score = more important everywhere. Shapes, so callers can swap a
PruneRec score for a baseline score: heads [L,H], hidden dims [D], MLP channels a list of L
tensors [I], layers [L]. Heads live in :mod:`.head_kl`, the baselines in :mod:`.baselines`,
the activation analysis in :mod:`.activations`, the hook plumbing in :mod:`.hooks`; all are
importable from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prunerec.compress import baselines
from prunerec.compress.activations import mlp_activation_share
from prunerec.compress.baselines import *  # noqa: F403 (every score is importable from here)
from prunerec.compress.head_kl import head_importance_kl, select_heads
from prunerec.compress.hooks import (
    batch_list,
    batch_progress,
    collect_activations,
    decoder_layers,
    eval_mode,
    final_hidden,
    last_real_positions,
    layer_inputs,
    length_buckets,
    masked_heads,
    run_layer,
    skipped_layers,
    tiled,
    to_model_device,
    up_projections,
)

__all__ = [
    "masked_heads",
    "skipped_layers",
    "head_importance_kl",
    "select_heads",
    "hidden_importance",
    "mlp_channel_frequency",
    "mlp_activation_share",
    "calibration_perplexity",
    "greedy_layer_removal",
    *baselines.__all__,
]

# ----------------------------------------------------------------------------- hidden (Stage I)


def hidden_importance(model, batches) -> torch.Tensor:
    """s_j = || (d logit_pred / d h) * h ||_2 over positions and samples, h the final-norm
    hidden state and pred the model's own top next token at the last real position. [D]."""
    sq = None
    with eval_mode(model):
        for batch in batch_progress(batch_list(batches), "hidden grad x act"):
            b = to_model_device(model, batch)
            with torch.no_grad():
                h = final_hidden(model, b)
            h = h.detach().float().requires_grad_(True)
            rows = torch.arange(h.shape[0], device=h.device)
            logits = F.linear(h[rows, last_real_positions(b["attention_mask"])], model.lm_head.weight.float())
            pred = logits.detach().argmax(-1)
            (grad,) = torch.autograd.grad(logits[rows, pred].sum(), h)
            s = (grad * h).detach().pow(2)[b["attention_mask"].bool()].sum(0)
            sq = s if sq is None else sq + s
    return sq.sqrt().cpu()


# ----------------------------------------------------------------------------- MLP (Stage II)


def mlp_channel_frequency(model, batches, k: int) -> list[torch.Tensor]:
    """Per layer, how often each intermediate channel is among a real token's top-k |up_proj
    output| values. list of L LongTensors [I]."""
    n_inter = model.config.intermediate_size
    counts = [torch.zeros(n_inter, dtype=torch.long) for _ in decoder_layers(model)]

    def acc(name, x):
        idx = x.abs().topk(min(k, n_inter), dim=-1).indices.flatten().cpu()
        counts[int(name)] += torch.bincount(idx, minlength=n_inter)

    collect_activations(model, batches, up_projections(model), acc, output=True, desc="MLP top-k frequency")
    return counts



def _labels(b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a label is predicted ([B,T-1], the next-token shift) and those labels [N]."""
    labels = b.get("labels")
    if labels is None:
        labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    targets = labels[:, 1:]
    labelled = targets != -100
    return labelled, targets[labelled]


def _nll_sum(model, final: torch.Tensor, labelled: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed next-token NLL from final-norm hidden states; the LM head runs only where a label
    is predicted (most of the cost otherwise)."""
    logits = model.lm_head(final[:, :-1][labelled]).float()
    return F.cross_entropy(logits, targets, reduction="sum").item()


@torch.no_grad()
def calibration_perplexity(model, batches) -> float:
    """exp(mean next-token NLL) over the labelled tokens (``labels`` != -100; every real token
    when ``labels`` is absent)."""
    nll, n = 0.0, 0
    with eval_mode(model):
        for batch in batch_list(batches):
            b = to_model_device(model, batch)
            labelled, targets = _labels(b)
            nll += _nll_sum(model, final_hidden(model, b), labelled, targets)
            n += int(labelled.sum())
    return math.exp(nll / max(n, 1))


@dataclass
class _PerplexityInput:
    first: torch.Tensor  # layer 0's input [B,T,D]
    kwargs: list[dict]  # every decoder layer's keyword arguments
    labelled: torch.Tensor
    targets: torch.Tensor


def _perplexity_input(model, b: dict) -> _PerplexityInput:
    first, kwargs, _ = layer_inputs(model, b)
    return _PerplexityInput(first, kwargs, *_labels(b))


def _layer_on_copies(model, l: int, h: torch.Tensor, kwargs: list[dict], n_rows: int) -> torch.Tensor:
    """Decoder layer l on stacked copies of an n_rows batch (each copy its own stream)."""
    copies = h.shape[0] // n_rows
    return run_layer(model, l, h, {k: tiled(v, n_rows, copies) for k, v in kwargs[l].items()})


def _group_nll(model, p: _PerplexityInput, kept: list[int], group: list[int]) -> dict[int, float]:
    """Summed NLL of the batch with each layer of ``group`` removed in turn, all in one stack.

    The current model's stream (``base``) goes up the kept layers; at layer c of the group a copy
    of it joins the stack without passing c, and from there runs every kept layer above c with
    the others: candidate c's forward with c (and the removed layers) skipped.
    """
    n_rows, base, stack = p.first.shape[0], p.first, p.first[:0]
    for l in kept:
        joining = base if l in group else None
        rows = torch.cat([stack, base]) if l < group[-1] else stack
        out = _layer_on_copies(model, l, rows, p.kwargs, n_rows) if rows.shape[0] else rows
        stack, base = (out[:stack.shape[0]], out[stack.shape[0]:]) if l < group[-1] else (out, None)
        if joining is not None:
            stack = torch.cat([stack, joining])
    final = model.model.norm(stack)
    return {c: _nll_sum(model, final[i * n_rows:(i + 1) * n_rows], p.labelled, p.targets)
            for i, c in enumerate(group)}


def _candidate_nll(model, p: _PerplexityInput, kept: list[int], tokens_per_pass: int = 65536) -> dict[int, float]:
    """Summed NLL of the batch with each kept layer removed in turn (and the removed ones).

    Candidates are stacked as copies of the batch (:func:`_group_nll`), as many as keep a
    layer's input near ``tokens_per_pass`` tokens: the work of one forward per candidate from
    its own layer up, in fewer and larger matrix products.
    """
    per_group = max(1, tokens_per_pass // max(1, p.first.shape[0] * p.first.shape[1]))
    nll: dict[int, float] = {}
    for start in range(0, len(kept), per_group):
        nll.update(_group_nll(model, p, kept, kept[start:start + per_group]))
    return nll


# Calibration rows per batch of the greedy layer search, regrouped by length.
GREEDY_ROWS_PER_BUCKET = 8


@torch.no_grad()
def greedy_layer_removal(model, batches, n_remove: int, rows_per_bucket: int = GREEDY_ROWS_PER_BUCKET) -> list[int]:
    """PruneRec Stage III: repeatedly drop the layer whose removal (with those already
    dropped) gives the lowest calibration perplexity (ties: the lower index). Right-padded
    batches are regrouped ``rows_per_bucket`` at a time by length (:func:`length_buckets`; the
    same per-row numbers, summed in another order). Returns layers in removal order."""
    n_layers = len(decoder_layers(model))
    if not 0 <= n_remove < n_layers:
        raise ValueError(f"n_remove must lie in [0, {n_layers}), got {n_remove}")
    removed: list[int] = []
    with eval_mode(model):
        buckets = length_buckets(batch_list(batches), rows_per_bucket)
        inputs = [_perplexity_input(model, to_model_device(model, b)) for b in buckets]
        n = max(sum(int(p.labelled.sum()) for p in inputs), 1)
        for _ in tqdm(range(n_remove), desc="greedy layers", leave=False):
            kept = [l for l in range(n_layers) if l not in removed]
            nll = dict.fromkeys(kept, 0.0)
            for p in inputs:  # batch by batch, as calibration_perplexity sums
                for c, value in _candidate_nll(model, p, kept).items():
                    nll[c] += value
            ppl = {c: math.exp(total / n) for c, total in nll.items()}
            removed.append(min(kept, key=lambda c: (ppl[c], c)))
    return removed
