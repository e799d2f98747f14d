"""Hook plumbing shared by the importance scores: calibration batches, hooked forwards,
temporary removal of heads and layers (pure computation)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prunerec.model.batching import pad_rows
from prunerec.model.validate import head_dim


def decoder_layers(model):
    return model.model.layers


def model_dims(model) -> tuple[int, int, int]:
    """(layers, query heads, head_dim)."""
    return len(decoder_layers(model)), model.config.num_attention_heads, head_dim(model.config)


def batch_list(batches) -> list[dict]:
    return [batches] if isinstance(batches, dict) else list(batches)


def batch_progress(batches: list[dict], desc: str):
    """A transient progress bar over calibration batches (hidden for a single batch)."""
    return tqdm(batches, desc=desc, unit="batch", leave=False, disable=len(batches) < 2)


def right_padded(mask: torch.Tensor) -> bool:
    """Every row's real tokens come first (a row of ones, then zeros)."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def length_buckets(batches: list[dict], rows: int) -> list[dict]:
    """The rows of right-padded calibration batches (``input_ids``, ``attention_mask``, optional
    ``labels``) regrouped by length, ``rows`` to a batch, each cut to its longest row: less
    compute spent on padding. Under right padding a real token never sees a pad, so each row's
    numbers stay the same. Left-padded batches (positions shifted by their padding) are
    returned as they are."""
    masks = [b.get("attention_mask", torch.ones_like(b["input_ids"])) for b in batches]
    if not all(right_padded(mask) for mask in masks):
        return batches
    labelled = all("labels" in b for b in batches)
    seqs = [(b["input_ids"][row, :n].tolist(), b["labels"][row, :n].tolist() if labelled else None)
            for b, mask in zip(batches, masks) for row, n in enumerate(mask.sum(1).tolist())]
    seqs.sort(key=lambda seq: len(seq[0]))
    out = []
    for start in range(0, len(seqs), rows):
        chunk = seqs[start:start + rows]
        ids, mask = pad_rows([tokens for tokens, _ in chunk], 0, left=False)
        batch = {"input_ids": ids, "attention_mask": mask}
        if labelled:
            batch["labels"] = pad_rows([labels for _, labels in chunk], -100, left=False)[0]
        out.append(batch)
    return out


