"""Baseline importance scores PruneRec is compared with: weight magnitude, structured Wanda,
ShortGPT block influence and uniform random (pure computation). Same shapes as the PruneRec
scores (heads [L,H], hidden dims [D], MLP channels a list of L tensors [I], layers [L]);
higher = more important."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunerec.compress.hooks import (
    batch_list,
    batch_progress,
    decoder_layers,
    eval_mode,
    final_hidden,
    input_norms,
    model_dims,
    removing_hooks,
    to_model_device,
)
from prunerec.model import surgery

__all__ = [
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


@torch.no_grad()
def shortgpt_layer_scores(model, batches) -> torch.Tensor:
    """ShortGPT block influence: 1 - cosine(layer input, layer output), mean over real tokens. [L]."""
    layers = decoder_layers(model)
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
    with removing_hooks(handles), eval_mode(model):
        for batch in batch_progress(batch_list(batches), "ShortGPT influence"):
            b = to_model_device(model, batch)
            state["mask"] = b["attention_mask"].bool()
            final_hidden(model, b)
    return tot / torch.tensor(cnt).clamp_min(1)


def _head_view_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[H*hd, X] -> [H, hd*X]."""
    return w.reshape(n_heads, -1)


def _head_view_cols(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[X, H*hd] -> [H, X*hd]."""
    return w.reshape(w.shape[0], n_heads, -1).transpose(0, 1).reshape(n_heads, -1)


@torch.no_grad()
def magnitude_head_scores(model) -> torch.Tensor:
    """L2 norm of the weights a query head owns: its q_proj rows (+bias) and o_proj columns. [L,H]."""
    _, n_heads, _ = model_dims(model)
    out = []
    for layer in decoder_layers(model):
        a = layer.self_attn
        parts = [_head_view_rows(a.q_proj.weight, n_heads), _head_view_cols(a.o_proj.weight, n_heads)]
        if a.q_proj.bias is not None:
            parts.append(a.q_proj.bias.reshape(n_heads, -1))
        out.append(torch.cat([p.float() for p in parts], 1).norm(dim=1))
    return torch.stack(out).cpu()


def _hidden_owners(model) -> list[tuple[torch.Tensor, int]]:
    """(weight, axis of the hidden dim) for every tensor indexed by the residual stream: what
    surgery.keep_hidden slices."""
    emb, lm = model.get_input_embeddings(), model.get_output_embeddings()
    owners = [(emb.weight, 1)]
    if lm is not None and lm.weight is not emb.weight:
        owners.append((lm.weight, 1))
    for layer in decoder_layers(model):
        owners += [(lin.weight, 1) for lin in surgery.residual_readers(layer)]
        for lin in surgery.residual_writers(layer):
            owners.append((lin.weight, 0))
            if lin.bias is not None:
                owners.append((lin.bias.unsqueeze(1), 0))
    return owners + [(norm.weight.unsqueeze(1), 0) for norm in surgery.rms_norms(model)]


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
    for layer in decoder_layers(model):
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
    _, n_heads, _ = model_dims(model)
    mods = {}
    for l, layer in enumerate(decoder_layers(model)):
        mods[f"{l}.q"], mods[f"{l}.o"] = layer.self_attn.q_proj, layer.self_attn.o_proj
    norms = input_norms(model, batches, mods)
    out = []
    for l, layer in enumerate(decoder_layers(model)):
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
    for l, layer in enumerate(decoder_layers(model)):
        mods.update({f"{l}.read{i}": lin for i, lin in enumerate(surgery.residual_readers(layer))})
        mods.update({f"{l}.write{i}": lin for i, lin in enumerate(surgery.residual_writers(layer))})
    norms = input_norms(model, batches, mods)
    score = _wanda(model.lm_head, norms["lm"]).sum(0)
    for name, lin in mods.items():
        if name == "lm":
            continue
        w = _wanda(lin, norms[name])
        score = score + (w.sum(1) if ".write" in name else w.sum(0))
    return score.cpu()


@torch.no_grad()
def wanda_mlp_scores(model, batches) -> list[torch.Tensor]:
    """Structured Wanda for a channel: |W|*||x|| over its gate/up rows and its down column."""
    mods = {}
    for l, layer in enumerate(decoder_layers(model)):
        mods[f"{l}.in"], mods[f"{l}.down"] = layer.mlp.up_proj, layer.mlp.down_proj
    norms = input_norms(model, batches, mods)
    out = []
    for l, layer in enumerate(decoder_layers(model)):
        m, x = layer.mlp, norms[f"{l}.in"]
        s = _wanda(m.gate_proj, x).sum(1) + _wanda(m.up_proj, x).sum(1)
        out.append((s + _wanda(m.down_proj, norms[f"{l}.down"]).sum(0)).cpu())
    return out


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_head_scores(model, seed: int = 0) -> torch.Tensor:
    """Uniform random scores [L,H], reproducible by seed."""
    n_layers, n_heads, _ = model_dims(model)
    return torch.rand(n_layers, n_heads, generator=_gen(seed))


def random_hidden_scores(model, seed: int = 0) -> torch.Tensor:
    """Uniform random scores [D], reproducible by seed."""
    return torch.rand(model.config.hidden_size, generator=_gen(seed))


def random_mlp_scores(model, seed: int = 0) -> list[torch.Tensor]:
    """Uniform random scores, a list of L tensors [I], reproducible by seed."""
    g = _gen(seed)
    return [torch.rand(model.config.intermediate_size, generator=g) for _ in decoder_layers(model)]


def random_layer_scores(model, seed: int = 0) -> torch.Tensor:
    """Uniform random scores [L] (drop the lowest), reproducible by seed."""
    return torch.rand(len(decoder_layers(model)), generator=_gen(seed))
