"""PruneRec Stage I head importance (paper Algorithm 1) and the GQA-aware choice of kept heads.

Scoring head i of layer l takes a forward with that head removed. Removing it leaves layers
below l untouched, so each calibration batch's input to layer l is computed once (with the
heads already removed in earlier layers in place) and only layers >= l run for the heads of
layer l, several heads per forward: the batch is repeated once per head, each copy with its
own head removed. Same arithmetic as one full masked forward per head, a fraction of the cost.
Right-padded prompts are first regrouped by length (one per batch by default), so no forward
spends work on padding: calibration prompts vary in length, and a batch padded to its longest
row made ~46% of the tokens of SmolLM2's head scoring pads.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prunerec.compress.hooks import (
    batch_list,
    decoder_layers,
    eval_mode,
    last_real_positions,
    layer_inputs,
    length_buckets,
    masked_heads,
    model_dims,
    removing_hooks,
    run_layers,
    tiled,
    to_model_device,
)

__all__ = ["head_importance_kl", "select_heads", "TOKENS_PER_PASS", "ROWS_PER_BUCKET"]

# Rows x positions of one masked forward when heads_per_pass is automatic: bounds activation
# memory (~0.3 GB of MLP activations at Qwen2-0.5B's width) while keeping matrices large.
TOKENS_PER_PASS = 16384
# Calibration prompts per cached batch, regrouped by length: one, so no padding at all (the k
# stacked copies keep the matrices large; measured fastest on SmolLM2, 2 CPU cores).
ROWS_PER_BUCKET = 1


@dataclass
class _Cached:
    hidden: torch.Tensor  # input of the layer being scored [B,T,D]
    kwargs: list[dict]  # every decoder layer's keyword arguments (masks, rotary embeddings)
    last: torch.Tensor  # index of each row's last real token [B]
    ref: torch.Tensor  # log p of the full model at the last real token, float32 [B,V]


def _cache(model, b: dict) -> _Cached:
    """One full forward: layer 0's input, each layer's keyword arguments and the reference."""
    first, kwargs, h = layer_inputs(model, b)
    last = last_real_positions(b["attention_mask"])
    rows = torch.arange(h.shape[0], device=h.device)
    ref = F.log_softmax(model.lm_head(h[rows, last]).float(), dim=-1)
    return _Cached(first, kwargs, last, ref)


@contextlib.contextmanager
def _one_head_per_copy(model, l: int, heads: list[int], n_rows: int, mode: str):
    """Copy i of the stacked batch (rows i*n_rows ...) runs layer l without heads[i]; the same
    masking arithmetic as :func:`masked_heads`, with a per-row scale."""
    _, n_heads, hd = model_dims(model)
    attn = decoder_layers(model)[l].self_attn
    p = attn.o_proj.weight if mode == "zero_o_proj" else attn.q_proj.weight
    scale = torch.ones(len(heads), n_heads, hd, device=p.device, dtype=p.dtype)
    for i, h in enumerate(heads):
        scale[i, h] = 0.0 if mode == "zero_o_proj" else 1e-4
    scale = scale.reshape(len(heads), 1, 1, -1).expand(-1, n_rows, 1, -1).reshape(len(heads) * n_rows, 1, -1)
    if mode == "zero_o_proj":
        hook = attn.o_proj.register_forward_pre_hook(lambda m, a: (a[0] * scale, *a[1:]))
    else:
        hook = attn.q_proj.register_forward_hook(lambda m, a, out: out * scale)
    with removing_hooks([hook]):
        yield


def _head_kl_sums(model, l: int, c: _Cached, heads: list[int], mode: str) -> torch.Tensor:
    """Sum over the batch's samples of KL(ref || model without head h of layer l), per head."""
    n_rows, k = c.hidden.shape[0], len(heads)
    kwargs = [{key: tiled(v, n_rows, k) for key, v in kw.items()} for kw in c.kwargs]
    with _one_head_per_copy(model, l, heads, n_rows, mode):
        h = run_layers(model, range(l, len(c.kwargs)), tiled(c.hidden, n_rows, k), kwargs)
    rows = torch.arange(k * n_rows, device=h.device)
    h = model.model.norm(h[rows, c.last.repeat(k)])
    lp = F.log_softmax(model.lm_head(h).float(), dim=-1).reshape(k, n_rows, -1)
    return (c.ref.exp() * (c.ref - lp)).sum((1, 2)).double().cpu()


def _minmax(x: torch.Tensor) -> torch.Tensor:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else torch.zeros_like(x)


