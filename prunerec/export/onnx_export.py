"""A Qwen2/Llama causal LM as one ONNX decoder with a KV cache (torch.onnx.export, dynamo=True).

Graph inputs and outputs (N = 0 .. num_hidden_layers - 1):

  input_ids                 int64  [batch_size, sequence_length]
  attention_mask            int64  [batch_size, total_sequence_length]   past + new tokens, 0 = padding
  position_ids              int64  [batch_size, sequence_length]
  past_key_values.N.key     float  [batch_size, num_key_value_heads, past_sequence_length, head_dim]
  past_key_values.N.value   (same)
  ->
  logits                    float  [batch_size, sequence_length, vocab_size]
  present.N.key             float  [batch_size, num_key_value_heads, total_sequence_length, head_dim]
  present.N.value           (same)

Every sequence axis is dynamic. The graph is traced with a past of a few tokens, but a past of
length 0 (tensors of shape [batch, kv_heads, 0, head_dim]) is valid input, so the same graph
does the prefill (past empty, the whole left-padded prompt as input_ids) and the decoding steps
(one token each); tests/export checks both against PyTorch.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from prunerec.model.validate import head_dim

OPSET = 18
MODEL_FILE = "model.onnx"
DIMS = ("batch_size", "sequence_length", "past_sequence_length", "total_sequence_length")


def input_names(num_layers: int) -> list[str]:
    return ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def output_names(num_layers: int) -> list[str]:
    return ["logits"] + [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]



class DecoderWithPast(nn.Module):
    """forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present), flat tensors."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)],
                             config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def _example_sizes(config) -> tuple[int, int, int]:
    """Batch, new and past lengths for tracing, all different from each other and from the
    static sizes (kv heads, head_dim), so that torch.export cannot mistake one for another."""
    taken = {0, 1, config.num_key_value_heads, head_dim(config)}
    sizes = []
    n = 2
    while len(sizes) < 3:
        if n not in taken:
            sizes.append(n)
            taken.add(n)
        n += 1
    return sizes[0], sizes[1], sizes[2]


def export_decoder(model, out_dir: str | Path, opset: int = OPSET) -> Path:
    """Write OUT_DIR/model.onnx (+ model.onnx.data) for `model` in its current dtype; returns the path."""
    model = model.eval()
    config = model.config
    if (getattr(config, "use_sliding_window", False)
            and "sliding_attention" in (getattr(config, "layer_types", None) or [])):
        from prunerec.errors import PrunerecError

        raise PrunerecError("models with sliding-window attention layers cannot be exported to ONNX by prunerec")
    n_layers, kv, hd = config.num_hidden_layers, config.num_key_value_heads, head_dim(config)
    batch, seq, past_len = _example_sizes(config)
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
    mask = torch.ones(batch, past_len + seq, dtype=torch.long)
    positions = torch.arange(past_len, past_len + seq).expand(batch, seq).contiguous()
    past = tuple(torch.randn(batch, kv, past_len, hd, generator=generator).to(dtype) for _ in range(2 * n_layers))
    b, s, p, t = DIMS
    dynamic = ({0: b, 1: s}, {0: b, 1: t}, {0: b, 1: s}, tuple({0: b, 2: p} for _ in range(2 * n_layers)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    chatter = io.StringIO()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # e.g. "torchvision is not installed. Skipping torchvision::nms"
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(DecoderWithPast(model), (ids, mask, positions, *past), str(path),
                              input_names=input_names(n_layers), output_names=output_names(n_layers),
                              dynamic_shapes=dynamic, dynamo=True, opset_version=opset, optimize=True,
                              external_data=True)
    finally:
        quiet.setLevel(level)
    return path
