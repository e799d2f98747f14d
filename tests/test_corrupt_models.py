"""Corrupt or mismatched model folders are refused before any work, with a message naming the
file: each case through evaluate, compress and export (click's CliRunner; no output left behind)
and serve (a real `python -m prunerec.cli serve` process that must exit 1 while nothing ever
answered /ready with 200; the torch engine, and vLLM for the weight cases vLLM would load)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from prunerec.cli import main
from prunerec.data.catalog import load_catalog
from prunerec.errors import PrunerecError
from prunerec.io import free_port
from prunerec.model.checkpoint import RecModel, validate_model_folder
from prunerec.model.prompt import PromptSettings
from tests.helpers import tiny_model, tiny_tokenizer
from tests.serve.conftest import REPO

ODD_ITEM = 6  # the item whose title case "title lost" rewrites
ODD_TITLE = unicodedata.normalize("NFD", "Café Tycoon")  # e + combining accent: the tokenizer writes é


@pytest.fixture(scope="module")
def good_model(demo_data, tmp_path_factory):
    """A tiny recommender for demo_data's catalog (random weights: only its files matter here)."""
    catalog = load_catalog(demo_data / "items.jsonl")
    tokenizer = tiny_tokenizer(titles=catalog.titles, vocab_size=600)
    model = tiny_model(len(tokenizer), tokenizer.eos_token_id, hidden_size=64, intermediate_size=128,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    out = tmp_path_factory.mktemp("corrupt") / "good"
    RecModel(model, tokenizer, catalog, PromptSettings(template="compact"), {"base": "corrupt-model test"}).save(out)
    return out


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}, indent=2))


def truncate_weights(folder: Path) -> str:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    return f"{path}: truncated (ends at byte"


def widen_mlp_in_config(folder: Path) -> str:
    _edit_config(folder, intermediate_size=256)
    return (f"{folder / 'model.safetensors'}: model.layers.0.mlp.down_proj.weight has shape [64, 128], "
            f"config.json implies [64, 256]")


def break_config_json(folder: Path) -> str:
    path = folder / "config.json"
    path.write_text(path.read_text().replace('"hidden_act": "silu",', '"hidden_act": silu,'))
    return f"{path}: not JSON (line "


def remove_tokenizer(folder: Path) -> str:
    (folder / "tokenizer.json").unlink()
    return f"{folder}: no tokenizer file (tokenizer.json"


def denormalize_a_title(folder: Path) -> str:
    path = folder / "catalog.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[ODD_ITEM]["title"] = ODD_TITLE
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return f"{path}: item {ODD_ITEM}'s title 'Cafe\\u0301 Tycoon' does not survive the tokenizer"


def make_falcon(folder: Path) -> str:
    _edit_config(folder, model_type="falcon")
    return f"{folder / 'config.json'}: model_type 'falcon' is not supported (qwen2, llama)"


CASES = {"truncated weights": truncate_weights, "shapes disagree": widen_mlp_in_config,
         "config not JSON": break_config_json, "no tokenizer file": remove_tokenizer,
         "title lost": denormalize_a_title, "unknown model_type": make_falcon}


def corrupt_copy(good: Path, tmp_path: Path, case: str) -> tuple[Path, str]:
    """A copy of `good` damaged as `case` says, and the message its refusal must hold."""
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    return bad, CASES[case](bad)


def assert_refused(exit_code: int, output: str, message: str) -> None:
    assert exit_code == 1, output
    assert message in output, output
    assert "Traceback" not in output, output


def test_the_good_folder_is_accepted(good_model, demo_data, tmp_path):
    """The control: the commands work on the undamaged folder, so each refusal below comes from the damage."""
    runner = CliRunner()
    for args in (["evaluate", "--model", good_model, "--data", demo_data, "--limit", "2", "--workers", "1",
                  "--grounding", "trie"],
                 ["compress", "--model", good_model, "--data", demo_data, "--out", tmp_path / "c", "--dry-run"],
                 ["export", "--model", good_model, "--out", tmp_path / "e", "--format", "hf", "--no-verify"]):
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("case", CASES)
def test_evaluate_refuses(good_model, demo_data, tmp_path, case):
    bad, message = corrupt_copy(good_model, tmp_path, case)
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["evaluate", "--model", str(bad), "--data", str(demo_data),
                                       "--out", str(report), "--limit", "2", "--workers", "1"])
    assert_refused(result.exit_code, result.output, message)
    assert not report.exists() and not report.with_suffix(".md").exists()


