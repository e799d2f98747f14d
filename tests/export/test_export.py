"""prunerec export: HF + ONNX exports of tiny recommenders, verified for real (runs in well under
2 minutes on one core: three ONNX exports of ~5 s each, the rest is tiny)."""
import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from prunerec.data.catalog import Catalog, Sample, write_dataset
from prunerec.model.checkpoint import RecModel
from prunerec.model.prompt import PromptSettings
from tests.helpers import TITLES, scale_biggest_initializer, tiny_model, tiny_tokenizer

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SETTINGS = PromptSettings(template="compact", category="games", max_history=5, cutoff_tokens=128)
EXPECTED_ONNX_CHECKS = {"onnx_logits", "onnx_decode", "onnx_greedy", "onnx_beam"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    """hidden 32 = 4 heads x 8: no Llama copy needed."""
    out = tmp_path_factory.mktemp("tiny") / "model"
    model = tiny_model(len(tokenizer), tokenizer.eos_token_id)
    RecModel(model, tokenizer, Catalog.from_titles(TITLES), SETTINGS, {"base": "scratch preset 'test'"}).save(out)
    return out


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory, tokenizer):
    """A head-pruned tiny model (2 of 4 query heads kept: 2 x 8 != hidden 32) laid out like a
    compress output: run/final with compress.json, and run/report.json."""
    from prunerec.model.surgery import keep_attention_heads

    run = tmp_path_factory.mktemp("run")
    model = tiny_model(len(tokenizer), tokenizer.eos_token_id, seed=1)
    keep_attention_heads(model, [[0, 1], [0, 1]], [[0, 2], [1, 3]])
    assert model.config.num_attention_heads * model.config.head_dim != model.config.hidden_size
    info = {"base": "scratch preset 'test'",
            "compress": {"base": "runs/base", "stage": "stage3", "method": "prunerec", "distilled": True,
                         "targets": {"heads": 2}}}
    final = run / "final"
    RecModel(model, tokenizer, Catalog.from_titles(TITLES), SETTINGS, info).save(final)
    metrics = {"HR@5": 0.25, "HR@10": 0.5, "HR@20": 0.75, "NDCG@5": 0.125, "NDCG@10": 0.25, "NDCG@20": 0.3}
    (final / "compress.json").write_text(json.dumps({"stage": "stage3", "pruned": "layers", "method": "prunerec"}))
    (run / "report.json").write_text(json.dumps({
        "model": "runs/base", "data": "data/Games", "options": {"method": "prunerec"},
        "base": {"parameters": {"total": 99999, "embedding": 12800, "non_embedding": 87199},
                 "eval": {"metrics": {k: v * 2 for k, v in metrics.items()}, "users": 8}},
        "stages": [], "final": {"path": str(final), "parameters": {}, "non_embedding_removed_share": 0.8,
                                "quality_kept": {"mean": 0.5}, "eval": {"metrics": metrics, "users": 8}}}))
    return final


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "data"
    rows = [Sample(u, tuple((u + k) % len(TITLES) for k in range(1 + u % 4)), (u + 5) % len(TITLES))
            for u in range(6)]
    write_dataset(root, Catalog.from_titles(TITLES), {"train": rows, "valid": rows, "test": rows})
    return root


@pytest.fixture(scope="module")
def tiny_export(tiny_dir, tmp_path_factory):
    from prunerec.export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("export") / "tiny"
    report, table = run_export(str(tiny_dir), out, ExportOptions(beams=5, users=3, threads=1), say=lambda m: None)
    return out, report, table


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


# ----------------------------------------------------------------------------- happy paths


