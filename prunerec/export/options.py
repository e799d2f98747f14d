"""The options of `prunerec export` and their checks (light to import: the CLI reads its defaults)."""
from __future__ import annotations

from dataclasses import dataclass

from prunerec.errors import PrunerecError
from prunerec.options import BEAMS, check_flags, flag

FORMATS = ("hf", "onnx", "genai")
DEFAULT_FORMATS = ("hf", "onnx")


def split_formats(text: str) -> tuple[str, ...]:
    """--format's comma-separated text as a tuple (lower case, repeats dropped); check() judges it."""
    return tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))


@dataclass(frozen=True)
class ExportOptions:
    """The single declaration of `prunerec export`'s options."""
    formats: tuple[str, ...] = flag(DEFAULT_FORMATS, "Comma-separated: hf (safetensors + model card), onnx (decoder "
                                                     "with KV cache), genai (onnxruntime-genai's model builder; fp32 "
                                                     "or bf16, head_dim a multiple of 16).", cli="--format",
                                    parse=split_formats, default_text=",".join(DEFAULT_FORMATS))
    dtype: str = flag("auto", "Weights dtype (auto: the checkpoint's; bf16: the ONNX graph stays fp32 over "
                              "bf16-rounded weights).", choices=("auto", "fp32", "fp16", "bf16"))
    verify: bool = flag(True, "Skip comparing the exports with PyTorch.", cli="--no-verify", negate=True)
    users: int = flag(4, "Prompts used by the verification.", low=1, cli_range=False)
    data_dir: str | None = flag(None, "Prepared data folder: verify on its test users (default: prompts of random "
                                      "catalog titles).", cli="--data", path="dir", exists=True)
    beams: int = flag(BEAMS, "Beams of the constrained search compared.", low=1, cli_range=False)
    seed: int = flag(0)
    threads: int | None = None
    overwrite: bool = flag(False, "Replace an earlier export's folders in --out (without it they are refused).")

    def check(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise PrunerecError(f"unknown export format(s) {unknown or self.formats!r}; "
                                f"choose from {', '.join(FORMATS)}")
        check_flags(self)
        if "genai" in self.formats and self.dtype != "auto":
            from prunerec.export import genai

            genai.check(self.dtype)


def parse_formats(text: str) -> tuple[str, ...]:
    formats = split_formats(text)
    ExportOptions(formats=formats).check()
    return formats
