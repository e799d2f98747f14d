"""bf16 checkpoints compute in float32 and are saved back in bf16; the embedding rows past the
tokenizer (Qwen2's vocabulary padding) are never generated."""

import json

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from prunerec.data.catalog import Catalog
from prunerec.model.checkpoint import RecModel, load_rec_model
from prunerec.model.dtypes import stored_dtype, vllm_dtype
from prunerec.model.prompt import PromptSettings
from prunerec.model.vocab import generation_ids, padding_ids
from prunerec.search.grounding import free_generate
from tests.helpers import TITLES, tiny_model, tiny_tokenizer

PADDING = 40


def _padded_model(tokenizer, tied: bool):
    """Vocabulary padded past the tokenizer, the padding rows' logits made dominant."""
    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=len(tokenizer) + PADDING, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=tied)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight[len(tokenizer):] *= 50
    return model


def test_bf16_checkpoint_computes_in_float32_and_stays_bf16(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer) + PADDING, tokenizer.eos_token_id).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "user")
    tokenizer.save_pretrained(tmp_path / "user")
    rec = load_rec_model(str(tmp_path / "user"))
    assert next(rec.model.parameters()).dtype == torch.float32 and rec.storage_dtype == torch.bfloat16
    with torch.no_grad():
        for p in rec.model.parameters():
            p.add_(1e-3)  # training moves weights off the bf16 grid
    RecModel(rec.model, rec.tokenizer, Catalog.from_titles(TITLES), PromptSettings(), {}, rec.storage_dtype).save(
        tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(tmp_path / "out" / "model.safetensors").values()} == {torch.bfloat16}
    assert next(rec.model.parameters()).dtype == torch.float32
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).state_dict()
    for name, value in rec.model.state_dict().items():  # memory holds exactly what was saved
        assert torch.equal(value, saved[name]), name
    assert rec.model.config.vocab_size == len(tokenizer) + PADDING
    assert stored_dtype(rec.model.config) == torch.float32 and vllm_dtype("auto") == "float32"
    assert vllm_dtype("bfloat16") == "bfloat16"


def test_free_generation_never_writes_padding_rows():
    tokenizer = tiny_tokenizer()
    n = len(tokenizer)
    assert padding_ids(tokenizer, n + PADDING) == list(range(n, n + PADDING))
    assert generation_ids(tokenizer, n) is None and generation_ids(tokenizer, n + 3) == list(range(n))
    prompt = tokenizer("### Instruction: recommend the next games item.")["input_ids"]
    for tied in (True, False):
        model = _padded_model(tokenizer, tied)
        plain = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=4,
                               pad_token_id=tokenizer.eos_token_id)[0, len(prompt):]
        assert (plain >= n).all()  # without the guard only padding rows are written (they decode to "")
        assert tokenizer.decode(plain, skip_special_tokens=True) == ""
        text = free_generate(model, tokenizer, [prompt], max_new_tokens=4)
        assert text[0].strip()  # real tokens instead


def test_untied_padded_bf16_model_pruned_and_exported(tmp_path):
    """Hidden-dim slicing of an untied LM head keeps every vocabulary row (padding included);
    the export keeps bf16 (--dtype auto), the separate LM head, and verifies against PyTorch."""
    from prunerec.export.pipeline import ExportOptions, run_export
    from prunerec.model.surgery import keep_hidden

    tokenizer = tiny_tokenizer()
    model = _padded_model(tokenizer, tied=False)
    with torch.no_grad():
        model.lm_head.weight[len(tokenizer):] /= 50
    keep_hidden(model, torch.arange(0, 32, 2))
    assert model.lm_head.weight.shape == (len(tokenizer) + PADDING, 16)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    RecModel(model, tokenizer, Catalog.from_titles(TITLES), PromptSettings(template="compact"), {},
             torch.bfloat16).save(tmp_path / "pruned")
    report, _ = run_export(str(tmp_path / "pruned"), tmp_path / "export",
                           ExportOptions(users=2, beams=4), say=lambda *_: None)
    assert report["dtype"] == "bf16" and report["verification"]["passed"]
    weights = load_file(tmp_path / "export" / "hf" / "model.safetensors")
    assert weights["lm_head.weight"].shape == (len(tokenizer) + PADDING, 16)
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