def test_tiny_model_exports_and_verifies(tiny_export, tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    out, report, table = tiny_export
    ver = report["verification"]
    assert ver["passed"], table
    assert {c["name"] for c in ver["checks"]} == {"hf_roundtrip"} | EXPECTED_ONNX_CHECKS
    logits = next(c for c in ver["checks"] if c["name"] == "onnx_logits")
    assert logits["value"] <= 1e-4 and logits["tolerance"] == 1e-4
    assert not (out / "hf-llama").exists() and report["vllm"]["folder"] == "hf"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "catalog.jsonl",
                 "prunerec.json", "README.md"):
        assert (out / "hf" / name).is_file(), name
    for name in ("model.onnx", "config.json", "tokenizer.json", "catalog.jsonl", "prunerec.json"):
        assert (out / "onnx" / name).is_file(), name
    saved = json.loads((out / "export-report.json").read_text())
    assert saved["verification"]["passed"] and saved["folders"]["onnx"]["bytes"] > 0
    assert saved["folders"]["hf"]["load_seconds"] >= 0 and saved["folders"]["onnx"]["load_seconds"] >= 0
    assert "onnx_beam" in table and "pass" in table
    card = (out / "hf" / "README.md").read_text()
    assert f"{report['parameters']['non_embedding']:,} non-embedding" in card and "AutoModelForCausalLM" in card
    # the HF folder reloads with the stock classes and computes what the source does
    reloaded = AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    source = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    assert type(reloaded).__name__ == "Qwen2ForCausalLM"
    ids = tokenizer('"Halo 2"\n')["input_ids"]
    assert torch.equal(_logits(reloaded, ids), _logits(source, ids))


def test_onnx_graph_and_stepper(tiny_export, tiny_dir):
    """Graph IO as documented; OnnxStepper = TorchStepper for one prompt, for a chunked prefill
    and through a reordering of the KV cache."""
    from prunerec.export.onnx_stepper import OnnxStepper, make_session
    from prunerec.model.checkpoint import load_rec_model
    from prunerec.search.beam import TorchStepper

    out, _, _ = tiny_export
    session = make_session(out / "onnx", providers=["CPUExecutionProvider"], threads=1)
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert list(inputs)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert (inputs["past_key_values.1.value"][0] == "batch_size"
            and inputs["past_key_values.1.value"][2] == "past_sequence_length")
    assert outputs["logits"][:2] == ["batch_size", "sequence_length"] and "present.1.key" in outputs

    rec = load_rec_model(str(tiny_dir))
    pad = rec.tokenizer.pad_token_id
    prompts = [rec.tokenizer(t)["input_ids"]
               for t in ('"Halo" "Zelda"', '"Portal 2"', '"The Sims 4" "Minecraft - PC" "Halo"')]
    for batch, max_logits in ((prompts[:1], 1 << 26), (prompts, 1)):  # max_logits=1: one row per prefill call
        ref, got = TorchStepper(rec.model, pad), OnnxStepper(session, pad, max_logits=max_logits)
        assert torch.allclose(ref.start(batch), got.start(batch), atol=1e-4)
        parents = [len(batch) - 1] + list(range(len(batch)))  # duplicate and shuffle rows
        tokens = [5, 6, 7, 8][:len(parents)]
        for _ in range(3):
            a, b = ref.advance(parents, tokens), got.advance(parents, tokens)
            assert torch.allclose(a, b, atol=1e-4)
            parents, tokens = list(range(len(parents)))[::-1], a.argmax(-1).tolist()


