"""The three PruneRec stages: score on calibration data, then cut weights out physically.

Each stage function takes a model, a :class:`Calibration` set, the :class:`Targets` and
:class:`ScoringOptions` (which criterion), prunes the model in place with
:mod:`prunerec.model.surgery` and returns a JSON-able record of what was kept (indices in the
numbering of the model the stage received) and how long scoring took.

Criteria live in :mod:`prunerec.compress.criteria`: ``prunerec`` = KL head importance with the
alpha recursion and sequential masking, gradient x activation for hidden dimensions, top-k
activation frequency for MLP channels and greedy calibration-perplexity layer removal;
baselines ``random``, ``magnitude`` and ``wanda-sp`` (structured Wanda) for heads, hidden and
MLP; ``greedy-ppl``, ``shortgpt`` and ``random`` for layers.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from prunerec.compress import importance as imp
from prunerec.compress.criteria import LAYER, WIDTH
from prunerec.compress.targets import Targets, base_shape
from prunerec.errors import PrunerecError
from prunerec.model import surgery
from prunerec.model.batching import collate, pad_rows
from prunerec.model.encode import Example

__all__ = [
    "METHODS",
    "LAYER_METHODS",
    "MASK_MODES",
    "STAGES",
    "Calibration",
    "ScoringOptions",
    "build_calibration",
    "default_layer_method",
    "stage1_attention_hidden",
    "stage2_mlp",
    "stage3_layers",
]

METHODS = tuple(WIDTH)
LAYER_METHODS = tuple(LAYER)
MASK_MODES = ("zero_o_proj", "scale_query")


def default_layer_method(method: str) -> str:
    """Layer criterion that goes with a width criterion when none is chosen: PruneRec's greedy
    perplexity search, random for random, ShortGPT block influence for the general pruners."""
    return WIDTH[method].default_layers


@dataclass(frozen=True)
class ScoringOptions:
    method: str = "prunerec"
    layer_method: str = "greedy-ppl"
    alpha: float = 0.7
    mask_mode: str = "zero_o_proj"
    seed: int = 0
    stability: bool = False  # also score each half of the calibration set and report the overlap

    def __post_init__(self):
        if self.method not in METHODS:
            raise PrunerecError(f"unknown --method '{self.method}' (choose from {', '.join(METHODS)})")
        if self.layer_method not in LAYER_METHODS:
            raise PrunerecError(f"unknown --layer-method '{self.layer_method}' "
                                f"(choose from {', '.join(LAYER_METHODS)})")
        if self.mask_mode not in MASK_MODES:
            raise PrunerecError(f"unknown mask mode '{self.mask_mode}' (choose from {', '.join(MASK_MODES)})")
        if not 0.0 <= self.alpha <= 1.0:
            raise PrunerecError(f"--alpha must lie in [0, 1], got {self.alpha}")


# ----------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """Calibration batches from training examples.

    ``prompts``: the prompts alone (input_ids, attention_mask; right padded), so that "the last
    real token" is where the model is about to write the title (head KL, hidden gradient).
    ``full``: prompt + response, with ``labels`` = the response tokens (-100 elsewhere), for
    perplexity, activation statistics and Wanda norms.
    """

    prompts: list[dict]
    full: list[dict]
    n_samples: int


def build_calibration(examples: Sequence[Example], pad_id: int, batch_size: int = 16) -> Calibration:
    examples = [e for e in examples if len(e.input_ids) > e.n_response]
    if not examples:
        raise PrunerecError("no calibration examples (every training example is empty or all response)")
    prompts, full = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        ids, mask = pad_rows([e.input_ids[:len(e.input_ids) - e.n_response] for e in chunk], pad_id, left=False)
        prompts.append({"input_ids": ids, "attention_mask": mask})
        b = collate(chunk, pad_id)
        labels = torch.full_like(b["input_ids"], -100)
        for row, e in enumerate(chunk):
            n = len(e.input_ids)
            labels[row, n - e.n_response:n] = b["input_ids"][row, n - e.n_response:n]
        full.append({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "labels": labels})
    return Calibration(prompts, full, len(examples))


# ----------------------------------------------------------------------------- helpers


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores (ties: lower index first), sorted."""
    order = torch.argsort(scores.float().cpu(), descending=True, stable=True)
    return sorted(order[:k].tolist())


def _halves(calib: Calibration) -> tuple[Calibration, Calibration] | None:
    """Two disjoint halves of the calibration set (alternate batches); None with one batch."""
    if len(calib.full) < 2:
        return None
    parts = []
    for r in (0, 1):
        full = calib.full[r::2]
        parts.append(Calibration(calib.prompts[r::2], full, sum(int(b["input_ids"].shape[0]) for b in full)))
    return parts[0], parts[1]


def _jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / max(len(a | b), 1)


def _stability(calib: Calibration, opts: ScoringOptions, select, data_free: bool = False) -> dict | None:
    """Overlap (Jaccard) of the sets ``select(half)`` chosen on the two calibration halves.

    ``select`` returns a list of sets to compare pairwise (e.g. one per layer); the mean is
    reported. Data-free criteria (random, magnitude) are stable by construction: skipped.
    """
    if not opts.stability or data_free:
        return None
    halves = _halves(calib)
    if halves is None:
        return None
    a, b = (select(h) for h in halves)
    values = [_jaccard(x, y) for x, y in zip(a, b)]
    return {"jaccard_between_halves": round(sum(values) / len(values), 4),
            "half_samples": [halves[0].n_samples, halves[1].n_samples]}


