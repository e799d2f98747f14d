"""prunerec export --format ...,genai: onnxruntime-genai's model builder over tiny models shaped
like the `tiny` preset, verified for real (onnxruntime-genai's greedy search vs PyTorch). Two
builds of ~5 s each (the builder runs in a subprocess); the rest is tiny."""
import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from transformers import Qwen2ForCausalLM

from prunerec.data.catalog import Catalog
from prunerec.model.checkpoint import RecModel
from prunerec.model.presets import PRESETS
from prunerec.model.prompt import PromptSettings
from tests.helpers import TITLES, scale_biggest_initializer, tiny_model, tiny_tokenizer

og = pytest.importorskip("onnxruntime_genai")

SETTINGS = PromptSettings(template="compact", category="games", max_history=5, cutoff_tokens=128)
GENAI_CHECKS = {"genai_decode", "genai_greedy"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _preset_like(tokenizer, seed: int):
    """The `tiny` preset's shape (4 layers, hidden 128, 2 query / 1 KV heads of 64) over the test
    tokenizer; initialised wider than usual so greedy decoding does not repeat one token."""
    torch.manual_seed(seed)
    config = PRESETS["tiny"].config(len(tokenizer), tokenizer.eos_token_id)
    config.initializer_range = 0.1
    return Qwen2ForCausalLM(config).eval()


def _save(model, tokenizer, folder):
    RecModel(model, tokenizer, Catalog.from_titles(TITLES), SETTINGS, {"base": "scratch preset 'tiny'"}).save(folder)
    return folder


@pytest.fixture(scope="module")
def genai_export(tmp_path_factory, tokenizer):
    from prunerec.export.cli import export

    root = tmp_path_factory.mktemp("genai")
    source = _save(_preset_like(tokenizer, seed=0), tokenizer, root / "model")
    out = root / "out"
    result = CliRunner().invoke(export, ["--model", str(source), "--out", str(out), "--format", "hf,genai",
                                         "--users", "3"])
    return source, out, result


def _checks(out):
    report = json.loads((out / "export-report.json").read_text())
    return report, {c["name"]: c for c in report["verification"]["checks"]}


def test_genai_export_verified_via_cli(genai_export, tokenizer):
    source, out, result = genai_export
    assert result.exit_code == 0, result.output
    assert "genai_greedy | pass" in result.output and "genai_decode | pass" in result.output
    report, checks = _checks(out)
    assert report["formats"] == ["hf", "genai"] and report["verification"]["passed"]
    assert set(checks) == {"hf_roundtrip"} | GENAI_CHECKS and not (out / "onnx").exists()
    assert checks["genai_decode"]["value"] <= 1e-4 and checks["genai_greedy"]["value"] == 0
    assert "identical" in checks["genai_greedy"]["detail"]
    folder = report["folders"]["genai"]
    assert folder["bytes"] > 0 and folder["load_seconds"] >= 0 and folder["dtype"] == "fp32"
    for name in ("genai_config.json", "model.onnx", "tokenizer.json", "catalog.jsonl", "prunerec.json"):
        assert (out / "genai" / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging or temporary folders left
    settings = json.loads((out / "genai" / "prunerec.json").read_text())
    assert settings["export"]["format"] == "genai" and settings["prompt"]["template"] == "compact"
    card = (out / "hf" / "README.md").read_text()
    assert "## onnxruntime-genai" in card and f'og.Model("{out / "genai"}")' in card

    # the folder runs as the model card says, and decodes what PyTorch decodes
    model = og.Model(str(out / "genai"))
    og_tokenizer = og.Tokenizer(model)
    prompt = '"Halo" "Zelda"\n'
    ids = list(og_tokenizer.encode(prompt))
    assert ids == tokenizer(prompt)["input_ids"]
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + 6)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
    got = [int(t) for t in generator.get_sequence(0)][len(ids):]
    reference = Qwen2ForCausalLM.from_pretrained(source).eval()
    expected = reference.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=len(got), do_sample=False)[0, len(ids):].tolist()
    assert got == expected and len(got) >= 1


