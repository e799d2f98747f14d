"""What `prunerec import` reads: a source opened from a local Hugging Face folder, a hub id or a
llama.cpp ``.gguf`` file (dequantized by transformers, which also undoes llama.cpp's q/k row
permutation), its tokenizer (for a GGUF, BOS/EOS/pad ids aligned with the file's metadata), and a
PEFT LoRA adapter attached to the loaded model.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig

from prunerec.errors import PrunerecError
from prunerec.model.checkpoint import quiet_loading, ready_tokenizer
from prunerec.model.dtypes import NAMES, stored_dtype
from prunerec.model.import_mapping import some_names

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
GGUF_SPECIAL_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                     "pad": "tokenizer.ggml.padding_token_id"}


# --------------------------------------------------------------------------- the source

@dataclass(frozen=True)
class Source:
    ref: str                # as the user gave it
    location: str           # the folder (user-expanded) or hub id transformers loads from
    gguf: Path | None       # the .gguf file, when the source is one
    config: PreTrainedConfig

    @property
    def load_args(self) -> tuple[str, dict]:
        """(folder or hub id, extra from_pretrained kwargs) that transformers loads this source with."""
        return _load_args(self.location, self.gguf)

    def describe(self) -> dict:
        architectures = getattr(self.config, "architectures", None) or [None]
        described = {"ref": self.ref, "format": "gguf" if self.gguf else "hf", "model_type": self.config.model_type,
                     "architecture": architectures[0], "dtype": NAMES[self.storage_dtype()]}
        if self.gguf:
            described["gguf_file_type"] = gguf_metadata(self.gguf)["file_type"]
        return described

    def storage_dtype(self) -> torch.dtype:
        """A GGUF is dequantized, hence float32; a Hugging Face checkpoint keeps its own dtype."""
        return torch.float32 if self.gguf else stored_dtype(self.config)


def _load_args(location: str, gguf: Path | None) -> tuple[str, dict]:
    return (location, {}) if gguf is None else (str(gguf.parent), {"gguf_file": gguf.name})


def open_source(ref: str) -> Source:
    """Read the config of a local folder, a hub id or a .gguf file (no weights yet)."""
    path = Path(ref).expanduser()
    is_local = path.exists() or ref.startswith((".", "/", "~"))
    if is_local and not path.exists():
        raise PrunerecError(f"model not found: {ref}")
    if path.is_file() and path.suffix != ".gguf":
        raise PrunerecError(f"{ref} is a file but not a .gguf: pass a model folder, a hub id or a .gguf file")
    if path.is_dir() and not (path / "config.json").is_file():
        hint = "; pass the .gguf file itself" if any(path.glob("*.gguf")) else ""
        raise PrunerecError(f"{ref} is not a Hugging Face checkpoint (no config.json){hint}")
    location = str(path) if is_local else ref
    gguf = path.resolve() if path.is_file() else None
    folder, extra = _load_args(location, gguf)
    try:
        config = AutoConfig.from_pretrained(folder, **extra)
    except (OSError, ValueError, KeyError) as err:
        raise PrunerecError(f"cannot read the model config of '{ref}': {_first_line(err)}") from None
    return Source(ref, location, gguf, config)


def load_source_model(source: Source):
    """The source model in float32, refused if its weights do not match its own config."""
    folder, extra = source.load_args
    try:
        with quiet_loading(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True,
                                                               **extra)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise PrunerecError(f"cannot load the model '{source.ref}': {_first_line(err)}") from None
    problems = {kind: info.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {kind: sorted(map(str, names)) for kind, names in problems.items() if names}
    if problems:
        listed = "; ".join(f"{kind.replace('_', ' ')}: {some_names(names)}" for kind, names in problems.items())
        raise PrunerecError(f"the weights of '{source.ref}' do not match its config ({listed})")
    return model.eval()


def load_source_tokenizer(source: Source):
    """(tokenizer, fixes): for a GGUF, BOS/EOS/pad are set from the file's metadata where the
    tokenizer transformers builds says otherwise (`fixes` lists those)."""
    folder, extra = source.load_args
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PrunerecError(f"cannot load the tokenizer of '{source.ref}': {_first_line(err)}") from None
    fixes = align_special_tokens(tokenizer, gguf_metadata(source.gguf)["special_token_ids"]) if source.gguf else []
    return ready_tokenizer(tokenizer, source.ref), fixes


def gguf_metadata(path: Path) -> dict:
    """What a GGUF file's metadata states about its tensors' type and its BOS/EOS/pad token ids."""
    from gguf import GGUFReader, LlamaFileType

    fields = GGUFReader(str(path)).fields
    file_type = int(fields["general.file_type"].contents()) if "general.file_type" in fields else None
    return {"file_type": LlamaFileType(file_type).name if file_type in iter(LlamaFileType) else file_type,
            "special_token_ids": {role: int(fields[key].contents())
                                  for role, key in GGUF_SPECIAL_KEYS.items() if key in fields}}


def align_special_tokens(tokenizer, wanted: dict[str, int]) -> list[str]:
    """Set the tokenizer's BOS/EOS/pad to the ids in `wanted` where they differ; the changes made."""
    fixes = []
    for role, token_id in wanted.items():
        have = getattr(tokenizer, f"{role}_token_id")
        if have != token_id:
            token = tokenizer.convert_ids_to_tokens(token_id)
            fixes.append(f"{role}: the tokenizer had {have} ({getattr(tokenizer, f'{role}_token')!r}), "
                         f"the GGUF metadata says {token_id} ({token!r})")
            setattr(tokenizer, f"{role}_token", token)
    return fixes


