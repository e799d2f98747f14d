"""One engine for a served model, by name: torch, onnx or vllm (vLLM imported only when it serves)."""
from __future__ import annotations

from prunerec.errors import PrunerecError
from prunerec.options import BEAMS
from prunerec.serve.engines import OnnxEngine, TorchEngine
from prunerec.serve.model import ServeModel
from prunerec.serve.options import ServeOptions
from prunerec.serve.worker import Engine


def build_engine(sm: ServeModel, *, max_batch: int = 8, step_delay: float = 0.0, tensor_parallel_size: int = 1,
                 dtype: str = "auto", enforce_eager: bool = False, beams: int = BEAMS,
                 vllm_core: str = "auto", processes: int | None = None) -> Engine:
    if sm.engine == "torch":
        return TorchEngine(sm, max_batch=max_batch, step_delay=step_delay, processes=processes)
    if sm.engine == "onnx":
        return OnnxEngine(sm, max_batch=max_batch, step_delay=step_delay)
    if sm.engine == "vllm":
        from prunerec.serve.vllm_engine import VllmEngine  # vLLM is imported only when it serves

        return VllmEngine(sm, tensor_parallel_size=tensor_parallel_size, dtype=dtype, enforce_eager=enforce_eager,
                          step_delay=step_delay, beams=beams, core=vllm_core)
    raise PrunerecError(f"unknown engine '{sm.engine}'")


def engine_from_options(sm: ServeModel, options: ServeOptions) -> Engine:
    return build_engine(sm, max_batch=options.max_batch, step_delay=options.step_delay,
                        tensor_parallel_size=options.tensor_parallel_size, dtype=options.dtype,
                        enforce_eager=options.enforce_eager, beams=options.beams,
                        vllm_core=options.vllm_core, processes=options.processes)
