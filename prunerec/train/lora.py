"""What a fine-tuning run trains: every weight, LoRA adapters, or only the top layers.

LoRA (Hu et al. 2021) adds a low-rank update scale * B @ A beside each linear layer of the
decoder layers it adapts (q/k/v/o and the MLP's gate/up/down) and trains only A and B; the base
weights stay frozen, so they need no gradients and no optimizer moments. `merge_lora` folds the
updates into the base weights, which leaves a stock model with the original shapes.

`freeze_below` trains only the top layers. Autograd computes no gradient for a tensor that
depends on no trainable parameter, so layers below the lowest trained one run forward only:
they keep no activations for the backward pass and cost a third of a trained layer. The
embedding table is frozen with them (with tied embeddings it is also the LM head), or the
gradient would have to flow back through every layer to reach it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

ADAPTED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraLinear(nn.Module):
    """y = base(x) + scale * (x @ A^T) @ B^T, B starting at zero (the model starts unchanged)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t()) @ self.lora_b.t() * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        self.base.weight += (self.lora_b.float() @ self.lora_a.float() * self.scale).to(self.base.weight.dtype)
        return self.base


def decoder_layers(model) -> nn.ModuleList:
    return model.model.layers


def top_layers(model, n_layers: int) -> range:
    """The indices of the top `n_layers` decoder layers (all of them for 0)."""
    total = len(decoder_layers(model))
    return range(total - min(n_layers, total) if n_layers else 0, total)


def add_lora(model, rank: int, alpha: float, layers: range) -> int:
    """Freeze every weight and wrap the linear layers of `layers` with LoRA adapters, in place;
    returns the number of trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    for index in layers:
        for block in decoder_layers(model)[index].modules():
            for name in ADAPTED:
                child = getattr(block, name, None)
                if isinstance(child, nn.Linear):
                    setattr(block, name, LoraLinear(child, rank, alpha))
    return trainable_parameters(model)


def merge_lora(model) -> int:
    """Fold every adapter into its base weight and put the plain nn.Linear back; returns how
    many were merged. The model is then stock again (same state-dict keys as before `add_lora`)."""
    merged = 0
    for block in list(model.modules()):
        for name, child in list(block.named_children()):
            if isinstance(child, LoraLinear):
                setattr(block, name, child.merged())
                merged += 1
    for p in model.parameters():
        p.requires_grad_(True)
    return merged


def freeze_below(model, layers: range) -> int:
    """Train only the decoder layers in `layers` and the final norm; returns the trainable count."""
    for p in model.parameters():
        p.requires_grad_(False)
    for index in layers:
        for p in decoder_layers(model)[index].parameters():
            p.requires_grad_(True)
    for p in model.model.norm.parameters():
        p.requires_grad_(True)
    return trainable_parameters(model)


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
