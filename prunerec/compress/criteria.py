"""Pruning criteria, one registry entry each: how a criterion scores attention heads, hidden
dimensions, MLP channels (width) and decoder layers (depth).

A width criterion names three scorers; a layer criterion names one that picks the layers to
drop. Adding a criterion is adding one entry to WIDTH or LAYER (the CLI's choices, the stages
and the benchmarks read these registries).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from prunerec.compress import importance as imp

# Random criteria draw each part from its own seeded stream (seed + offset), so that changing
# one target never reshuffles another part's choice.
SEED_OFFSET = {"heads": 0, "hidden": 1, "mlp": 2, "layers": 3}


@dataclass(frozen=True)
class WidthCriterion:
    name: str
    # (model, calibration, targets, options) -> ([layers, heads] scores, extra record)
    heads: Callable
    # (model, calibration, options) -> [hidden] scores
    hidden: Callable
    # (model, calibration, targets, options) -> list of [mlp] scores, one per layer
    mlp: Callable
    data_free: bool        # needs no calibration data (its choice cannot depend on the sample)
    default_layers: str    # the layer criterion that goes with it when none is chosen


@dataclass(frozen=True)
class LayerCriterion:
    name: str
    # (model, batches, n_remove, record or None) -> sorted indices of the layers to drop
    drop: Callable
    data_free: bool


def _bottom(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k lowest scores (ties: lower index first), sorted."""
    order = torch.argsort(scores.float().cpu(), descending=False, stable=True)
    return sorted(order[:k].tolist())


def _prunerec_heads(model, calib, targets, opts):
    n_q = model.config.num_attention_heads
    scores, masked = imp.head_importance_kl(model, calib.prompts, alpha=opts.alpha,
                                            n_remove_per_layer=n_q - targets.heads, mask_mode=opts.mask_mode)
    return scores, {"masked_while_scoring": masked}


def _greedy_ppl(model, batches, n_remove, record, opts):
    order = imp.greedy_layer_removal(model, batches, n_remove)
    if record is not None:
        record["removal_order"] = order
    return sorted(order)


def _shortgpt(model, batches, n_remove, record, opts):
    scores = imp.shortgpt_layer_scores(model, batches)
    if record is not None:
        record["layer_scores"] = [round(float(x), 6) for x in scores]
    return _bottom(scores, n_remove)


def _random_layers(model, batches, n_remove, record, opts):
    return _bottom(imp.random_layer_scores(model, seed=opts.seed + SEED_OFFSET["layers"]), n_remove)


WIDTH = {c.name: c for c in (
    WidthCriterion(
        "prunerec", heads=_prunerec_heads,
        hidden=lambda model, calib, opts: imp.hidden_importance(model, calib.prompts),
        mlp=lambda model, calib, targets, opts: imp.mlp_channel_frequency(model, calib.full, k=targets.mlp),
        data_free=False, default_layers="greedy-ppl"),
    WidthCriterion(
        "random",
        heads=lambda model, calib, targets, opts: (
            imp.random_head_scores(model, seed=opts.seed + SEED_OFFSET["heads"]), {}),
        hidden=lambda model, calib, opts: imp.random_hidden_scores(model, seed=opts.seed + SEED_OFFSET["hidden"]),
        mlp=lambda model, calib, targets, opts: imp.random_mlp_scores(model, seed=opts.seed + SEED_OFFSET["mlp"]),
        data_free=True, default_layers="random"),
    WidthCriterion(
        "magnitude",
        heads=lambda model, calib, targets, opts: (imp.magnitude_head_scores(model), {}),
        hidden=lambda model, calib, opts: imp.magnitude_hidden_scores(model),
        mlp=lambda model, calib, targets, opts: imp.magnitude_mlp_scores(model),
        data_free=True, default_layers="shortgpt"),
    WidthCriterion(
        "wanda-sp",
        heads=lambda model, calib, targets, opts: (imp.wanda_head_scores(model, calib.full), {}),
        hidden=lambda model, calib, opts: imp.wanda_hidden_scores(model, calib.full),
        mlp=lambda model, calib, targets, opts: imp.wanda_mlp_scores(model, calib.full),
        data_free=False, default_layers="shortgpt"),
)}

LAYER = {c.name: c for c in (
    LayerCriterion("greedy-ppl", drop=_greedy_ppl, data_free=False),
    LayerCriterion("shortgpt", drop=_shortgpt, data_free=False),
    LayerCriterion("random", drop=_random_layers, data_free=True),
)}