def _heads_per_pass(n_heads: int, c: _Cached, asked: int | None) -> int:
    if asked:
        return max(1, min(n_heads, asked))
    return max(1, min(n_heads, TOKENS_PER_PASS // max(1, c.hidden.shape[0] * c.hidden.shape[1])))


@torch.no_grad()
def head_importance_kl(
    model,
    batches,
    alpha: float = 0.7,
    n_remove_per_layer: int | None = None,
    mask_mode: str = "zero_o_proj",
    heads_per_pass: int | None = None,
    rows_per_bucket: int = ROWS_PER_BUCKET,
) -> tuple[torch.Tensor, list[list[int]]]:
    """PruneRec Stage I head importance (paper Algorithm 1).

    raw(l,i) = KL(p_full || p_without head i of layer l) at the last real token, averaged over
    samples; min-max normalised within the layer; imp(l,i) = alpha*imp(l-1,i) + (1-alpha)*norm(l,i).
    Sequential: if ``n_remove_per_layer`` is given, that many least important heads of each
    layer (by imp) stay masked while later layers are scored. ``heads_per_pass``: heads scored
    per forward (default: as many as keep a forward near TOKENS_PER_PASS tokens). Right-padded
    prompts are regrouped ``rows_per_bucket`` at a time by length (:func:`length_buckets`). Returns
    (imp [L,H], masked heads per layer).
    """
    if mask_mode not in ("zero_o_proj", "scale_query"):
        raise ValueError(f"mask_mode must be 'zero_o_proj' or 'scale_query', got {mask_mode!r}")
    n_layers, n_heads, _ = model_dims(model)
    imp = torch.zeros(n_layers, n_heads)
    masked: dict[int, list[int]] = {}
    with eval_mode(model):
        buckets = length_buckets(batch_list(batches), rows_per_bucket)
        cached = [_cache(model, to_model_device(model, b)) for b in buckets]
        n_samples = sum(c.ref.shape[0] for c in cached)
        for l in tqdm(range(n_layers), desc="head KL", leave=False):
            raw = torch.zeros(n_heads, dtype=torch.float64)
            for c in cached:
                k = _heads_per_pass(n_heads, c, heads_per_pass)
                for start in range(0, n_heads, k):
                    heads = list(range(start, min(start + k, n_heads)))
                    raw[start:start + len(heads)] += _head_kl_sums(model, l, c, heads, mask_mode)
            norm = _minmax((raw / max(n_samples, 1)).float())
            imp[l] = norm if l == 0 else alpha * imp[l - 1] + (1 - alpha) * norm
            if n_remove_per_layer:
                masked[l] = sorted(imp[l].argsort()[:n_remove_per_layer].tolist())
            for c in cached[: len(cached) if l + 1 < n_layers else 0]:  # next layer's input, removals in place
                with masked_heads(model, {l: masked.get(l, [])}, mask_mode):
                    c.hidden = run_layers(model, [l], c.hidden, c.kwargs)
    return imp, [masked.get(l, []) for l in range(n_layers)]


def select_heads(
    importance: torch.Tensor, n_kv_heads_total: int, keep_q_per_layer: int, keep_kv_per_layer: int
) -> tuple[list[list[int]], list[list[int]]]:
    """GQA-aware choice of kept heads from importance [L,H] (higher = keep).

    Per layer: keep the ``keep_kv_per_layer`` KV groups whose query heads have the largest
    summed importance, then the best ``keep_q_per_layer // keep_kv_per_layer`` query heads
    inside each kept group. Returns (keep_kv, keep_q), sorted index lists per layer, ready for
    :func:`prunerec.model.surgery.keep_attention_heads`.
    """
    n_layers, n_heads = importance.shape
    n_kv, kq, kkv = n_kv_heads_total, keep_q_per_layer, keep_kv_per_layer
    if n_kv <= 0 or n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads cannot be split into {n_kv} KV groups")
    group = n_heads // n_kv
    if kq <= 0 or kkv <= 0:
        raise ValueError(f"must keep at least one query and one KV head, got q={kq}, kv={kkv}")
    if kkv > n_kv or kq > n_heads:
        raise ValueError(f"cannot keep {kq} q / {kkv} kv heads out of {n_heads} q / {n_kv} kv")
    if kq % kkv:
        raise ValueError(f"kept query heads ({kq}) must divide evenly over kept KV heads ({kkv})")
    per = kq // kkv
    if per > group:
        raise ValueError(f"{kq} query heads over {kkv} KV groups needs {per} per group; a group has {group}")
    keep_kv, keep_q = [], []
    for row in importance.float().reshape(n_layers, n_kv, group):
        kv = row.sum(1).argsort(descending=True)[:kkv].sort().values
        q = [g * group + i for g in kv.tolist() for i in row[g].argsort(descending=True)[:per].tolist()]
        keep_kv.append(kv.tolist())
        keep_q.append(sorted(q))
    return keep_kv, keep_q