@pytest.mark.parametrize("case", CASES)
def test_compress_refuses_before_creating_out(good_model, demo_data, tmp_path, case):
    bad, message = corrupt_copy(good_model, tmp_path, case)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compress", "--model", str(bad), "--data", str(demo_data), "--out", str(out)])
    assert_refused(result.exit_code, result.output, message)
    assert not out.exists()


@pytest.mark.parametrize("case", CASES)
def test_export_refuses_before_creating_out(good_model, tmp_path, case):
    bad, message = corrupt_copy(good_model, tmp_path, case)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", "--model", str(bad), "--out", str(out), "--format", "hf,onnx"])
    assert_refused(result.exit_code, result.output, message)
    assert not out.exists()


def serve_until_exit(args: list[str], log: Path, timeout: float = 90) -> tuple[int, str, list[int]]:
    """Run `prunerec serve` on a free port until it exits, asking /ready all along: (exit code,
    output, the /ready statuses seen)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    statuses, until = [], time.monotonic() + timeout
    with open(log, "w") as output:
        proc = subprocess.Popen([sys.executable, "-m", "prunerec.cli", "serve", *args, "--port", str(port)],
                                cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None and time.monotonic() < until:
                try:
                    statuses.append(requests.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code)
                except requests.ConnectionError:
                    time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode >= 0, f"serve ran past {timeout} s:\n{text}"
    return proc.returncode, text, statuses


SERVE_CASES = [(case, "torch") for case in CASES] + [("truncated weights", "vllm"), ("shapes disagree", "vllm")]


@pytest.mark.parametrize("case, engine", SERVE_CASES)
def test_serve_refuses_before_ready(good_model, tmp_path, case, engine):
    bad, message = corrupt_copy(good_model, tmp_path, case)
    code, output, statuses = serve_until_exit(["--model", str(bad), "--engine", engine], tmp_path / "serve.log")
    assert_refused(code, output, message)
    assert 200 not in statuses, statuses
    assert "starting vLLM" not in output and "Uvicorn running" not in output, output


# ----------------------------------------------------------------------------- beyond the six cases
def test_a_title_holding_a_special_token_is_refused(good_model, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(good_model, bad)
    rows = [json.loads(line) for line in (bad / "catalog.jsonl").read_text().splitlines()]
    rows[3]["title"] = "Halo<|endoftext|> 5"  # encoded as EOS, which decoding drops
    (bad / "catalog.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    refusal = "item 3's title 'Halo<|endoftext|> 5' does not survive the tokenizer (encodes back as 'Halo 5')"
    with pytest.raises(PrunerecError, match=re.escape(refusal)):
        validate_model_folder(bad)


def _shard(folder: Path) -> dict:
    """Split model.safetensors into two shards with an index, as save_pretrained does for large models."""
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(weights)
    weight_map = {}
    for number, part in enumerate((names[::2], names[1::2]), start=1):
        shard = f"model-0000{number}-of-00002.safetensors"
        save_file({name: weights[name] for name in part}, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def test_sharded_weights_are_checked_shard_by_shard(good_model, tmp_path):
    sharded = tmp_path / "sharded"
    shutil.copytree(good_model, sharded)
    weight_map = _shard(sharded)
    validate_model_folder(sharded, need_catalog=True)
    second = sharded / weight_map["model.norm.weight"]
    second.write_bytes(second.read_bytes()[:-8])
    with pytest.raises(PrunerecError, match=re.escape(f"{second}: truncated")):
        validate_model_folder(sharded)
    second.unlink()
    with pytest.raises(PrunerecError, match=re.escape(f"{second}: missing (model.safetensors.index.json lists it)")):
        validate_model_folder(sharded)
