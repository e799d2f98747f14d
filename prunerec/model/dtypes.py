"""Which dtype a checkpoint is stored in and which every step computes in.

The decision, for a checkpoint of any dtype (a fine-tuned Qwen2 usually comes in bfloat16):
- Computation is float32 everywhere: training, head/hidden/MLP scoring, distillation,
  evaluation and every serving engine (torch, onnx, and vLLM's ``--dtype auto``). Widening
  bf16 to float32 is exact, so every engine sees the same weights and does the same float32
  arithmetic, and rankings agree across engines; CPUs without bf16 units gain nothing from
  bf16 arithmetic anyway.
- The one exception is asked for: ``train --precision bf16`` runs the training steps under
  bf16 autocast (matrix products in bf16, float32 master weights, optimizer and loss). Only
  the training's path changes: what it writes is float32 weights like any other run.
- Storage keeps the dtype the checkpoint came in: training or compressing a bf16 model
  writes bf16 safetensors (half the bytes). Saving rounds the float32 weights in memory to
  that dtype too, so what is evaluated after a save is exactly what is on disk (and what a
  ``--resume`` would load).
- Exports are written in ``export --dtype`` (default: the checkpoint's storage dtype); ONNX
  graphs compute in float32 over the stored values.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

COMPUTE_DTYPE = torch.float32
NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_FROM_STRING = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def stored_dtype(config) -> torch.dtype:
    """The dtype a checkpoint's config says its weights are stored in (float32 when unrecorded
    or unknown)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, torch.dtype):
        return value if value in NAMES else torch.float32
    return _FROM_STRING.get(str(value).replace("torch.", ""), torch.float32)


def vllm_dtype(requested: str) -> str:
    """vLLM's ``--dtype``: ``auto`` is float32 (what the torch reference computes in), whatever
    the checkpoint is stored in; an explicit choice is the caller's."""
    return "float32" if requested == "auto" else requested


@contextlib.contextmanager
def stored_as(model, dtype: torch.dtype | None):
    """Inside: `model` in `dtype` (for save_pretrained). After: back in its compute dtype, with
    the values rounded to `dtype` (on purpose: memory then matches the saved file)."""
    compute = next(model.parameters()).dtype
    if dtype is None or dtype == compute:
        yield model
        return
    recorded = getattr(model.config, "dtype", None)
    model.to(dtype)
    try:
        yield model
    finally:
        model.to(compute)
        model.config.dtype = recorded  # save_pretrained records the saved dtype there


PRECISIONS = ("fp32", "bf16")
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def autocast(precision: str, device: torch.device):
    """The context a training step runs in: nothing for fp32, bf16 autocast for bf16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def cpu_has_bf16_units(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU has bf16 matrix instructions (AVX512-BF16 or AMX); None where the
    kernel does not say (no /proc/cpuinfo)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if not path.is_file():
            return None
        cpuinfo = path.read_text()
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return any(f in flags for f in _BF16_CPU_FLAGS)


def precision_warning(precision: str, device: torch.device, cpuinfo: str | None = None) -> str | None:
    """Why bf16 will not pay on this device, or None."""
    if precision != "bf16":
        return None
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16 support: --precision bf16 " \
                                                            "will be slow; use fp32"
    if device.type == "cpu" and cpu_has_bf16_units(cpuinfo) is False:
        return ("this CPU has no bf16 instructions (avx512_bf16 or amx_bf16): --precision bf16 emulates them "
                "and will be slower than fp32")
    return None
