"""The options of `prunerec export` and their checks (light to import: the CLI reads its defaults)."""
from __future__ import annotations

from dataclasses import dataclass

from prunerec.errors import PrunerecError
from prunerec.options import BEAMS

FORMATS = ("hf", "onnx", "genai")
DEFAULT_FORMATS = ("hf", "onnx")


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...] = DEFAULT_FORMATS
    dtype: str = "auto"  # auto: the checkpoint's storage dtype
    verify: bool = True
    users: int = 4
    data_dir: str | None = None
    beams: int = BEAMS
    seed: int = 0
    threads: int | None = None
    overwrite: bool = False  # replace an earlier export's folders in OUT

    def check(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise PrunerecError(f"unknown export format(s) {unknown or self.formats!r}; "
                                f"choose from {', '.join(FORMATS)}")
        from prunerec.export import genai, hf

        if self.dtype not in hf.DTYPES and self.dtype != "auto":
            raise PrunerecError(f"unknown dtype '{self.dtype}'; choose from auto, {', '.join(hf.DTYPES)}")
        if self.users < 1:
            raise PrunerecError("--users must be at least 1")
        if self.beams < 1:
            raise PrunerecError("--beams must be at least 1")
        if "genai" in self.formats and self.dtype != "auto":
            genai.check(self.dtype)


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    ExportOptions(formats=formats).check()
    return formats
