"""Importance scores for PruneRec's three stages and for the baselines (pure computation).

Calibration data: an iterable of dict batches (or a single dict) with ``input_ids`` [B,T],
``attention_mask`` [B,T] (padding = 0, right padding expected but not required) and, for
perplexity, optional ``labels`` [B,T] with -100 at ignored positions (when absent, every real
token is a label). Higher score = more important everywhere. Shapes, so callers can swap a
PruneRec score for a baseline score: heads [L,H], hidden dims [D], MLP channels a list of L
tensors [I], layers [L].
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

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
    "shortgpt_layer_scores",
    "magnitude_head_scores",
    "magnitude_hidden_scores",
    "magnitude_mlp_scores",
    "wanda_head_scores",
    "wanda_hidden_scores",
    "wanda_mlp_scores",
    "random_head_scores",
    "random_hidden_scores",
    "random_mlp_scores",
    "random_layer_scores",
]

# ----------------------------------------------------------------------------- plumbing


def _layers(model):
    return model.model.layers


def _dims(model) -> tuple[int, int, int]:
    """(layers, query heads, head_dim)."""
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return len(_layers(model)), cfg.num_attention_heads, int(hd)


def _batches(batches) -> list[dict]:
    return [batches] if isinstance(batches, dict) else list(batches)


def _progress(batches: list[dict], desc: str):
    """A transient progress bar over calibration batches (hidden for a single batch)."""
    return tqdm(batches, desc=desc, unit="batch", leave=False, disable=len(batches) < 2)


def _to_device(model, batch: dict) -> dict:
    dev = next(model.parameters()).device
    out = {k: v.to(dev) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if "attention_mask" not in out:
        out["attention_mask"] = torch.ones_like(out["input_ids"])
    return out


def _last_real(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding position of each row (works for left or right padding)."""
    pos = torch.arange(mask.shape[1], device=mask.device)
    return (mask.bool() * pos).argmax(dim=1)


@contextlib.contextmanager
def _eval_mode(model):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@contextlib.contextmanager
def _hooks(handles: list):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _hidden(model, b: dict) -> torch.Tensor:
    """Final-norm hidden states [B,T,D]."""
    out = model.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
    return out.last_hidden_state


def _last_logp(model, b: dict) -> torch.Tensor:
    """log p(next token) at the last real token of each row, float32 [B,V]."""
    h = _hidden(model, b)
    rows = torch.arange(h.shape[0], device=h.device)
    return F.log_softmax(model.lm_head(h[rows, _last_real(b["attention_mask"])]).float(), dim=-1)


@torch.no_grad()
def _collect(model, batches, modules: dict[str, nn.Module], fn, output: bool = False,
             desc: str = "calibration pass") -> None:
    """Forward every batch; call ``fn(name, x)`` with the real-token rows [N,F] of each
    module's input (or output)."""
    state: dict = {}

    def make(name):
        def pre(mod, args):
            fn(name, args[0][state["mask"]])

        def post(mod, args, out):
            fn(name, out[state["mask"]])

        return post if output else pre

    handles = [
        m.register_forward_hook(make(n)) if output else m.register_forward_pre_hook(make(n))
        for n, m in modules.items()
    ]
    with _hooks(handles), _eval_mode(model):
        for batch in _progress(_batches(batches), desc):
            b = _to_device(model, batch)
            state["mask"] = b["attention_mask"].bool()
            h = _hidden(model, b)
            if any(m is model.lm_head for m in modules.values()):
                model.lm_head(h)