def _add_stability(kept: dict, stability: dict, timer) -> None:
    stability = {k: v for k, v in stability.items() if v}
    if stability:
        kept["stability"] = stability
    else:
        timer.seconds.pop("stability", None)


class _Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = round(timer.seconds.get(name, 0.0) + time.perf_counter() - self.t, 3)

        return _Ctx()


def _record(stage: str, what: str, opts: ScoringOptions, model, before: dict, kept: dict, timer: _Timer,
            calib: Calibration) -> dict:
    return {"stage": stage, "pruned": what, "options": asdict(opts), "calibration_samples": calib.n_samples,
            "shape_before": before, "shape_after": base_shape(model.config), "kept": kept,
            "scoring_seconds": timer.seconds}


# ----------------------------------------------------------------------------- Stage I


def stage1_attention_hidden(model, calib: Calibration, targets: Targets, opts: ScoringOptions) -> dict:
    """Stage I: attention heads (GQA-aware, same counts in every layer), then the hidden dimension."""
    model.eval()
    before, timer, kept = base_shape(model.config), _Timer(), {}
    n_q, n_kv = before["heads"], before["kv_heads"]
    criterion, stability = WIDTH[opts.method], {}
    if (targets.heads, targets.kv_heads) != (n_q, n_kv):
        with timer("heads"):
            scores, extra = criterion.heads(model, calib, targets, opts)
            keep_kv, keep_q = imp.select_heads(scores, n_kv, targets.heads, targets.kv_heads)

        def heads(half):
            _, q = imp.select_heads(criterion.heads(model, half, targets, opts)[0], n_kv, targets.heads,
                                    targets.kv_heads)
            return [{(l, h) for l, row in enumerate(q) for h in row}]

        with timer("stability"):
            stability["heads"] = _stability(calib, opts, heads, criterion.data_free)
        surgery.keep_attention_heads(model, keep_kv, keep_q)
        kept["kv_heads"], kept["q_heads"] = keep_kv, keep_q
        kept["head_scores"] = [[round(float(x), 6) for x in row] for row in scores]
        kept.update(extra)
    if targets.hidden != before["hidden"]:
        with timer("hidden"):
            keep = _top(criterion.hidden(model, calib, opts), targets.hidden)
        with timer("stability"):
            stability["hidden"] = _stability(
                calib, opts, lambda half: [_top(criterion.hidden(model, half, opts), targets.hidden)],
                criterion.data_free)
        surgery.keep_hidden(model, torch.tensor(keep))
        kept["hidden"] = keep
    _add_stability(kept, stability, timer)
    return _record("stage1", "attention heads, then hidden dimension", opts, model, before, kept, timer, calib)


# ----------------------------------------------------------------------------- Stage II


def stage2_mlp(model, calib: Calibration, targets: Targets, opts: ScoringOptions) -> dict:
    """Stage II: MLP intermediate channels (top-k activation frequency for PruneRec)."""
    model.eval()
    before, timer, kept = base_shape(model.config), _Timer(), {}
    criterion, stability = WIDTH[opts.method], {}
    if targets.mlp != before["mlp"]:
        with timer("mlp"):
            keep = [_top(x, targets.mlp) for x in criterion.mlp(model, calib, targets, opts)]

        def mlp(half):
            return [_top(x, targets.mlp) for x in criterion.mlp(model, half, targets, opts)]

        with timer("stability"):
            stability["mlp"] = _stability(calib, opts, mlp, criterion.data_free)
        surgery.keep_mlp_channels(model, [torch.tensor(k) for k in keep])
        kept["mlp"] = keep
    _add_stability(kept, stability, timer)
    return _record("stage2", "MLP channels", opts, model, before, kept, timer, calib)


# ----------------------------------------------------------------------------- Stage III


def stage3_layers(model, calib: Calibration, targets: Targets, opts: ScoringOptions) -> dict:
    """Stage III: whole decoder layers (greedy perplexity, ShortGPT or random)."""
    model.eval()
    before, timer, kept = base_shape(model.config), _Timer(), {}
    n_layers = before["layers"]
    n_remove = n_layers - targets.layers
    criterion, stability = LAYER[opts.layer_method], {}
    if n_remove > 0:
        with timer("layers"):
            drop = criterion.drop(model, calib.full, n_remove, kept, opts)
        with timer("stability"):
            stability["layers"] = _stability(
                calib, opts, lambda half: [criterion.drop(model, half.full, n_remove, None, opts)],
                criterion.data_free)
        kept["calibration_ppl_before"] = imp.calibration_perplexity(model, calib.full)
        with imp.skipped_layers(model, drop):
            kept["calibration_ppl_after"] = imp.calibration_perplexity(model, calib.full)
        surgery.remove_layers(model, drop)
        kept["layers"] = [i for i in range(n_layers) if i not in set(drop)]
        kept["removed"] = drop
    _add_stability(kept, stability, timer)
    return _record("stage3", "decoder layers", opts, model, before, kept, timer, calib)


# name, what it prunes, function
STAGES = (
    ("stage1", "attention heads + hidden dimension", stage1_attention_hidden),
    ("stage2", "MLP channels", stage2_mlp),
    ("stage3", "decoder layers", stage3_layers),
)
