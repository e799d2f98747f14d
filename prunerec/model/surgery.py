"""Physical shrinking of a ``transformers`` ``Qwen2ForCausalLM``, in place.

Every function replaces weights by sliced copies, updates the cached shape attributes of the
modules and patches ``model.config`` so that ``save_pretrained`` followed by a stock
``AutoModelForCausalLM.from_pretrained`` (no custom class, no ``trust_remote_code``) rebuilds
exactly the same network.  Every layer keeps the same shape (the stock Qwen2 classes cannot
load anything else), and ``config.head_dim`` is always written explicitly, because after head
or hidden pruning ``num_attention_heads * head_dim`` usually differs from ``hidden_size``
(transformers honours an explicit ``head_dim``; vLLM's native Qwen2 ignores it and assumes
``hidden_size // num_attention_heads``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from prunerec.model.validate import head_dim

__all__ = [
    "keep_attention_heads",
    "keep_hidden",
    "keep_mlp_channels",
    "remove_layers",
    "count_parameters",
    "count_parameters_from_config",
]


# ----------------------------------------------------------------------------- helpers


def _layers(model) -> nn.ModuleList:
    return model.model.layers



def _set_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.detach().clone().contiguous(), requires_grad=old.requires_grad))


def _slice_linear(lin: nn.Linear, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> None:
    """Keep rows ``out_idx`` (outputs, and bias) and columns ``in_idx`` (inputs) of ``lin``."""
    w = lin.weight
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
        if lin.bias is not None:
            _set_param(lin, "bias", lin.bias.index_select(0, out_idx.to(w.device)))
        lin.out_features = int(out_idx.numel())
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
        lin.in_features = int(in_idx.numel())
    _set_param(lin, "weight", w)


def _index(idx, n: int, what: str) -> torch.Tensor:
    """Validate a set of kept indices in ``range(n)``; return them sorted as a LongTensor."""
    t = torch.as_tensor(idx, dtype=torch.long).flatten().cpu()
    if t.numel() == 0:
        raise ValueError(f"{what}: keeping nothing is not allowed")
    if t.unique().numel() != t.numel():
        raise ValueError(f"{what}: duplicate indices {t.tolist()}")
    if t.min() < 0 or t.max() >= n:
        raise ValueError(f"{what}: indices must lie in [0, {n}), got {t.tolist()}")
    return t.sort().values


def _is_tied(model) -> bool:
    lm, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return lm is not None and lm.weight is emb.weight


def rms_norms(model) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "variance_epsilon") and hasattr(m, "weight")]


def residual_readers(layer) -> tuple[nn.Linear, ...]:
    """The linears of a decoder layer that read the residual stream (one input column per hidden dimension)."""
    return (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj,
            layer.mlp.up_proj)


def residual_writers(layer) -> tuple[nn.Linear, ...]:
    """The linears of a decoder layer that write the residual stream (one output row and bias entry per
    hidden dimension)."""
    return (layer.self_attn.o_proj, layer.mlp.down_proj)


# ----------------------------------------------------------------------------- heads


def _head_rows(heads: Sequence[int], hd: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads])


def _check_heads(model, keep_kv, keep_q) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    cfg, n_layers = model.config, len(_layers(model))
    n_q, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    group = n_q // n_kv
    if len(keep_kv) != n_layers or len(keep_q) != n_layers:
        raise ValueError(
            f"keep_kv and keep_q need one entry per layer ({n_layers}), got {len(keep_kv)} and {len(keep_q)}"
        )
    kvs, qs, shapes = [], [], set()
    for l, (kv, q) in enumerate(zip(keep_kv, keep_q)):
        kv = _index(kv, n_kv, f"layer {l} kept KV groups")
        q = _index(q, n_q, f"layer {l} kept query heads")
        per_group = torch.bincount(q // group, minlength=n_kv)
        orphans = sorted(set((q // group).tolist()) - set(kv.tolist()))
        if orphans:
            raise ValueError(f"layer {l}: kept query heads belong to dropped KV groups {orphans}")
        counts = per_group[kv].tolist()
        if len(set(counts)) != 1:
            raise ValueError(
                f"layer {l}: every kept KV group must keep the same number of its query heads, got {counts} "
                f"for groups {kv.tolist()}"
            )
        shapes.add((kv.numel(), q.numel()))
        kvs.append(kv)
        qs.append(q)
    if len(shapes) != 1:
        raise ValueError(f"every layer must keep the same (kv, q) head counts, got {sorted(shapes)}")
    return kvs, qs


@torch.no_grad()
def keep_attention_heads(model, keep_kv: list[list[int]], keep_q: list[list[int]]):
    """Keep, per layer, the KV groups ``keep_kv[l]`` and the query heads ``keep_q[l]``.

    Indices use the original numbering; query head ``h`` belongs to KV group
    ``h // (num_attention_heads // num_key_value_heads)``. Each kept KV group must keep the
    same number of its own query heads, and every layer the same counts (raises ValueError
    otherwise). Slices the rows (and biases) of q/k/v and the columns of o_proj, and sets
    ``num_attention_heads``, ``num_key_value_heads`` and an explicit ``head_dim``.
    """
    kvs, qs = _check_heads(model, keep_kv, keep_q)
    hd = head_dim(model.config)
    for layer, kv, q in zip(_layers(model), kvs, qs):
        attn = layer.self_attn
        q_rows, kv_rows = _head_rows(q.tolist(), hd), _head_rows(kv.tolist(), hd)
        _slice_linear(attn.q_proj, out_idx=q_rows)
        _slice_linear(attn.k_proj, out_idx=kv_rows)
        _slice_linear(attn.v_proj, out_idx=kv_rows)
        _slice_linear(attn.o_proj, in_idx=q_rows)
        attn.num_key_value_groups = q.numel() // kv.numel()
        attn.head_dim = hd
    cfg = model.config
    cfg.head_dim = hd
    cfg.num_attention_heads = int(qs[0].numel())
    cfg.num_key_value_heads = int(kvs[0].numel())
    return model


# ----------------------------------------------------------------------------- hidden


@torch.no_grad()
def keep_hidden(model, keep: torch.Tensor):
    """Keep the residual-stream dimensions ``keep`` (any order; stored sorted).

    Slices the embedding table, the LM head (tied or untied; a tie stays a tie), every RMSNorm
    weight, the input side of q/k/v/gate/up and the output side of o_proj/down_proj (and an
    o_proj bias if any); sets ``hidden_size`` and an explicit ``head_dim``.

    RMSNorm compensation: RMSNorm divides by ``sqrt(mean(x**2) + eps)`` over the hidden size,
    so dropping dimensions changes the mean even when they carry zeros. With
    ``r = n_old / n_new`` and removed dimensions all zero, ``mean_new = r * mean_old``; so
    every RMSNorm weight is multiplied by ``sqrt(r)`` and eps (``config.rms_norm_eps`` and
    each norm's ``variance_epsilon``) by ``r``, which gives
    ``w*sqrt(r) * x / sqrt(r*mean_old + r*eps) == w * x / sqrt(mean_old + eps)`` exactly:
    removing dimensions that are zero everywhere in the residual stream leaves the logits
    unchanged. For non-zero removed dimensions it keeps the scale of the normalisation.
    """
    cfg = model.config
    n_old = cfg.hidden_size
    keep = _index(keep, n_old, "kept hidden dimensions")
    n_new = keep.numel()
    ratio = n_old / n_new
    hd = head_dim(model.config)
    tied = _is_tied(model)

    emb = model.get_input_embeddings()
    _set_param(emb, "weight", emb.weight.index_select(1, keep.to(emb.weight.device)))
    emb.embedding_dim = n_new
    lm = model.get_output_embeddings()
    if tied:
        lm.weight = emb.weight
        lm.in_features = n_new
    elif lm is not None:
        _slice_linear(lm, in_idx=keep)

    for norm in rms_norms(model):
        _set_param(norm, "weight", norm.weight.index_select(0, keep.to(norm.weight.device)) * math.sqrt(ratio))
        norm.variance_epsilon = norm.variance_epsilon * ratio

    for layer in _layers(model):
        for lin in residual_readers(layer):
            _slice_linear(lin, in_idx=keep)
        for lin in residual_writers(layer):
            _slice_linear(lin, out_idx=keep)
        layer.self_attn.head_dim = hd
        layer.hidden_size = n_new
        layer.mlp.hidden_size = n_new

    cfg.head_dim = hd
    cfg.hidden_size = n_new
    cfg.rms_norm_eps = float(cfg.rms_norm_eps * ratio)
    return model


# ----------------------------------------------------------------------------- MLP


@torch.no_grad()
def keep_mlp_channels(model, keep: list[torch.Tensor]):
    """Keep, per layer, the intermediate channels ``keep[l]`` (same count in every layer).

    Slices rows of gate_proj/up_proj and columns of down_proj; sets ``intermediate_size``.
    """
    layers, n_old = _layers(model), model.config.intermediate_size
    if len(keep) != len(layers):
        raise ValueError(f"keep needs one entry per layer ({len(layers)}), got {len(keep)}")
    idx = [_index(k, n_old, f"layer {l} kept MLP channels") for l, k in enumerate(keep)]
    sizes = sorted({i.numel() for i in idx})
    if len(sizes) != 1:
        raise ValueError(f"every layer must keep the same number of MLP channels, got {sizes}")
    for layer, i in zip(layers, idx):
        mlp = layer.mlp
        _slice_linear(mlp.gate_proj, out_idx=i)
        _slice_linear(mlp.up_proj, out_idx=i)
        _slice_linear(mlp.down_proj, in_idx=i)
        mlp.intermediate_size = sizes[0]
    model.config.intermediate_size = sizes[0]
    return model


# ----------------------------------------------------------------------------- layers


def _per_layer_keys(cfg, n_layers: int) -> list[str]:
    keys = []
    for key, value in cfg.to_dict().items():
        if isinstance(value, list) and len(value) == n_layers and "layer" in key:
            keys.append(key)
    return keys


def remove_layers(model, drop: list[int]):
    """Remove the decoder layers ``drop`` (original numbering).

    Renumbers ``self_attn.layer_idx`` (the KV cache is indexed by it), updates
    ``num_hidden_layers``, slices ``config.layer_types`` and any other per-layer config list
    (keys containing "layer" whose length is the layer count), and recounts
    ``max_window_layers`` so the sliding-window pattern of the kept layers is preserved.
    """
    cfg, layers = model.config, _layers(model)
    n = len(layers)
    drop_set = set(int(d) for d in drop)
    if len(drop_set) != len(list(drop)):
        raise ValueError(f"duplicate layers in drop: {list(drop)}")
    if any(d < 0 or d >= n for d in drop_set):
        raise ValueError(f"layers to drop must lie in [0, {n}), got {sorted(drop_set)}")
    kept = [i for i in range(n) if i not in drop_set]
    if not kept:
        raise ValueError("cannot remove every layer")

    for key in _per_layer_keys(cfg, n):
        setattr(cfg, key, [getattr(cfg, key)[i] for i in kept])
    if getattr(cfg, "max_window_layers", None) is not None:
        cfg.max_window_layers = sum(1 for i in kept if i < cfg.max_window_layers)
    model.model.layers = nn.ModuleList([layers[i] for i in kept])
    for new_idx, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_idx
        if hasattr(layer.self_attn, "layer_type") and getattr(cfg, "layer_types", None):
            layer.self_attn.layer_type = cfg.layer_types[new_idx]
    cfg.num_hidden_layers = len(kept)
    if hasattr(model.model, "has_sliding_layers"):
        model.model.has_sliding_layers = "sliding_attention" in (cfg.layer_types or [])
    return model


# ----------------------------------------------------------------------------- counting


def count_parameters(model) -> dict:
    """``{"total", "embedding", "non_embedding"}``; shared (tied) tensors are counted once.

    ``embedding`` is the input embedding table plus an untied LM head. Works on 'meta' models.
    """
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb = model.get_input_embeddings().weight.numel()
    lm = model.get_output_embeddings()
    if lm is not None and not _is_tied(model):
        emb += lm.weight.numel()
    return {"total": total, "embedding": emb, "non_embedding": total - emb}


def count_parameters_from_config(config) -> dict:
    """The same numbers as :func:`count_parameters`, computed from a Qwen2 config alone."""
    h, inter, n_layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    n_q = config.num_attention_heads
    n_kv = config.num_key_value_heads or n_q
    hd = head_dim(config)
    attn = (h + 1) * n_q * hd + 2 * (h + 1) * n_kv * hd + n_q * hd * h  # q/k/v with bias, o without
    per_layer = attn + 3 * h * inter + 2 * h
    non_emb = n_layers * per_layer + h
    emb = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)
    return {"total": non_emb + emb, "embedding": emb, "non_embedding": non_emb}
