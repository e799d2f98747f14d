"""Checks of a model folder's files, each failure a PrunerecError naming the file and what is wrong.

Cheap by design (commands run them before any work): JSON files are parsed, the weights are
judged by their safetensors headers alone (sizes and shapes against config.json, never loaded),
and the catalog's titles are tokenized once. prunerec.model.checkpoint.validate_model_folder
runs them all.
"""
from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from prunerec.errors import PrunerecError
from prunerec.model.prompt import parse_response, response_ids

SUPPORTED_TYPES = ("qwen2", "llama")
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit: a larger "length" means it is not one
# vocabulary files AutoTokenizer can build a Qwen2 or Llama tokenizer from
TOKENIZER_VOCABULARIES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))
# buffers that old transformers versions saved and current ones ignore on load
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def read_json(path: Path):
    """The parsed JSON of `path`; a PrunerecError with line and column when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PrunerecError(f"{path}: not JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except UnicodeDecodeError as err:
        raise PrunerecError(f"{path}: not UTF-8 text (byte {err.start})") from None


def read_config(folder: Path):
    """config.json as a transformers config, refused unless it is JSON of a supported model_type."""
    from transformers import AutoConfig

    path = folder / "config.json"
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise PrunerecError(f"{path}: not a JSON object")
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise PrunerecError(f"{path}: model_type {model_type!r} is not supported ({', '.join(SUPPORTED_TYPES)})")
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise PrunerecError(f"{path}: {err}") from None


def check_tokenizer_files(folder: Path) -> None:
    if not any(all((folder / name).is_file() for name in names) for names in TOKENIZER_VOCABULARIES):
        raise PrunerecError(f"{folder}: no tokenizer file (tokenizer.json, tokenizer.model, or vocab.json with "
                            f"merges.txt)")
    if not (folder / "tokenizer_config.json").is_file():
        raise PrunerecError(f"{folder}: no tokenizer_config.json (the tokenizer's class and special tokens)")
    read_json(folder / "tokenizer_config.json")


# ----------------------------------------------------------------------------- weights
def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the header of a safetensors file, refused when the file is
    shorter than its header says (truncated) or safetensors cannot open it."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        if len(prefix) < 8 or length > MAX_HEADER_BYTES:
            raise PrunerecError(f"{path}: not a safetensors file ({size} bytes, no valid header length)")
        if 8 + length > size:
            raise PrunerecError(f"{path}: truncated (ends at byte {size}, its header says {8 + length} for the "
                                f"header alone)")
        header = _parse_header(path, stream.read(length))
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    end = 8 + length + max((_data_end(entry) for entry in tensors.values()), default=0)
    if size < end:
        raise PrunerecError(f"{path}: truncated (ends at byte {size}, its header says {end})")
    _open_check(path)
    return {name: list(entry["shape"]) for name, entry in tensors.items()}


def _parse_header(path: Path, raw: bytes) -> dict:
    try:
        header = json.loads(raw)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise PrunerecError(f"{path}: not a safetensors file (its header is not a JSON object)")
    return header


def _data_end(entry) -> int:
    try:
        return int(entry["data_offsets"][1])
    except (TypeError, KeyError, IndexError, ValueError):
        return 0  # a malformed entry: safe_open names the problem


def _open_check(path: Path) -> None:
    """safetensors' own validation of the header (offsets, dtypes, sizes); maps, reads no data."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as err:  # noqa: BLE001 - safetensors raises its own exception types
        raise PrunerecError(f"{path}: not a valid safetensors file ({err})") from None


def stored_shapes(folder: Path) -> tuple[dict[str, tuple[list[int], Path]], Path]:
    """Tensor name -> (shape, file holding it) of a folder's safetensors weights, one file or
    shards, and the file that stands for them all (model.safetensors or its index)."""
    if (folder / SAFETENSORS_INDEX).is_file():
        return _sharded_shapes(folder), folder / SAFETENSORS_INDEX
    if (folder / SAFETENSORS_FILE).is_file():
        path = folder / SAFETENSORS_FILE
        return {name: (shape, path) for name, shape in safetensors_shapes(path).items()}, path
    if any(folder.glob("pytorch_model*.bin")):
        raise PrunerecError(f"{folder}: weights in pytorch_model.bin only; prunerec reads safetensors: convert the "
                            f"folder with `prunerec import --model {folder} --out NEW_FOLDER`")
    raise PrunerecError(f"{folder}: no weights ({SAFETENSORS_FILE} or {SAFETENSORS_INDEX})")


def _sharded_shapes(folder: Path) -> dict[str, tuple[list[int], Path]]:
    index_path = folder / SAFETENSORS_INDEX
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise PrunerecError(f"{index_path}: no weight_map (tensor name -> shard file)")
    found: dict[str, tuple[list[int], Path]] = {}
    for shard_name in sorted(set(weight_map.values())):
        shard = folder / str(shard_name)
        if not shard.is_file():
            raise PrunerecError(f"{shard}: missing ({SAFETENSORS_INDEX} lists it)")
        found.update((name, (shape, shard)) for name, shape in safetensors_shapes(shard).items())
    for name, shard_name in weight_map.items():
        if name not in found or found[name][1] != folder / str(shard_name):
            raise PrunerecError(f"{folder / str(shard_name)}: no tensor {name} ({SAFETENSORS_INDEX} puts it there)")
    return found