def test_genai_greedy_goes_on_after_eos(genai_export, tokenizer):
    """EOS is ignored like in PyTorch's greedy(): with EOS set to the token the search picks first,
    the 32 tokens and log-probabilities still match."""
    from prunerec.export.checks import GREEDY_STEPS, greedy
    from prunerec.export.genai import greedy as genai_greedy
    from prunerec.search.beam import TorchStepper

    source, out, _ = genai_export
    prompts = [tokenizer(t)["input_ids"] for t in ('"Halo" "Zelda"', '"Portal 2"')]
    reference = Qwen2ForCausalLM.from_pretrained(source).eval()
    ref_tokens, ref_lp = greedy(TorchStepper(reference, tokenizer.pad_token_id), prompts)
    config = og.Config(str(out / "genai"))
    config.overlay(json.dumps({"model": {"eos_token_id": int(ref_tokens[0, 0])}}))
    tokens, logprobs, _ = genai_greedy(og.Model(config), prompts, GREEDY_STEPS)
    assert torch.equal(tokens, ref_tokens)
    assert float((logprobs - ref_lp).abs().max()) < 1e-4


def test_head_pruned_model_builds_and_verifies(tokenizer, tmp_path):
    """heads x head_dim != hidden_size: the builder reads config.head_dim, the genai model decodes
    PyTorch's tokens (genai only: the reference is the source checkpoint)."""
    from prunerec.export.cli import export
    from prunerec.model.surgery import keep_attention_heads

    model = _preset_like(tokenizer, seed=1)
    keep_attention_heads(model, [[0]] * 4, [[1]] * 4)  # 1 of 2 query heads: 1 x 64 != hidden 128
    cfg = model.config
    assert cfg.num_attention_heads * cfg.head_dim != cfg.hidden_size
    source = _save(model, tokenizer, tmp_path / "pruned")
    out = tmp_path / "out"
    result = CliRunner().invoke(export, ["--model", str(source), "--out", str(out), "--format", "genai",
                                         "--users", "3"])
    assert result.exit_code == 0, result.output
    report, checks = _checks(out)
    assert set(checks) == GENAI_CHECKS and report["verification"]["passed"]
    assert checks["genai_decode"]["value"] <= 1e-4
    genai_config = json.loads((out / "genai" / "genai_config.json").read_text())["model"]["decoder"]
    assert (genai_config["head_size"], genai_config["num_attention_heads"], genai_config["hidden_size"]) == (64, 1, 128)


def test_corrupted_genai_model_fails_verification(genai_export, tmp_path):
    from prunerec.export.verify import verify_export

    _, src, _ = genai_export
    out = tmp_path / "corrupt"
    shutil.copytree(src, out)
    scale_biggest_initializer(out / "genai", 1.05)
    verification = verify_export(out, users=2, threads=1, formats=("genai",))
    assert not verification["passed"]
    assert "genai_decode" in {c["name"] for c in verification["checks"] if not c["passed"]}


def test_refused_combinations(tokenizer, tmp_path):
    """fp16 (the builder's CPU precisions are fp32/int8/int4) and head_dim 8 (onnxruntime's CPU
    GroupQueryAttention wants multiples of 16) are refused before anything is written; the default
    formats stay hf,onnx."""
    from prunerec.errors import PrunerecError
    from prunerec.export.cli import export
    from prunerec.export.options import ExportOptions, parse_formats

    assert ExportOptions().formats == ("hf", "onnx") and parse_formats("hf,genai") == ("hf", "genai")
    source = _save(tiny_model(len(tokenizer), tokenizer.eos_token_id), tokenizer, tmp_path / "hd8")  # head_dim 8
    out = tmp_path / "out"
    result = CliRunner().invoke(export, ["--model", str(source), "--out", str(out), "--format", "hf,onnx,genai",
                                         "--dtype", "fp16"])
    assert result.exit_code != 0 and "cannot use --dtype fp16" in result.output and "CPU" in result.output
    result = CliRunner().invoke(export, ["--model", str(source), "--out", str(out), "--format", "hf,genai"])
    assert result.exit_code != 0 and "head_dim is 8" in result.output and "multiple of 16" in result.output
    assert not out.exists()
    with pytest.raises(PrunerecError, match="int4"):
        ExportOptions(formats=("genai",), dtype="int4").check()