def _input_norms(model, batches, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """L2 norm of each input feature of each module over the real calibration tokens."""
    sq: dict[str, torch.Tensor] = {}

    def acc(name, x):
        s = x.float().pow(2).sum(0)
        sq[name] = sq[name] + s if name in sq else s

    _collect(model, batches, modules, acc, desc="Wanda input norms")
    return {k: v.sqrt() for k, v in sq.items()}


# ----------------------------------------------------------------------------- heads (Stage I)


@contextlib.contextmanager
def masked_heads(model, heads: dict[int, Sequence[int]], mode: str = "zero_o_proj"):
    """Temporarily remove query heads ``{layer: [head, ...]}``.

    ``zero_o_proj``: a forward pre-hook zeroes the head's slice of o_proj's input (the head
    contributes nothing). ``scale_query``: a forward hook scales the head's slice of q_proj's
    output by 1e-4 (as the public PruneRec code does; attention becomes near-uniform).
    """
    if mode not in ("zero_o_proj", "scale_query"):
        raise ValueError(f"mask_mode must be 'zero_o_proj' or 'scale_query', got {mode!r}")
    _, n_heads, hd = _dims(model)
    handles = []
    for l, hs in heads.items():
        if not len(hs):
            continue
        attn = _layers(model)[l].self_attn
        p = attn.o_proj.weight if mode == "zero_o_proj" else attn.q_proj.weight
        scale = torch.ones(n_heads, hd, device=p.device, dtype=p.dtype)
        scale[list(hs)] = 0.0 if mode == "zero_o_proj" else 1e-4
        scale = scale.flatten()
        if mode == "zero_o_proj":
            hook = attn.o_proj.register_forward_pre_hook(lambda m, a, s=scale: (a[0] * s, *a[1:]))
        else:
            hook = attn.q_proj.register_forward_hook(lambda m, a, out, s=scale: out * s)
        handles.append(hook)
    with _hooks(handles):
        yield


@torch.no_grad()
def _mean_kl(model, batches: list[dict], ref: list[torch.Tensor]) -> float:
    """Mean over samples of KL(ref || model) at the last real token."""
    total, n = 0.0, 0
    for b, lp_ref in zip(batches, ref):
        lp = _last_logp(model, b)
        total += (lp_ref.exp() * (lp_ref - lp)).sum().item()
        n += lp.shape[0]
    return total / max(n, 1)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else torch.zeros_like(x)


@torch.no_grad()
def head_importance_kl(
    model,
    batches,
    alpha: float = 0.7,
    n_remove_per_layer: int | None = None,
    mask_mode: str = "zero_o_proj",
) -> tuple[torch.Tensor, list[list[int]]]:
    """PruneRec Stage I head importance (paper Algorithm 1).

    raw(l,i) = KL(p_full || p_without head i of layer l) at the last real token, averaged over
    samples; min-max normalised within the layer; imp(l,i) = alpha*imp(l-1,i) + (1-alpha)*norm(l,i).
    Sequential: if ``n_remove_per_layer`` is given, that many least important heads of each
    layer (by imp) stay masked while later layers are scored. Returns (imp [L,H], masked heads
    per layer).
    """
    n_layers, n_heads, _ = _dims(model)
    batches = [_to_device(model, b) for b in _batches(batches)]
    imp = torch.zeros(n_layers, n_heads)
    masked: dict[int, list[int]] = {}
    with _eval_mode(model):
        ref = [_last_logp(model, b) for b in batches]
        for l in tqdm(range(n_layers), desc="head KL", leave=False):
            raw = torch.zeros(n_heads)
            for h in range(n_heads):
                with masked_heads(model, {**masked, l: [h]}, mask_mode):
                    raw[h] = _mean_kl(model, batches, ref)
            norm = _minmax(raw)
            imp[l] = norm if l == 0 else alpha * imp[l - 1] + (1 - alpha) * norm
            if n_remove_per_layer:
                masked[l] = sorted(imp[l].argsort()[:n_remove_per_layer].tolist())
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


# ----------------------------------------------------------------------------- hidden (Stage I)


def hidden_importance(model, batches) -> torch.Tensor:
    """s_j = || (d logit_pred / d h) * h ||_2 over positions and samples, h the final-norm
    hidden state and pred the model's own top next token at the last real position. [D]."""
    sq = None
    with _eval_mode(model):
        for batch in _progress(_batches(batches), "hidden grad x act"):
            b = _to_device(model, batch)
            with torch.no_grad():
                h = _hidden(model, b)
            h = h.detach().float().requires_grad_(True)
            rows = torch.arange(h.shape[0], device=h.device)
            logits = F.linear(h[rows, _last_real(b["attention_mask"])], model.lm_head.weight.float())
            pred = logits.detach().argmax(-1)
            (grad,) = torch.autograd.grad(logits[rows, pred].sum(), h)
            s = (grad * h).detach().pow(2)[b["attention_mask"].bool()].sum(0)
            sq = s if sq is None else sq + s
    return sq.sqrt().cpu()


# ----------------------------------------------------------------------------- MLP (Stage II)


def _ups(model) -> dict[str, nn.Module]:
    return {str(l): layer.mlp.up_proj for l, layer in enumerate(_layers(model))}


def mlp_channel_frequency(model, batches, k: int) -> list[torch.Tensor]:
    """Per layer, how often each intermediate channel is among a real token's top-k |up_proj
    output| values. list of L LongTensors [I]."""
    n_inter = model.config.intermediate_size
    counts = [torch.zeros(n_inter, dtype=torch.long) for _ in _layers(model)]

    def acc(name, x):
        idx = x.abs().topk(min(k, n_inter), dim=-1).indices.flatten().cpu()
        counts[int(name)] += torch.bincount(idx, minlength=n_inter)

    _collect(model, batches, _ups(model), acc, output=True, desc="MLP top-k frequency")
    return counts


def mlp_activation_share(model, batches, percents=(1, 5, 10, 20, 50), per_token: bool = True) -> torch.Tensor:
    """Share of total |up_proj output| held by the top k% channels, per layer: [L, len(percents)].

    ``per_token``: shares are taken per token (its own top channels) and averaged over real
    tokens; otherwise |activation| is summed per channel over all tokens first.
    """
    n_inter = model.config.intermediate_size
    ks = [max(1, math.ceil(p / 100 * n_inter)) for p in percents]
    sums = [torch.zeros(len(ks)) for _ in _layers(model)]
    mass = [torch.zeros(n_inter) for _ in _layers(model)]
    n_tok = [0] * len(sums)

    def acc(name, x):
        a = x.abs().float()
        l = int(name)
        if per_token:
            cum = a.sort(dim=-1, descending=True).values.cumsum(-1)
            share = cum[:, [k - 1 for k in ks]] / cum[:, -1:].clamp_min(1e-30)
            sums[l] += share.sum(0).cpu()
            n_tok[l] += a.shape[0]
        else:
            mass[l] += a.sum(0).cpu()

    _collect(model, batches, _ups(model), acc, output=True, desc="MLP activation share")
    if per_token:
        return torch.stack([s / max(n, 1) for s, n in zip(sums, n_tok)])
    out = []
    for m in mass:
        cum = m.sort(descending=True).values.cumsum(0)
        out.append(cum[[k - 1 for k in ks]] / cum[-1].clamp_min(1e-30))
    return torch.stack(out)


# ----------------------------------------------------------------------------- layers (Stage III)


class _Skip(nn.Module):
    """Stands in for a removed decoder layer: passes the residual stream through."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def skipped_layers(model, layers: Iterable[int]):
    """Temporarily replace decoder layers by identities (no computation)."""
    ml, saved = _layers(model), {}
    try:
        for l in layers:
            saved[l] = ml[l]
            ml[l] = _Skip()
        yield
    finally:
        for l, mod in saved.items():
            ml[l] = mod


@torch.no_grad()
def calibration_perplexity(model, batches) -> float:
    """exp(mean next-token NLL) over the labelled tokens (``labels`` != -100; every real token
    when ``labels`` is absent)."""
    nll, n = 0.0, 0
    with _eval_mode(model):
        for batch in _batches(batches):
            b = _to_device(model, batch)
            labels = b.get("labels")
            if labels is None:
                labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
            targets = labels[:, 1:]
            labelled = targets != -100  # the LM head runs only where a label is predicted (most cost otherwise)
            logits = model.lm_head(_hidden(model, b)[:, :-1][labelled]).float()
            nll += F.cross_entropy(logits, targets[labelled], reduction="sum").item()
            n += int(labelled.sum())
    return math.exp(nll / max(n, 1))


def greedy_layer_removal(model, batches, n_remove: int) -> list[int]:
    """PruneRec Stage III: repeatedly drop the layer whose removal (with those already
    dropped) gives the lowest calibration perplexity. Returns layers in removal order."""
    n_layers = len(_layers(model))
    if not 0 <= n_remove < n_layers:
        raise ValueError(f"n_remove must lie in [0, {n_layers}), got {n_remove}")
    batches = _batches(batches)
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


@torch.no_grad()
def shortgpt_layer_scores(model, batches) -> torch.Tensor:
    """ShortGPT block influence: 1 - cosine(layer input, layer output), mean over real tokens. [L]."""
    layers = _layers(model)
    tot, cnt, state = torch.zeros(len(layers)), [0] * len(layers), {}

    def make(l):
        def hook(mod, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            m = state["mask"]
            cos = F.cosine_similarity(x[m].float(), y[m].float(), dim=-1)
            tot[l] += (1 - cos).sum().cpu()
            cnt[l] += int(m.sum())

        return hook

    handles = [layer.register_forward_hook(make(l), with_kwargs=True) for l, layer in enumerate(layers)]
    with _hooks(handles), _eval_mode(model):
        for batch in _progress(_batches(batches), "ShortGPT influence"):
            b = _to_device(model, batch)
            state["mask"] = b["attention_mask"].bool()
            _hidden(model, b)
    return tot / torch.tensor(cnt).clamp_min(1)


# ----------------------------------------------------------------------------- baselines


def _head_view_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[H*hd, X] -> [H, hd*X]."""
    return w.reshape(n_heads, -1)


def _head_view_cols(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[X, H*hd] -> [H, X*hd]."""
    return w.reshape(w.shape[0], n_heads, -1).transpose(0, 1).reshape(n_heads, -1)


@torch.no_grad()
def magnitude_head_scores(model) -> torch.Tensor:
    """L2 norm of the weights a query head owns: its q_proj rows (+bias) and o_proj columns. [L,H]."""
    _, n_heads, _ = _dims(model)
    out = []
    for layer in _layers(model):
        a = layer.self_attn
        parts = [_head_view_rows(a.q_proj.weight, n_heads), _head_view_cols(a.o_proj.weight, n_heads)]
        if a.q_proj.bias is not None:
            parts.append(a.q_proj.bias.reshape(n_heads, -1))
        out.append(torch.cat([p.float() for p in parts], 1).norm(dim=1))
    return torch.stack(out).cpu()


def _hidden_owners(model) -> list[tuple[torch.Tensor, int]]:
    """(weight, axis of the hidden dim) for every tensor indexed by the residual stream."""
    emb, lm = model.get_input_embeddings(), model.get_output_embeddings()
    owners = [(emb.weight, 1)]
    if lm is not None and lm.weight is not emb.weight:
        owners.append((lm.weight, 1))
    for layer in _layers(model):
        a, m = layer.self_attn, layer.mlp
        owners += [(lin.weight, 1) for lin in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj)]
        owners += [(lin.weight, 0) for lin in (a.o_proj, m.down_proj)]
        if a.o_proj.bias is not None:
            owners.append((a.o_proj.bias.unsqueeze(1), 0))
    norms = [mod.weight.unsqueeze(1) for mod in model.modules() if hasattr(mod, "variance_epsilon")]
    return owners + [(w, 0) for w in norms]


@torch.no_grad()
def magnitude_hidden_scores(model) -> torch.Tensor:
    """L2 norm of everything a residual dimension owns: embedding (and untied LM head) column,
    input columns of q/k/v/gate/up, output rows of o_proj/down, RMSNorm weights. [D]."""
    sq = sum(w.float().pow(2).sum(1 - axis) for w, axis in _hidden_owners(model))
    return sq.sqrt().cpu()


@torch.no_grad()
def magnitude_mlp_scores(model) -> list[torch.Tensor]:
    """L2 norm of a channel's gate row, up row and down column. list of L tensors [I]."""
    out = []
    for layer in _layers(model):
        m = layer.mlp
        sq = m.gate_proj.weight.float().pow(2).sum(1) + m.up_proj.weight.float().pow(2).sum(1)
        out.append((sq + m.down_proj.weight.float().pow(2).sum(0)).sqrt().cpu())
    return out


def _wanda(lin: nn.Linear, norm: torch.Tensor) -> torch.Tensor:
    """|W| * ||x_in|| per weight, [out, in]."""
    return lin.weight.float().abs() * norm.to(lin.weight.device)


@torch.no_grad()
def wanda_head_scores(model, batches) -> torch.Tensor:
    """Structured Wanda: sum of |W|*||x|| over a head's q_proj rows and o_proj columns. [L,H]."""
    _, n_heads, _ = _dims(model)
    mods = {}
    for l, layer in enumerate(_layers(model)):
        mods[f"{l}.q"], mods[f"{l}.o"] = layer.self_attn.q_proj, layer.self_attn.o_proj
    norms = _input_norms(model, batches, mods)
    out = []
    for l, layer in enumerate(_layers(model)):
        a = layer.self_attn
        q = _head_view_rows(_wanda(a.q_proj, norms[f"{l}.q"]), n_heads).sum(1)
        o = _head_view_cols(_wanda(a.o_proj, norms[f"{l}.o"]), n_heads).sum(1)
        out.append((q + o).cpu())
    return torch.stack(out)


@torch.no_grad()
def wanda_hidden_scores(model, batches) -> torch.Tensor:
    """Structured Wanda for residual dimension j: |W|*||x|| summed over the input columns j of
    q/k/v/gate/up and of the LM head, and over the output rows j of o_proj/down_proj. [D]."""
    mods = {"lm": model.lm_head}
    for l, layer in enumerate(_layers(model)):
        a, m = layer.self_attn, layer.mlp
        mods.update({f"{l}.q": a.q_proj, f"{l}.k": a.k_proj, f"{l}.v": a.v_proj, f"{l}.g": m.gate_proj})
        mods.update({f"{l}.u": m.up_proj, f"{l}.o": a.o_proj, f"{l}.d": m.down_proj})
    norms = _input_norms(model, batches, mods)
    score = _wanda(model.lm_head, norms["lm"]).sum(0)
    for name, lin in mods.items():
        if name == "lm":
            continue
        w = _wanda(lin, norms[name])
        score = score + (w.sum(1) if name[-1] in "od" else w.sum(0))
    return score.cpu()


@torch.no_grad()
def wanda_mlp_scores(model, batches) -> list[torch.Tensor]:
    """Structured Wanda for a channel: |W|*||x|| over its gate/up rows and its down column."""
    mods = {}
    for l, layer in enumerate(_layers(model)):
        mods[f"{l}.in"], mods[f"{l}.down"] = layer.mlp.up_proj, layer.mlp.down_proj
    norms = _input_norms(model, batches, mods)
    out = []
    for l, layer in enumerate(_layers(model)):
        m, x = layer.mlp, norms[f"{l}.in"]
        s = _wanda(m.gate_proj, x).sum(1) + _wanda(m.up_proj, x).sum(1)
        out.append((s + _wanda(m.down_proj, norms[f"{l}.down"]).sum(0)).cpu())
    return out


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_head_scores(model, seed: int = 0) -> torch.Tensor:
    """Uniform random scores [L,H], reproducible by seed."""
    n_layers, n_heads, _ = _dims(model)
    return torch.rand(n_layers, n_heads, generator=_gen(seed))


def random_hidden_scores(model, seed: int = 0) -> torch.Tensor:
    """Uniform random scores [D], reproducible by seed."""
    return torch.rand(model.config.hidden_size, generator=_gen(seed))


def random_mlp_scores(model, seed: int = 0) -> list[torch.Tensor]:
    """Uniform random scores, a list of L tensors [I], reproducible by seed."""
    g = _gen(seed)
    return [torch.rand(model.config.intermediate_size, generator=g) for _ in _layers(model)]


def random_layer_scores(model, seed: int = 0) -> torch.Tensor:
    """Uniform random scores [L] (drop the lowest), reproducible by seed."""
    return torch.rand(len(_layers(model)), generator=_gen(seed))