def special_tokens(tokenizer) -> dict:
    return {role: {"id": getattr(tokenizer, f"{role}_token_id"), "token": getattr(tokenizer, f"{role}_token")}
            for role in GGUF_SPECIAL_KEYS}


# --------------------------------------------------------------------------- adapter

def attach_lora(model, adapter: str):
    """`model` with the PEFT LoRA adapter in folder `adapter` attached (not merged yet), refused with
    the reason if the folder is not a LoRA adapter or does not fit the model exactly."""
    from peft import PeftConfig, PeftModel, PeftType

    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise PrunerecError(f"adapter folder not found: {adapter}")
    if not (folder / "adapter_config.json").is_file():
        raise PrunerecError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHTS):
        raise PrunerecError(f"{adapter} holds no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    try:
        config = PeftConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise PrunerecError(f"cannot read the adapter config in {adapter}: {_first_line(err)}") from None
    if config.peft_type != PeftType.LORA:
        raise PrunerecError(f"{adapter} is a {config.peft_type.value} adapter; only LoRA adapters can be merged")
    config.inference_mode = True
    try:
        # Built in two steps (as PeftModel.from_pretrained does) to see which weights were loaded.
        peft_model = PeftModel(model, config)
        loaded = peft_model.load_adapter(str(folder), "default")
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise PrunerecError(f"the adapter {adapter} does not fit the model: {_first_line(err)}") from None
    unfit = [f"{kind.replace('_', ' ')}: {some_names(names)}" for kind, names in
             (("missing_keys", loaded.missing_keys), ("unexpected_keys", loaded.unexpected_keys)) if names]
    if unfit:
        raise PrunerecError(f"the adapter {adapter} does not fit the model ({'; '.join(unfit)})")
    return peft_model.eval(), config


def adapter_summary(adapter: str, config) -> dict:
    targets = config.target_modules
    return {"path": adapter, "peft_type": config.peft_type.value, "r": config.r, "lora_alpha": config.lora_alpha,
            "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
            "base_model": config.base_model_name_or_path}


def _first_line(err: Exception) -> str:
    """The gist of a library's error: its first line, with the next one where the first only
    introduces a list (e.g. torch's "Error(s) in loading state_dict ...:" before the size mismatch)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]