def to_model_device(model, batch: dict) -> dict:
    dev = next(model.parameters()).device
    out = {k: v.to(dev) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if "attention_mask" not in out:
        out["attention_mask"] = torch.ones_like(out["input_ids"])
    return out


def last_real_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding position of each row (works for left or right padding)."""
    pos = torch.arange(mask.shape[1], device=mask.device)
    return (mask.bool() * pos).argmax(dim=1)


@contextlib.contextmanager
def eval_mode(model):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@contextlib.contextmanager
def removing_hooks(handles: list):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def final_hidden(model, b: dict) -> torch.Tensor:
    """Final-norm hidden states [B,T,D]."""
    out = model.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
    return out.last_hidden_state


def last_token_logp(model, b: dict) -> torch.Tensor:
    """log p(next token) at the last real token of each row, float32 [B,V]."""
    h = final_hidden(model, b)
    rows = torch.arange(h.shape[0], device=h.device)
    return F.log_softmax(model.lm_head(h[rows, last_real_positions(b["attention_mask"])]).float(), dim=-1)


def layer_inputs(model, b: dict) -> tuple[torch.Tensor, list[dict], torch.Tensor]:
    """One full forward: layer 0's input [B,T,D], every decoder layer's keyword arguments
    (masks, rotary embeddings), and the final-norm hidden states [B,T,D]."""
    layers, first = decoder_layers(model), {}
    kwargs: list[dict] = [{} for _ in layers]

    def grab(l):
        def hook(mod, args, kw):
            if l == 0:
                first["h"] = args[0] if args else kw["hidden_states"]
            kwargs[l] = {k: v for k, v in kw.items() if k != "hidden_states"}

        return hook

    handles = [layer.register_forward_pre_hook(grab(l), with_kwargs=True) for l, layer in enumerate(layers)]
    with removing_hooks(handles):
        h = final_hidden(model, b)
    return first["h"], kwargs, h


def tiled(value, n_rows: int, k: int):
    """`value` for k stacked copies of an n_rows batch (tensors with a batch axis are tiled)."""
    if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == n_rows:
        return value.repeat(k, *[1] * (value.dim() - 1))
    if isinstance(value, tuple):
        return tuple(tiled(v, n_rows, k) for v in value)
    return value


def run_layer(model, l: int, h: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The residual stream after decoder layer l, from its input ``h``."""
    out = decoder_layers(model)[l](h, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def run_layers(model, indices: Iterable[int], h: torch.Tensor, kwargs: list[dict]) -> torch.Tensor:
    """The residual stream after decoder layers ``indices`` (in that order), from their input ``h``."""
    for l in indices:
        h = run_layer(model, l, h, kwargs[l])
    return h


@torch.no_grad()
def collect_activations(model, batches, modules: dict[str, nn.Module], fn, output: bool = False,
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
    with removing_hooks(handles), eval_mode(model):
        for batch in batch_progress(batch_list(batches), desc):
            b = to_model_device(model, batch)
            state["mask"] = b["attention_mask"].bool()
            h = final_hidden(model, b)
            if any(m is model.lm_head for m in modules.values()):
                model.lm_head(h)


def input_norms(model, batches, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """L2 norm of each input feature of each module over the real calibration tokens."""
    sq: dict[str, torch.Tensor] = {}

    def acc(name, x):
        s = x.float().pow(2).sum(0)
        sq[name] = sq[name] + s if name in sq else s

    collect_activations(model, batches, modules, acc, desc="Wanda input norms")
    return {k: v.sqrt() for k, v in sq.items()}


def up_projections(model) -> dict[str, nn.Module]:
    return {str(l): layer.mlp.up_proj for l, layer in enumerate(decoder_layers(model))}


@torch.no_grad()
def mean_kl_full_forward(model, batches: list[dict], ref: list[torch.Tensor]) -> float:
    """Mean over samples of KL(ref || model) at the last real token, by full forwards (what
    scoring one masked head cost before layer inputs were cached; kept for cost comparisons)."""
    total, n = 0.0, 0
    for b, lp_ref in zip(batches, ref):
        lp = last_token_logp(model, b)
        total += (lp_ref.exp() * (lp_ref - lp)).sum().item()
        n += lp.shape[0]
    return total / max(n, 1)


@contextlib.contextmanager
def masked_heads(model, heads: dict[int, Sequence[int]], mode: str = "zero_o_proj"):
    """Temporarily remove query heads ``{layer: [head, ...]}``.

    ``zero_o_proj``: a forward pre-hook zeroes the head's slice of o_proj's input (the head
    contributes nothing). ``scale_query``: a forward hook scales the head's slice of q_proj's
    output by 1e-4 (as the public PruneRec code does; attention becomes near-uniform).
    """
    if mode not in ("zero_o_proj", "scale_query"):
        raise ValueError(f"mask_mode must be 'zero_o_proj' or 'scale_query', got {mode!r}")
    _, n_heads, hd = model_dims(model)
    handles = []
    for l, hs in heads.items():
        if not len(hs):
            continue
        attn = decoder_layers(model)[l].self_attn
        p = attn.o_proj.weight if mode == "zero_o_proj" else attn.q_proj.weight
        scale = torch.ones(n_heads, hd, device=p.device, dtype=p.dtype)
        scale[list(hs)] = 0.0 if mode == "zero_o_proj" else 1e-4
        scale = scale.flatten()
        if mode == "zero_o_proj":
            hook = attn.o_proj.register_forward_pre_hook(lambda m, a, s=scale: (a[0] * s, *a[1:]))
        else:
            hook = attn.q_proj.register_forward_hook(lambda m, a, out, s=scale: out * s)
        handles.append(hook)
    with removing_hooks(handles):
        yield


class _Skip(nn.Module):
    """Stands in for a removed decoder layer: passes the residual stream through."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def skipped_layers(model, layers: Iterable[int]):
    """Temporarily replace decoder layers by identities (no computation)."""
    ml, saved = decoder_layers(model), {}
    try:
        for l in layers:
            saved[l] = ml[l]
            ml[l] = _Skip()
        yield
    finally:
        for l, mod in saved.items():
            ml[l] = mod
