"""Constrained beam search (prunerec.search.beam) on ONNX Runtime: the `Stepper` for a decoder
written by `prunerec export --format onnx` (see onnx_export.py for its inputs and outputs).

Prompts are left-padded like TorchStepper's; the KV cache lives in numpy arrays between steps
and is reordered by the parents of the chosen beams before each step.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from prunerec.export.onnx_export import MODEL_FILE
from prunerec.model.batching import pad_rows, positions_of

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def default_providers() -> list[str]:
    """CUDA first where this onnxruntime build has it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def make_session(model: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 exact: bool = False):
    """An onnxruntime InferenceSession for a folder holding model.onnx (or the .onnx file itself).

    threads: intra-op threads (default: torch's thread count, which follows OMP_NUM_THREADS).
    exact: no TF32 on CUDA (the verification compares fp32 logits within 1e-4).
    """
    import onnxruntime as ort

    path = Path(model)
    if path.is_dir():
        path = path / MODEL_FILE
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads() or os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    chosen = [(p, {"use_tf32": "0"}) if exact and p == "CUDAExecutionProvider" else p
              for p in (providers or default_providers())]
    return ort.InferenceSession(str(path), options, providers=chosen)


class OnnxStepper:
    """beam.Stepper on an onnxruntime session of the KV-cache decoder.

    `max_logits` bounds the logits one prefill call may return (rows x prompt width x vocab
    values): longer batches are prefilled a few rows at a time, the caches concatenated.
    """

    def __init__(self, session, pad_id: int, max_logits: int = 1 << 26):
        self.session, self.pad_id, self.max_logits = session, int(pad_id), int(max_logits)
        past = {}
        for node in session.get_inputs():
            match = _PAST.match(node.name)
            if match:
                past[(int(match.group(1)), match.group(2))] = node
        if not past:
            raise ValueError("the ONNX model has no past_key_values.N.key/value inputs")
        self.num_layers = max(i for i, _ in past) + 1
        first = past[(0, "key")]
        self.kv_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.dtype = _NUMPY[first.type]
        self.past_names = [f"past_key_values.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]
        self.present_names = [f"present.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]
        logits = next(o for o in session.get_outputs() if o.name == "logits")
        self.vocab = logits.shape[2] if isinstance(logits.shape[2], int) else None
        self.past = self.mask = self.positions = None

    # ------------------------------------------------------------------ raw forward
    def empty_past(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.dtype) for _ in self.past_names]

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                past: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """One call of the graph: (logits [batch, seq, vocab], present caches)."""
        input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if past is None:
            past = self.empty_past(input_ids.shape[0])
        feed = {"input_ids": input_ids,
                "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
                "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64)}
        feed.update(zip(self.past_names, past))
        outputs = self.session.run(["logits"] + self.present_names, feed)
        return outputs[0], outputs[1:]

    # ------------------------------------------------------------------ Stepper
    def start(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        ids, mask = pad_rows(prompts, self.pad_id, left=True)
        ids, mask, positions = ids.numpy(), mask.numpy(), positions_of(mask).numpy()
        width = ids.shape[1]
        rows = max(1, self.max_logits // max(1, width * (self.vocab or 1)))
        last, chunks = [], []
        for begin in range(0, len(prompts), rows):
            end = begin + rows
            logits, present = self.forward(ids[begin:end], mask[begin:end], positions[begin:end])
            last.append(logits[:, -1].astype(np.float32))
            chunks.append(present)
        self.past = chunks[0] if len(chunks) == 1 else [np.concatenate(parts, axis=0) for parts in zip(*chunks)]
        self.mask, self.positions = mask, positions[:, -1]
        return torch.log_softmax(torch.from_numpy(np.concatenate(last, axis=0)), dim=-1)

    def advance(self, parents: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        index = np.asarray(parents, dtype=np.int64)
        past = [p[index] for p in self.past]
        self.mask = np.concatenate([self.mask[index], np.ones((len(index), 1), dtype=np.int64)], axis=1)
        self.positions = self.positions[index] + 1
        logits, self.past = self.forward(np.asarray(tokens, dtype=np.int64)[:, None], self.mask,
                                         self.positions[:, None], past)
        return torch.log_softmax(torch.from_numpy(logits[:, -1].astype(np.float32)), dim=-1)
