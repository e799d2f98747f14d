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
    masked_heads,
    skipped_layers,
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



@torch.no_grad()
def calibration_perplexity(model, batches) -> float:
    """exp(mean next-token NLL) over the labelled tokens (``labels`` != -100; every real token
    when ``labels`` is absent)."""
    nll, n = 0.0, 0
    with eval_mode(model):
        for batch in batch_list(batches):
            b = to_model_device(model, batch)
            labels = b.get("labels")
            if labels is None:
                labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
            targets = labels[:, 1:]
            labelled = targets != -100  # the LM head runs only where a label is predicted (most cost otherwise)
            logits = model.lm_head(final_hidden(model, b)[:, :-1][labelled]).float()
            nll += F.cross_entropy(logits, targets[labelled], reduction="sum").item()
            n += int(labelled.sum())
    return math.exp(nll / max(n, 1))


def greedy_layer_removal(model, batches, n_remove: int) -> list[int]:
    """PruneRec Stage III: repeatedly drop the layer whose removal (with those already
    dropped) gives the lowest calibration perplexity. Returns layers in removal order."""
    n_layers = len(decoder_layers(model))
    if not 0 <= n_remove < n_layers:
        raise ValueError(f"n_remove must lie in [0, {n_layers}), got {n_remove}")
    batches = batch_list(batches)
    removed: list[int] = []
    for _ in tqdm(range(n_remove), desc="greedy layers", leave=False):
        best, best_ppl = None, math.inf
        for c in range(n_layers):
            if c in removed:
                continue
            with skipped_layers(model, removed + [c]):
                ppl = calibration_perplexity(model, batches)
            if ppl < best_ppl:
                best, best_ppl = c, ppl
        removed.append(best)
    return removed
