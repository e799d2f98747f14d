"""How concentrated MLP activations are (the long-tail analysis behind Stage II; pure computation)."""

from __future__ import annotations

import math

import torch

from prunerec.compress.hooks import collect_activations, decoder_layers, up_projections

__all__ = ["mlp_activation_share"]


def mlp_activation_share(model, batches, percents=(1, 5, 10, 20, 50), per_token: bool = True) -> torch.Tensor:
    """Share of total |up_proj output| held by the top k% channels, per layer: [L, len(percents)].

    ``per_token``: shares are taken per token (its own top channels) and averaged over real
    tokens; otherwise |activation| is summed per channel over all tokens first.
    """
    n_inter = model.config.intermediate_size
    ks = [max(1, math.ceil(p / 100 * n_inter)) for p in percents]
    sums = [torch.zeros(len(ks)) for _ in decoder_layers(model)]
    mass = [torch.zeros(n_inter) for _ in decoder_layers(model)]
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

    collect_activations(model, batches, up_projections(model), acc, output=True, desc="MLP activation share")
    if per_token:
        return torch.stack([s / max(n, 1) for s, n in zip(sums, n_tok)])
    out = []
    for m in mass:
        cum = m.sort(descending=True).values.cumsum(0)
        out.append(cum[[k - 1 for k in ks]] / cum[-1].clamp_min(1e-30))
    return torch.stack(out)