def head_dim(config) -> int:
    """Per attention head (config.head_dim, or hidden_size / heads where a config has none)."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def expected_shapes(config) -> dict[str, list[int]]:
    """Every weight the stock Qwen2/Llama class builds from `config`, with its shape (embedding
    rows = vocab_size, padding rows past the tokenizer included; lm_head absent when tied)."""
    hidden, mlp, vocab = int(config.hidden_size), int(config.intermediate_size), int(config.vocab_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    q_width, kv_width = heads * head_dim(config), kv_heads * head_dim(config)
    biased = _biased_projections(config)
    layer = {"self_attn.q_proj": [q_width, hidden], "self_attn.k_proj": [kv_width, hidden],
             "self_attn.v_proj": [kv_width, hidden], "self_attn.o_proj": [hidden, q_width],
             "mlp.gate_proj": [mlp, hidden], "mlp.up_proj": [mlp, hidden], "mlp.down_proj": [hidden, mlp]}
    shapes = {"model.embed_tokens.weight": [vocab, hidden], "model.norm.weight": [hidden]}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = [vocab, hidden]
    for i in range(int(config.num_hidden_layers)):
        prefix = f"model.layers.{i}."
        for name, shape in layer.items():
            shapes[f"{prefix}{name}.weight"] = shape
            if name.split(".")[1] in biased:
                shapes[f"{prefix}{name}.bias"] = shape[:1]
        shapes[f"{prefix}input_layernorm.weight"] = shapes[f"{prefix}post_attention_layernorm.weight"] = [hidden]
    return shapes


def _biased_projections(config) -> set[str]:
    """Qwen2 always biases q/k/v and nothing else; Llama biases what its config says."""
    if config.model_type == "qwen2":
        return {"q_proj", "k_proj", "v_proj"}
    biased = {"q_proj", "k_proj", "v_proj", "o_proj"} if getattr(config, "attention_bias", False) else set()
    if getattr(config, "mlp_bias", False):
        biased |= {"gate_proj", "up_proj", "down_proj"}
    return biased


def check_weights(folder: Path, config) -> None:
    """Every tensor of the weights has the shape config.json implies; none is missing or extra."""
    shapes, weights_file = stored_shapes(folder)
    stored = {name: entry for name, entry in shapes.items() if not name.endswith(IGNORED_SUFFIXES)}
    try:
        expected = expected_shapes(config)
    except (TypeError, ValueError, ZeroDivisionError) as err:
        raise PrunerecError(f"{folder / 'config.json'}: cannot tell the weight shapes ({err})") from None
    if config.tie_word_embeddings and "lm_head.weight" in stored:
        expected["lm_head.weight"] = expected["model.embed_tokens.weight"]  # tied, saved anyway
    problems = [f"{path}: {name} has shape {shape}, config.json implies {expected[name]}"
                for name, (shape, path) in stored.items() if name in expected and shape != expected[name]]
    problems += [f"{path}: {name} is no weight of the model config.json describes"
                 for name, (_, path) in stored.items() if name not in expected]
    problems += [f"{weights_file}: no tensor {name} (config.json implies {shape})"
                 for name, shape in expected.items() if name not in stored]
    if problems:
        more = f" (and {len(problems) - 1} more disagreements with config.json)" if len(problems) > 1 else ""
        raise PrunerecError(problems[0] + more)


def check_model_files(folder: Path, weights: bool = True):
    """config.json, the tokenizer files and (with `weights`) the safetensors weights of a local
    folder; returns its config."""
    config = read_config(folder)
    check_tokenizer_files(folder)
    if weights:
        check_weights(folder, config)
    return config


# ----------------------------------------------------------------------------- catalog
def check_catalog_titles(tokenizer, titles: Sequence[str], path: Path, vocab_size: int) -> None:
    """Each title must come back from the token ids it is written as (prunerec.model.prompt's
    response): the served text of a title that decodes differently maps to no item, and two
    titles with the same ids could not be told apart. Ids must also have an embedding row."""
    unique = list(dict.fromkeys(titles))
    responses = response_ids(tokenizer, unique)
    decoded = [parse_response(text) for text in tokenizer.batch_decode(responses, skip_special_tokens=True)]
    wrong = [(title, back) for title, back in zip(unique, decoded) if back != title]
    if wrong:
        title, back = wrong[0]
        more = f" ({len(wrong) - 1} more titles do not either)" if len(wrong) > 1 else ""
        raise PrunerecError(f"{path}: item {list(titles).index(title)}'s title {_shown(title, back)} does not "
                            f"survive the tokenizer (encodes back as {_shown(back, title)}){more}")
    past = next(((title, max(ids)) for title, ids in zip(unique, responses) if max(ids) >= vocab_size), None)
    if past is not None:
        raise PrunerecError(f"{path}: title {past[0]!r} encodes to token id {past[1]}, past the {vocab_size} "
                            f"embedding rows of config.json's vocab_size")


def _shown(text: str, other: str) -> str:
    """`text` quoted; escaped when it reads the same as `other` (another Unicode normalization)."""
    same_look = unicodedata.normalize("NFC", text) == unicodedata.normalize("NFC", other)
    return ascii(text) if same_look else repr(text)
