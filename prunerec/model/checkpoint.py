"""A recommender checkpoint: a stock Hugging Face Qwen2 folder plus the catalog it recommends from.

Files beside the usual config.json / model.safetensors / tokenizer files:
  catalog.jsonl   the items ({"item_id", "title"}) the model was trained for
  prunerec.json   prompt settings (template, category, max_history, cutoff) and provenance
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prunerec.data.catalog import Catalog, DataError, load_catalog
from prunerec.errors import PrunerecError
from prunerec.io import write_json, write_jsonl
from prunerec.model.dtypes import COMPUTE_DTYPE, stored_as, stored_dtype
from prunerec.model.prompt import PromptSettings
from prunerec.model.validate import SUPPORTED_TYPES, check_catalog_titles, check_model_files

SETTINGS_FILE = "prunerec.json"
CATALOG_FILE = "catalog.jsonl"


@dataclass
class RecModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    catalog: Catalog | None
    settings: PromptSettings
    info: dict
    storage_dtype: torch.dtype | None = None  # weights on disk (None: the model's own dtype)

    def save(self, out: str | Path) -> None:
        """Write everything into `out` (the caller makes `out` atomic, e.g. with io.atomic_dir),
        the weights in `storage_dtype` (see prunerec.model.dtypes)."""
        out = Path(out)
        with stored_as(self.model, self.storage_dtype):
            self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        self.save_recommender_files(out)

    def save_recommender_files(self, out: str | Path, **extra) -> None:
        """catalog.jsonl and prunerec.json (prompt settings, provenance, `extra`): what makes a model
        folder a recommender, beside any weights format."""
        out = Path(out)
        if self.catalog is not None:
            write_jsonl(out / CATALOG_FILE, ({"item_id": i, "title": t} for i, t in enumerate(self.catalog.titles)))
        write_json(out / SETTINGS_FILE, {"prompt": self.settings.to_json(), **self.info, **extra})


def _is_local(ref: str) -> bool:
    return Path(ref).exists() or ref.startswith((".", "/", "~"))


def check_checkpoint(ref: str, weights: bool = True):
    """Fail early, with a clear message, if `ref` is not a loadable Qwen2-family checkpoint;
    returns its config. A local folder's config.json, tokenizer files and (with `weights`)
    safetensors headers are checked (prunerec.model.validate); nothing is loaded."""
    if not _is_local(ref):
        return _hub_config(ref)
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise PrunerecError(f"model folder not found: {ref}")
    if not (path / "config.json").is_file():
        raise PrunerecError(f"{ref} is not a Hugging Face checkpoint (no config.json)")
    return check_model_files(path, weights)


def _hub_config(ref: str):
    try:
        config = AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as err:
        raise PrunerecError(f"cannot load model config from '{ref}': {err}") from None
    if config.model_type not in SUPPORTED_TYPES:
        raise PrunerecError(f"{ref} is a '{config.model_type}' model; prunerec works on Qwen2-family causal LMs")
    return config


@dataclass
class ModelFolder:
    """What validate_model_folder read: everything of a checkpoint but its weights."""
    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    catalog: Catalog | None
    settings: PromptSettings
    info: dict


def validate_model_folder(ref: str | Path, need_catalog: bool = False, weights: bool = True) -> ModelFolder:
    """Every check a model folder (or hub id) gets before a command works on it: its files
    (check_checkpoint), prunerec.json and catalog.jsonl, the tokenizer, and the round trip of
    every catalog title through the tokenizer. A PrunerecError names the file at fault."""
    config = check_checkpoint(str(ref), weights)
    folder = Path(str(ref)).expanduser()
    settings, info, catalog = read_model_files(folder)
    if need_catalog and catalog is None:
        raise PrunerecError(f"{ref} has no {CATALOG_FILE}: a recommender folder (from prunerec train, compress "
                            f"or export) holds the items it recommends")
    tokenizer = load_tokenizer(ref)
    if catalog is not None:
        check_catalog_titles(tokenizer, catalog.titles, folder / CATALOG_FILE, int(config.vocab_size))
    return ModelFolder(config, tokenizer, catalog, settings, info)


def load_tokenizer(ref: str | Path) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(ref))
    except Exception as err:  # noqa: BLE001 - the tokenizers library raises plain Exception on a bad file
        raise PrunerecError(f"cannot load the tokenizer of {ref}: {err}") from None
    return ready_tokenizer(tokenizer, ref)


def load_rec_model(ref: str, *, dtype: torch.dtype = COMPUTE_DTYPE, need_catalog: bool = False) -> RecModel:
    """Load a local folder or a hub id (where there is internet) with its tokenizer and catalog,
    the weights in `dtype` once validate_model_folder passed; saving writes them back in the
    dtype the checkpoint was stored in."""
    files = validate_model_folder(ref, need_catalog=need_catalog)
    try:
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype)
    except (OSError, ValueError) as err:
        raise PrunerecError(f"cannot load model from '{ref}': {err}") from None
    model.eval()
    return RecModel(model, files.tokenizer, files.catalog, files.settings, files.info, stored_dtype(files.config))


def read_model_files(folder: Path) -> tuple[PromptSettings, dict, Catalog | None]:
    """The prompt settings (and the rest) of prunerec.json and the catalog of a model folder,
    defaults and None where a file is absent (a hub id, a plain HF checkpoint)."""
    settings, info, catalog = PromptSettings(), {}, None
    if (folder / SETTINGS_FILE).is_file():
        try:
            info = json.loads((folder / SETTINGS_FILE).read_text())
            settings = PromptSettings.from_json(info.pop("prompt", {}))
        except ValueError as err:  # json.JSONDecodeError is one
            raise PrunerecError(f"{folder / SETTINGS_FILE}: {err}") from None
    if (folder / CATALOG_FILE).is_file():
        try:
            catalog = load_catalog(folder / CATALOG_FILE)
        except DataError as err:
            raise PrunerecError(f"the model's catalog is broken: {err}") from None
    return settings, info, catalog


def ready_tokenizer(tokenizer, where) -> PreTrainedTokenizerBase:
    """Refuse a tokenizer without EOS (responses could not end); pad with EOS where it has no pad."""
    if tokenizer.eos_token_id is None:
        raise PrunerecError(f"the tokenizer of {where} has no EOS token; responses cannot be terminated")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def quiet_loading():
    """Hide transformers' per-load progress bars (pipelines reload models several times)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
