"""What every engine shares: the folder to serve, its tokenizer, catalog, prompt settings and
title trie, and the mapping between request histories (ids or titles) and catalog items.

Loading this is fast (no weights), so `prunerec serve` does it before the server starts and
reports a bad folder as a plain error; the engine (weights) loads in the background.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prunerec.data.catalog import Catalog, clean_title
from prunerec.errors import PrunerecError
from prunerec.model.checkpoint import check_checkpoint, validate_model_folder
from prunerec.model.encode import prompt_ids
from prunerec.model.prompt import PromptSettings
from prunerec.model.validate import head_dim
from prunerec.options import ENGINES
from prunerec.search.grounding import free_token_budget
from prunerec.search.title_index import TitleIndex
from prunerec.search.trie import TitleTrie

ONNX_FILE = "model.onnx"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in WEIGHT_FILES)


def resolve_folder(model: str | Path, engine: str) -> Path:
    """The folder an engine reads. DIR may be a checkpoint folder, an export folder (OUT, with
    OUT/hf and OUT/onnx) or, for onnx, OUT/onnx itself."""
    root = Path(model).expanduser()
    if not root.is_dir():
        raise PrunerecError(f"model folder not found: {model}")
    if engine == "onnx":
        for folder in (root, root / "onnx"):
            if (folder / ONNX_FILE).is_file():
                return folder
        raise PrunerecError(f"{model} holds no {ONNX_FILE} (nor onnx/{ONNX_FILE}): write one with "
                            f"`prunerec export --model CHECKPOINT --out OUT --format onnx` and serve OUT")
    for folder in (root, root / "hf"):
        if (folder / "config.json").is_file() and _has_weights(folder):
            return folder
    raise PrunerecError(f"{model} is not a Hugging Face checkpoint (no config.json with weights, nor hf/ "
                        f"from `prunerec export`)")


def torch_weights_folder(folder: Path) -> Path | None:
    """A folder with the same model's PyTorch weights (for L2 grounding beside the onnx engine):
    the folder itself, or the `hf` folder of the same export."""
    for candidate in (folder, folder / "hf", folder.parent / "hf"):
        if (candidate / "config.json").is_file() and _has_weights(candidate):
            return candidate
    return None


class InputError(PrunerecError):
    """A request the service cannot answer; `status` is the HTTP status to return."""

    def __init__(self, message: str, status: int = 422, **extra):
        super().__init__(message)
        self.status, self.extra = status, extra


@dataclass
class ServeModel:
    folder: Path
    engine: str
    tokenizer: object
    config: object
    catalog: Catalog
    settings: PromptSettings
    index: TitleIndex                 # unique titles, their response token ids, the trie
    torch_folder: Path | None         # PyTorch weights of the same model, if any
    first_ids: list[int] = field(default_factory=list)  # title index -> first catalog id
    generations: list[str] = field(default_factory=list)  # title index -> its response as text
    # request threads share the tokenizer; a Rust tokenizer may refuse concurrent use ("Already borrowed")
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def titles(self) -> list[str]:
        """Unique titles in catalog order; index = trie title index."""
        return self.index.titles

    @property
    def responses(self) -> list[list[int]]:
        return self.index.responses

    @property
    def trie(self) -> TitleTrie:
        return self.index.trie

    @property
    def max_history(self) -> int:
        return self.settings.max_history

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def free_tokens(self) -> int:
        """New tokens of a free generation: the token budget of `prunerec evaluate`'s L2 grounding
        (which writes with 4 beams; the service writes greedily)."""
        return free_token_budget(self.trie.max_len)

    def resolve_history(self, history: Sequence[int | str]) -> list[int]:
        """Item ids for ids or exact titles (a title maps to its first id); 422 naming unknown ones."""
        ids, unknown = [], []
        for entry in history:
            if isinstance(entry, bool):
                unknown.append(entry)
            elif isinstance(entry, int):
                if 0 <= entry < len(self.catalog):
                    ids.append(entry)
                else:
                    unknown.append(entry)
            else:
                item = self.catalog.first_id(entry)
                if item is None:
                    item = self.catalog.first_id(clean_title(entry))
                if item is None:
                    unknown.append(entry)
                else:
                    ids.append(item)
        if unknown:
            shown = ", ".join(json.dumps(u) for u in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            raise InputError(f"unknown item ids or titles in history: {shown} (ids are 0..{len(self.catalog) - 1}; "
                             f"titles must match the catalog exactly)", unknown=unknown[:100])
        return ids

    def prompt(self, history_ids: Sequence[int]) -> list[int]:
        """The prompt token ids for the most recent max_history items (exactly as evaluate builds them)."""
        titles = [self.catalog.title(i) for i in history_ids[-self.max_history:]]
        with self.lock:
            return prompt_ids(self.tokenizer, [titles], self.settings)[0]

    def item_of(self, title_index: int) -> tuple[int, str]:
        return self.first_ids[title_index], self.titles[title_index]

    def decode(self, token_ids: Sequence[int]) -> str:
        with self.lock:
            return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def describe(self) -> dict:
        c = self.config
        heads = int(c.num_attention_heads)
        return {"folder": str(self.folder), "catalog_items": len(self.catalog), "catalog_titles": len(self.titles),
                "max_history": self.max_history, "template": self.settings.template,
                "shape": {"layers": int(c.num_hidden_layers), "hidden": int(c.hidden_size), "heads": heads,
                          "kv_heads": int(getattr(c, "num_key_value_heads", None) or heads), "head_dim": head_dim(c),
                          "vocab": int(c.vocab_size)}}


def load_serve_model(model: str | Path, engine: str) -> ServeModel:
    """Tokenizer, config, catalog, settings and trie of the folder `engine` serves, once
    validate_model_folder passed (no weights are loaded: their files are checked, those of the
    L2 fallback's PyTorch weights beside an onnx folder too)."""
    if engine not in ENGINES:
        raise PrunerecError(f"unknown engine '{engine}' (choose from {', '.join(ENGINES)})")
    folder = resolve_folder(model, engine)
    files = validate_model_folder(folder, need_catalog=True, weights=engine != "onnx")
    torch_folder = torch_weights_folder(folder)
    if torch_folder is not None and torch_folder != folder:
        check_checkpoint(str(torch_folder))
    tokenizer, catalog = files.tokenizer, files.catalog
    index = TitleIndex.of_catalog(tokenizer, catalog)
    first_ids = [catalog.first_id(t) for t in index.titles]
    generations = tokenizer.batch_decode(index.responses, skip_special_tokens=True)
    return ServeModel(folder, engine, tokenizer, files.config, catalog, files.settings, index, torch_folder,
                      first_ids, generations)
