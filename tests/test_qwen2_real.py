"""A user's own Qwen2 checkpoint through every command: a small model of the Qwen2-0.5B family
that keeps what a real one brings (the real Qwen2 tokenizer, the full 151,936-row vocabulary
padded past its 151,646 tokens, bfloat16 weights on disk, tied embeddings, rope_theta 1e6,
EOS 151643) goes train (Alpaca template) -> evaluate -> compress -> export -> serve, through
the CLI, on a slice of real Amazon Games titles; vLLM and torch serve identical rankings,
equal to `prunerec evaluate`'s."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM

from prunerec.cli import main
from prunerec.data.catalog import load_dataset, write_dataset
from prunerec.data.subcatalog import restrict_to_top
from tests.serve.conftest import evaluate_rankings, ready_server

SHARED = Path(__file__).resolve().parents[2] / "shared"
QWEN2 = SHARED / "models" / "qwen2-0.5b"
GAMES = SHARED / "data" / "amazon-games"
VOCAB, TOKENS, EOS = 151_936, 151_646, 151_643
# head_dim 32: one of vLLM's CPU attention head sizes
SHAPE = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
             intermediate_size=256, initializer_range=0.3, layer_types=["full_attention"] * 2, max_window_layers=2)

pytestmark = pytest.mark.skipif(not (QWEN2 / "tokenizer.json").is_file() or not GAMES.is_dir(),
                                reason="needs ../shared (Qwen2 tokenizer, Amazon Games)")


def _user_checkpoint(out: Path) -> Path:
    """What a user brings: a plain Hugging Face folder (no catalog), bf16 weights."""
    config = AutoConfig.from_pretrained(QWEN2, **SHAPE)
    assert (config.vocab_size, config.eos_token_id, config.rope_parameters["rope_theta"]) == (VOCAB, EOS, 1e6)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(QWEN2).save_pretrained(out)
    return out


def _games_slice(out: Path, n_items=300) -> Path:
    catalog, splits = restrict_to_top(load_dataset(GAMES), n_items)
    write_dataset(out, catalog, {"train": splits["train"][:240], "valid": splits["valid"][:16],
                                 "test": splits["test"][:8]}, stats={"category": "video games"})
    return out


def _run(args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _stored(folder: Path) -> tuple[set, dict]:
    config = json.loads((folder / "config.json").read_text())
    return {t.dtype for t in load_file(folder / "model.safetensors").values()}, config


def _serve(engine, folder, log):
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"} if engine == "vllm" else None
    extra = ["--enforce-eager"] if engine == "vllm" else []
    return ready_server(["--model", folder, "--engine", engine, *extra, "--log-level", "warning"], log, env=env)


def test_user_qwen2_checkpoint_every_command(tmp_path):
    user, data = _user_checkpoint(tmp_path / "user"), _games_slice(tmp_path / "games")
    base, pruned, export = tmp_path / "base", tmp_path / "pruned", tmp_path / "export"
    _run(["train", "--data", data, "--model", user, "--out", base, "--max-steps", 3, "--batch-size", 4,
          "--eval-every", 3, "--valid-limit", 8, "--max-history", 3, "--epochs", 1])
    dtypes, config = _stored(base)
    assert dtypes == {torch.bfloat16} and config["dtype"] == "bfloat16" and config["vocab_size"] == VOCAB
    assert config["tie_word_embeddings"] and json.loads((base / "prunerec.json").read_text())["prompt"][
        "template"] == "alpaca"
    _run(["evaluate", "--model", base, "--data", data, "--limit", 4, "--beams", 5, "--grounding", "both",
          "--out", tmp_path / "eval.json"])
    assert json.loads((tmp_path / "eval.json").read_text())["users"] == 4

    _run(["compress", "--model", base, "--data", data, "--out", pruned, "--heads", 2, "--kv-heads", 1,
          "--hidden", 64, "--mlp", 128, "--layers", 1, "--calib-samples", 8, "--calib-batch-size", 4,
          "--max-steps", 2, "--batch-size", 4, "--valid-limit", 8, "--eval-users", 2, "--beams", 5])
    dtypes, config = _stored(pruned / "final")
    assert dtypes == {torch.bfloat16} and config["vocab_size"] == VOCAB and config["tie_word_embeddings"]
    assert (config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]) == (64, 2, 1)

    _run(["export", "--model", pruned / "final", "--out", export, "--format", "hf,onnx", "--users", 2,
          "--beams", 4])
    report = json.loads((export / "export-report.json").read_text())
    assert report["dtype"] == "bf16" and report["verification"]["passed"]
    assert _stored(export / "hf")[0] == {torch.bfloat16} and (export / "onnx" / "model.onnx.data").is_file()

    reference = evaluate_rankings(export / "hf", data, beams=20)
    users = [(s.user, list(s.history)) for s in load_dataset(data, splits=("test",))["test"]][:4]
    answers = {}
    for engine in ("torch", "vllm"):
        srv = _serve(engine, export / "hf", tmp_path / f"{engine}.log")
        try:
            ready = srv.get("/ready").json()
            assert ready["engine"]["dtype"] == "float32"
            bodies = [srv.post({"history": history, "k": 20, "free_generation": True}).json() for _, history in users]
        finally:
            srv.stop()
        answers[engine] = [[item["title"] for item in body["items"]] for body in bodies]
        assert all(t < TOKENS for body in bodies for t in body["free_generation"]["token_ids"])
    assert answers["vllm"] == answers["torch"] == [reference[user][:20] for user, _ in users]
