"""A beam-search stepper that keeps each prompt's KV cache once per user, not once per beam.

With 20 beams a user's prompt (often 100+ tokens) is far longer than the titles being written,
so a stock KV cache spends most of a decode step copying prompt keys and values: reordered for
every beam after every step, grown by concatenation, and repeated for every query head of a
KV group. Here the prompt cache is written once by a stock prefill, and the decode steps run the
model's own modules (norms, projections, rotary embedding, MLP, LM head) with an attention that
reads the prompt keys of the row's user and the row's own generated keys: only the short
generated part is reordered. The logits equal the stock model's up to float rounding.

Rows of a user must be contiguous and users in the order of the prompts (constrained beam search
appends them that way); `supports` says which models it handles.
"""
from __future__ import annotations

import sys

import torch

from prunerec.search.beam import TorchStepper


def supports(model) -> bool:
    """Qwen2 / Llama decoders with full attention everywhere (no sliding window)."""
    config = model.config
    if config.model_type not in ("qwen2", "llama") or getattr(config, "use_sliding_window", False):
        return False
    layer_types = getattr(config, "layer_types", None) or ()
    return all(t == "full_attention" for t in layer_types)


class SharedPromptStepper(TorchStepper):
    """The prefill is TorchStepper's; decoding attends to [prompt of the row's user | row's tokens]."""

    @torch.no_grad()
    def start(self, prompts):
        logprobs = super().start(prompts)
        cache, self.cache = self.cache, None
        self.prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]  # [users, kv, P, hd]
        self.prompt_pad = (self.mask == 0)[:, None, None, :]  # [users, 1, 1, P]
        self.user_of_row = torch.arange(len(prompts))
        self.next_position = self.positions + 1  # one per user: every beam of a user has the same length
        self.generated = None  # per layer (keys, values) [rows, kv, steps, hd]
        self.step = 0
        return logprobs

    @torch.no_grad()
    def advance(self, parents, tokens):
        index = torch.tensor(parents, dtype=torch.long)
        self.user_of_row = self.user_of_row[index]
        if self.generated is not None:
            self.generated = [(k[index], v[index]) for k, v in self.generated]
        base = self.model.model
        hidden = base.embed_tokens(torch.tensor(tokens).unsqueeze(1))
        positions = (self.next_position[self.user_of_row] + self.step).unsqueeze(1)
        cos, sin = base.rotary_emb(hidden, positions)
        layout = _UserLayout(self.user_of_row)
        new_generated = []
        for i, layer in enumerate(base.layers):
            residual = hidden
            attn_out, kv = self._attention(layer.self_attn, layer.input_layernorm(hidden), cos, sin, i, layout)
            new_generated.append(kv)
            hidden = residual + attn_out
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        self.generated = new_generated
        self.step += 1
        logits = self.model.lm_head(base.norm(hidden)[:, -1])
        return torch.log_softmax(logits.float(), dim=-1)

    def _attention(self, attn, hidden, cos, sin, layer_index, layout):
        rows, hd, groups = hidden.shape[0], attn.head_dim, attn.num_key_value_groups
        query = attn.q_proj(hidden).view(rows, 1, -1, hd).transpose(1, 2)
        key = attn.k_proj(hidden).view(rows, 1, -1, hd).transpose(1, 2)
        value = attn.v_proj(hidden).view(rows, 1, -1, hd).transpose(1, 2)
        rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        query, key = rotate(query, key, cos, sin)
        if self.generated is not None:
            old_k, old_v = self.generated[layer_index]
            key, value = torch.cat([old_k, key], dim=2), torch.cat([old_v, value], dim=2)
        n_kv = key.shape[1]
        # [rows, kv, groups, hd]: the query heads of a KV group side by side
        query = query.reshape(rows, n_kv, groups, hd)
        prompt_k, prompt_v = self.prompt_kv[layer_index]
        users = layout.users
        prompt_k, prompt_v, pad = prompt_k[users], prompt_v[users], self.prompt_pad[users]
        # prompt part, per user: [users, kv, beams x groups, P]
        by_user = layout.to_users(query).permute(0, 2, 1, 3, 4).reshape(len(users), n_kv, -1, hd)
        prompt_scores = (by_user @ prompt_k.transpose(2, 3)) * attn.scaling
        prompt_scores = prompt_scores.masked_fill(pad, float("-inf"))
        prompt_scores = layout.to_rows(prompt_scores.view(len(users), n_kv, layout.width, groups, -1)
                                       .permute(0, 2, 1, 3, 4))  # [rows, kv, groups, P]
        own_scores = (query @ key.transpose(2, 3)) * attn.scaling  # [rows, kv, groups, steps]
        weights = torch.softmax(torch.cat([prompt_scores, own_scores], dim=-1), dim=-1, dtype=torch.float32)
        weights = weights.to(query.dtype)
        n_prompt = prompt_scores.shape[-1]
        prompt_w = layout.to_users(weights[..., :n_prompt]).permute(0, 2, 1, 3, 4).reshape(len(users), n_kv, -1,
                                                                                             n_prompt)
        from_prompt = layout.to_rows((prompt_w @ prompt_v).view(len(users), n_kv, layout.width, groups, hd)
                                     .permute(0, 2, 1, 3, 4))
        out = from_prompt + weights[..., n_prompt:] @ value  # [rows, kv, groups, hd]
        return attn.o_proj(out.reshape(rows, 1, -1)), (key, value)


class _UserLayout:
    """Rows (contiguous per user) <-> a [users, width, ...] layout padded to the most beams of a user."""

    def __init__(self, user_of_row: torch.Tensor):
        self.users, counts = torch.unique_consecutive(user_of_row, return_counts=True)
        self.width = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(user_of_row)) - torch.repeat_interleave(starts, counts)
        self.flat = torch.repeat_interleave(torch.arange(len(self.users)), counts) * self.width + slot
        self.dense = bool(counts.min() == self.width)

    def to_users(self, rows: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return rows.view(len(self.users), self.width, *rows.shape[1:])
        out = rows.new_zeros((len(self.users) * self.width, *rows.shape[1:]))
        out[self.flat] = rows
        return out.view(len(self.users), self.width, *rows.shape[1:])

    def to_rows(self, by_user: torch.Tensor) -> torch.Tensor:
        flat = by_user.reshape(len(self.users) * self.width, *by_user.shape[2:])
        return flat if self.dense else flat[self.flat]


def make_stepper(model, pad_id: int) -> TorchStepper:
    """The shared-prompt stepper where it applies, the stock-cache one otherwise."""
    return SharedPromptStepper(model, pad_id) if supports(model) else TorchStepper(model, pad_id)