def test_pruned_odd_head_dim_via_cli(odd_dir, data_dir, tmp_path):
    """heads x head_dim != hidden: OUT/hf-llama appears, is a Llama with zero o_proj bias and
    the same logits; prompts come from --data; the model card carries the compress report."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from prunerec.export.cli import export

    out = tmp_path / "odd"
    result = CliRunner().invoke(export, ["--model", str(odd_dir), "--out", str(out), "--data", str(data_dir),
                                         "--users", "4", "--beams", "5"])
    assert result.exit_code == 0, result.output
    assert "llama_logits | pass" in result.output and "hf-llama" in result.output
    report = json.loads((out / "export-report.json").read_text())
    assert report["verification"]["passed"]
    assert ({c["name"] for c in report["verification"]["checks"]}
            == {"hf_roundtrip", "llama_logits"} | EXPECTED_ONNX_CHECKS)
    assert report["vllm"]["folder"] == "hf-llama"
    assert "users of" in report["verification"]["prompts"]
    config = json.loads((out / "hf-llama" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["attention_bias"] is True
    assert config["head_dim"] == 8 and config["num_attention_heads"] == 2 and config["hidden_size"] == 32
    weights = load_file(out / "hf-llama" / "model.safetensors")
    assert all(not weights[f"model.layers.{i}.self_attn.o_proj.bias"].any() for i in range(2))
    llama = AutoModelForCausalLM.from_pretrained(out / "hf-llama").eval()
    qwen = AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    ids = list(range(3, 20))
    assert torch.allclose(_logits(llama, ids), _logits(qwen, ids), atol=1e-5)
    card = (out / "hf" / "README.md").read_text()
    assert "80.00% removed" in card and "| this model | 0.2500" in card and "hf-llama/" in card


def test_fp16_onnx_only(tiny_dir, tmp_path):
    from prunerec.export.cli import export

    out = tmp_path / "fp16"
    result = CliRunner().invoke(export, ["--model", str(tiny_dir), "--out", str(out), "--format", "onnx",
                                         "--dtype", "fp16", "--users", "2", "--beams", "4"])
    assert result.exit_code == 0, result.output
    assert not (out / "hf").exists()
    report = json.loads((out / "export-report.json").read_text())
    logits = next(c for c in report["verification"]["checks"] if c["name"] == "onnx_logits")
    assert logits["tolerance"] >= 1e-2 and "fp16" in logits["detail"]
    assert {c["name"] for c in report["verification"]["checks"]} == EXPECTED_ONNX_CHECKS
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[3].type == "tensor(float16)"


def test_bf16_and_stale_llama_copy_removed(tiny_dir, tmp_path):
    """bf16 safetensors; the ONNX graph computes in fp32 over the bf16 weights and is compared with
    PyTorch in fp32 over the same weights (1e-4); an old hf-llama/ that is not needed goes away."""
    from safetensors.torch import load_file

    from prunerec.export.cli import export

    out = tmp_path / "bf16"
    (out / "hf-llama").mkdir(parents=True)  # left over from an earlier export of another model
    args = ["--model", str(tiny_dir), "--out", str(out), "--dtype", "bf16", "--users", "2", "--beams", "4"]
    result = CliRunner().invoke(export, args)
    assert result.exit_code == 1 and "already holds an export (hf-llama)" in result.output  # not replaced unasked
    result = CliRunner().invoke(export, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "hf-llama").exists()
    assert all(t.dtype == torch.bfloat16 for t in load_file(out / "hf" / "model.safetensors").values())
    report = json.loads((out / "export-report.json").read_text())
    assert report["verification"]["passed"] and report["folders"]["onnx"]["dtype"] == "fp32"
    checks = {c["name"]: c for c in report["verification"]["checks"]}
    assert checks["onnx_logits"]["tolerance"] == 1e-4 and "bf16" in checks["hf_roundtrip"]["detail"]
    assert any("bf16" in note for note in report["notes"])


# ----------------------------------------------------------------------------- failures


def test_corrupted_onnx_weights_fail_verification(tiny_export, tmp_path):
    from prunerec.export.verify import (
        VerificationFailed,
        raise_if_failed,
        verify_export,
    )

    src, _, _ = tiny_export
    out = tmp_path / "corrupt"
    shutil.copytree(src, out)
    scale_biggest_initializer(out / "onnx", 1.01)

    verification = verify_export(out, users=2, beams=4, threads=1)
    assert not verification["passed"]
    failed = {c["name"] for c in verification["checks"] if not c["passed"]}
    assert "onnx_logits" in failed
    with pytest.raises(VerificationFailed, match="onnx_logits: .* > tolerance 0.0001"):
        raise_if_failed(verification)


def test_failed_check_exits_nonzero_with_its_name(tiny_dir, tmp_path, monkeypatch):
    from prunerec.export import checks
    from prunerec.export.cli import export

    monkeypatch.setitem(checks.LOGITS_TOLERANCE, "fp32", -1.0)
    out = tmp_path / "fail"
    result = CliRunner().invoke(export, ["--model", str(tiny_dir), "--out", str(out), "--format", "hf"])
    assert result.exit_code == 1
    assert "verification failed: hf_roundtrip" in result.output and "FAIL" in result.output
    assert json.loads((out / "export-report.json").read_text())["verification"]["passed"] is False


def test_bad_options_are_refused(tiny_dir, tmp_path):
    from prunerec.export.cli import export

    result = CliRunner().invoke(export, ["--model", str(tiny_dir), "--out", str(tmp_path / "x"), "--format", "gguf"])
    assert result.exit_code != 0 and "gguf" in result.output
