"""Export a recommender for serving: Hugging Face folders (+ a Llama copy for vLLM when needed)
and an ONNX decoder with KV cache, verified against PyTorch (see docs/export.md)."""
from prunerec.export.onnx_stepper import OnnxStepper, make_session

__all__ = ["OnnxStepper", "make_session"]
