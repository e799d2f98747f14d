"""prunerec import: tiny Llama checkpoints (HF folder, bf16, GGUF, LoRA-merged) become Qwen2 folders whose
logits and greedy tokens match the source's, and everything that cannot map exactly is refused."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from prunerec.errors import PrunerecError
from prunerec.model.import_cli import import_model
from prunerec.model.import_mapping import map_config, map_weights
from prunerec.model.import_sources import align_special_tokens
from prunerec.model.importing import (
    CHECK_PROMPTS,
    REPORT_FILE,
    check_written,
    encode_prompts,
    import_checkpoint,
    model_outputs,
)
from tests.helpers import tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["Halo 2: Anniversary - Xbox One", '### Input: "Zelda", "Portal 2"\n### Response:\n', "The Sims 4"]
GGUF_SPECIALS = {"bos": 1, "eos": 2, "pad": 0}   # <|im_start|>, <|im_end|>, <|endoftext|>: all distinct


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def llama_config(tokenizer, **overrides):
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                 rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 1e5},
                 tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
                 bos_token_id=None, initializer_range=0.3)  # a wide init: greedy tokens vary
    return LlamaConfig(**(shape | overrides))


def tiny_llama(tokenizer, seed=0, **overrides):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(tokenizer, **overrides)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)  # norms off 1.0, so that a missed norm would show
            elif name.endswith("bias"):
                param.normal_(0, 0.3)  # transformers initializes biases to zero
    return model


def save_folder(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_import(*args):
    return CliRunner().invoke(import_model, [str(a) for a in args])


def ids_of(tokenizer):
    return [tokenizer(text)["input_ids"] for text in PROMPTS]


@torch.no_grad()
def logits_and_greedy(model, prompts, steps=10):
    """Full logits per prompt, and 10 greedy tokens through generate (KV cache: another path than the check's)."""
    rows = []
    for ids in prompts:
        tensor = torch.tensor([ids])
        generated = model.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=steps,
                                   min_new_tokens=steps, do_sample=False, pad_token_id=0)
        rows.append((model(tensor).logits[0].float(), generated[0, len(ids):].tolist()))
    return rows


def assert_same_model(want_model, got_model, prompts, tolerance=1e-5):
    want, got = logits_and_greedy(want_model, prompts), logits_and_greedy(got_model, prompts)
    for (want_logits, want_tokens), (got_logits, got_tokens) in zip(want, got):
        assert (want_logits - got_logits).abs().max() <= tolerance
        assert got_tokens == want_tokens and len(got_tokens) == 10
    assert len({token for _, tokens in want for token in tokens}) > 3, "degenerate test model: one greedy token"


def load_qwen2(folder):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert model.config.model_type == "qwen2" and type(model).__name__ == "Qwen2ForCausalLM"
    return model


# --------------------------------------------------------------------------- exact imports

@pytest.fixture(scope="module")
def llama(tokenizer):
    return tiny_llama(tokenizer)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, llama, tokenizer):
    return save_folder(llama, tokenizer, tmp_path_factory.mktemp("src") / "llama")


def test_a_llama_folder_imports_exactly(llama, llama_dir, tokenizer, tmp_path):
    out = tmp_path / "qwen2"
    killed_write = tmp_path / ".qwen2.prunerec-tmp.killed"  # what an interrupted import leaves beside --out
    killed_write.mkdir()
    result = run_import("--model", llama_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert not killed_write.exists()
    assert "max |logit diff| 0.00e+00" in result.output
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
            REPORT_FILE} <= {p.name for p in out.iterdir()}
    assert_same_model(llama, load_qwen2(out), ids_of(tokenizer))
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["check"]["max_abs_diff"] <= 1e-5 and report["check"]["greedy_agree"]
    assert report["result"]["config"] | {"rope": None} == report["result"]["config"] | {
        "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "head_dim": 8, "vocab": len(tokenizer),
        "tied_embeddings": True, "rope": None}
    assert report["weights"]["zero_qkv_biases_added"] == 6
    assert AutoTokenizer.from_pretrained(out)(PROMPTS)["input_ids"] == ids_of(tokenizer)


def test_a_bf16_source_stays_bf16(tokenizer, tmp_path):
    source = tiny_llama(tokenizer, seed=1).to(torch.bfloat16)
    src = save_folder(source, tokenizer, tmp_path / "bf16")
    report = import_checkpoint(str(src), tmp_path / "out", say=lambda m: None)
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as stored:
        assert {stored.get_slice(name).get_dtype() for name in stored.keys()} == {"BF16"}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    assert report["result"]["storage_dtype"] == "bf16" and report["check"]["max_abs_diff"] == 0.0
    widened = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()  # (source.float() rounds rope)
    assert_same_model(widened, load_qwen2(tmp_path / "out"), ids_of(tokenizer))


@pytest.mark.parametrize("rope", [{"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                                  {"rope_type": "linear", "rope_theta": 1e4, "factor": 4.0}])
def test_rope_scaling_that_qwen2_computes_alike_is_kept(rope, tokenizer, tmp_path):
    source = tiny_llama(tokenizer, seed=2, rope_parameters=rope)
    import_checkpoint(str(save_folder(source, tokenizer, tmp_path / "src")), tmp_path / "out", say=lambda m: None)
    result = load_qwen2(tmp_path / "out")
    assert result.config.rope_parameters["rope_type"] == rope["rope_type"]
    assert_same_model(source, result, ids_of(tokenizer))


def test_an_untied_llama_keeps_its_own_lm_head(tokenizer, tmp_path):
    source = tiny_llama(tokenizer, seed=7, tie_word_embeddings=False)
    import_checkpoint(str(save_folder(source, tokenizer, tmp_path / "src")), tmp_path / "out", say=lambda m: None)
    result = load_qwen2(tmp_path / "out")
    assert not result.config.tie_word_embeddings
    assert torch.equal(result.lm_head.weight, source.lm_head.weight)
    assert not torch.equal(result.lm_head.weight, result.model.embed_tokens.weight)
    assert_same_model(source, result, ids_of(tokenizer))


def test_qkv_biases_carry_over_and_zero_o_proj_and_mlp_biases_are_dropped(tokenizer, tmp_path):
    source = tiny_llama(tokenizer, seed=3, attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for name, param in source.named_parameters():
            if name.endswith(("o_proj.bias", "mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias")):
                param.zero_()
    report = import_checkpoint(str(save_folder(source, tokenizer, tmp_path / "src")), tmp_path / "out",
                               say=lambda m: None)
    result = load_qwen2(tmp_path / "out")
    assert torch.count_nonzero(result.model.layers[1].self_attn.k_proj.bias) > 0
    assert torch.equal(result.model.layers[1].self_attn.k_proj.bias, source.model.layers[1].self_attn.k_proj.bias)
    assert len(report["weights"]["zero_biases_dropped"]) == 8 and report["weights"]["zero_qkv_biases_added"] == 0
    assert_same_model(source, result, ids_of(tokenizer))


# --------------------------------------------------------------------------- GGUF

def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: rotary halves -> interleaved pairs, per head."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """The model's tensors under llama.cpp's names, q/k permuted as llama.cpp writes them."""
    config = model.config
    tensors = {"token_embd.weight": model.model.embed_tokens.weight, "output_norm.weight": model.model.norm.weight}
    for index, layer in enumerate(model.model.layers):
        for hf_name, gguf_name in GGUF_NAMES.items():
            tensors[f"blk.{index}.{gguf_name}.weight"] = layer.get_submodule(hf_name).weight
    arrays = {name: tensor.detach().float().numpy().copy() for name, tensor in tensors.items()}
    for name in arrays:
        if name.endswith("attn_q.weight"):
            arrays[name] = llama_cpp_permute(arrays[name], config.num_attention_heads, config.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            arrays[name] = llama_cpp_permute(arrays[name], config.num_attention_heads, config.num_key_value_heads)
    return arrays


def write_gguf(model, tokenizer, path, pre="qwen2"):
    """A GGUF file as llama.cpp's converter writes a Llama with a byte-level BPE tokenizer (F32 tensors);
    `pre` names the pre-tokenizer (transformers knows "qwen2"; others get GPT-2's split)."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny test llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    special = set(tokenizer.all_special_ids) | {GGUF_SPECIALS["bos"], GGUF_SPECIALS["eos"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(GGUF_SPECIALS["bos"])
    writer.add_eos_token_id(GGUF_SPECIALS["eos"])
    writer.add_pad_token_id(GGUF_SPECIALS["pad"])
    writer.add_add_bos_token(False)
    for name, array in gguf_tensors(model).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_file_imports_exactly(llama, tokenizer, tmp_path):
    gguf_file = write_gguf(llama, tokenizer, tmp_path / "tiny.gguf")
    out = tmp_path / "qwen2"
    result = run_import("--model", gguf_file, "--out", out)
    assert result.exit_code == 0, result.output
    assert_same_model(llama, load_qwen2(out), ids_of(tokenizer))
    imported = AutoTokenizer.from_pretrained(out)
    assert imported(PROMPTS)["input_ids"] == ids_of(tokenizer)
    assert (imported.bos_token_id, imported.eos_token_id, imported.pad_token_id) == (1, 2, 0)
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["source"]["format"] == "gguf" and report["result"]["storage_dtype"] == "fp32"
    assert {role: row["id"] for role, row in report["special_tokens"].items()} == GGUF_SPECIALS
    assert report["special_tokens"]["eos"]["token"] == "<|im_end|>"
    assert report["check"]["tokenizer"]["prompts_encoded_alike"] == 3 and report["check"]["tokenizer"]["note"] is None


def test_a_gguf_tokenizer_that_splits_otherwise_is_kept_and_the_difference_reported(llama, tokenizer, tmp_path):
    """A GGUF tokenizer with GPT-2's split: a qwen2 folder's tokenizer loads with Qwen2's, so the folder is
    written with that one (same vocabulary, lossless) and the prompts it splits otherwise are counted."""
    gguf_file = write_gguf(llama, tokenizer, tmp_path / "gpt2-split.gguf", pre="gpt2")
    out = tmp_path / "qwen2"
    result = run_import("--model", gguf_file, "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / REPORT_FILE).read_text())["check"]["tokenizer"]
    assert summary["prompts_encoded_alike"] < summary["prompts"] and "splits" in summary["note"]
    assert "note    the folder's tokenizer loads as Qwen2Tokenizer" in result.output
    written = json.loads((out / "tokenizer.json").read_text())
    assert written["pre_tokenizer"]["type"] == "Sequence"  # the files say what loads: Qwen2's split
    assert_same_model(llama, load_qwen2(out), ids_of(tokenizer))


def test_a_tokenizer_a_qwen2_folder_cannot_keep_is_refused(llama, tmp_path):
    """A sentencepiece-style vocabulary (Metaspace) loses text under Qwen2's byte-level pipeline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast


    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    bpe.train_from_iterator(list(CHECK_PROMPTS) * 3, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    sentencepiece_like = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>",
                                                 eos_token="</s>")
    src = save_folder(tiny_llama(sentencepiece_like), sentencepiece_like, tmp_path / "src")
    out = tmp_path / "out"
    assert_refused(run_import("--model", src, "--out", out), out, "loses text of check prompts",
                   "only byte-level BPE tokenizers")


def test_special_tokens_are_set_from_the_gguf_metadata_where_they_differ(tokenizer):
    wrong = tiny_tokenizer()
    fixes = align_special_tokens(wrong, {"bos": 1, "eos": 2, "pad": 2})
    assert (wrong.bos_token, wrong.eos_token, wrong.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert len(fixes) == 3 and "'<|endoftext|>'" in fixes[1] and "2 ('<|im_end|>')" in fixes[1]
    assert align_special_tokens(wrong, {"bos": 1, "eos": 2, "pad": 2}) == []


# --------------------------------------------------------------------------- LoRA

def lora_adapter(base, folder, seed=0):
    """A LoRA adapter with non-zero B matrices (init_lora_weights=False), saved in `folder`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, config).eval()
    peft_model.save_pretrained(folder)
    return peft_model


def test_a_lora_adapter_is_merged_before_the_import(tokenizer, tmp_path):
    peft_model = lora_adapter(tiny_llama(tokenizer, seed=4), tmp_path / "adapter")
    base = save_folder(tiny_llama(tokenizer, seed=4), tokenizer, tmp_path / "base")
    out = tmp_path / "merged"
    result = run_import("--model", base, "--adapter", tmp_path / "adapter", "--out", out)
    assert result.exit_code == 0, result.output
    merged = load_qwen2(out)
    # merged weights round differently from the adapter's separate path (float32): 1e-4, the import's own gate
    assert_same_model(peft_model, merged, ids_of(tokenizer), tolerance=1e-4)
    base_logits = tiny_llama(tokenizer, seed=4)(torch.tensor([ids_of(tokenizer)[0]])).logits
    assert (merged(torch.tensor([ids_of(tokenizer)[0]])).logits - base_logits).abs().max() > 1e-2
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["adapter"]["r"] == 4 and report["adapter"]["merge_max_abs_diff"] <= 1e-4


def test_a_lora_merged_into_a_bf16_model_is_stored_in_fp32(tokenizer, tmp_path):
    """bf16 cannot hold the merged weights: the import keeps them exact in fp32 and says so."""
    from peft import PeftModel

    base = save_folder(tiny_llama(tokenizer, seed=6).to(torch.bfloat16), tokenizer, tmp_path / "base")
    lora_adapter(LlamaForCausalLM.from_pretrained(base, dtype=torch.float32), tmp_path / "adapter", seed=6)
    report = import_checkpoint(str(base), tmp_path / "out", adapter=str(tmp_path / "adapter"), say=lambda m: None)
    assert report["source"]["dtype"] == "bf16" and report["result"]["storage_dtype"] == "fp32"
    assert "not representable in bf16" in report["result"]["storage_note"]
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as stored:
        assert {stored.get_slice(name).get_dtype() for name in stored.keys()} == {"F32"}
    reference = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base, dtype=torch.float32),
                                          tmp_path / "adapter").eval()
    assert_same_model(reference, load_qwen2(tmp_path / "out"), ids_of(tokenizer), tolerance=1e-4)


# --------------------------------------------------------------------------- refusals

def with_biases(tokenizer, which):
    model = tiny_llama(tokenizer, seed=5, attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") and which not in name:
                param.zero_()
    return model


def gpt2(tokenizer):
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2))


def mistral(tokenizer):
    shape = llama_config(tokenizer).to_dict()
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "tie_word_embeddings")
    return MistralForCausalLM(MistralConfig(sliding_window=16, **{k: shape[k] for k in keep}))


LONGROPE = {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
            "original_max_position_embeddings": 64}
SOURCES = {
    "mlp bias": (lambda tok: with_biases(tok, "mlp."), "non-zero MLP biases"),
    "o_proj bias": (lambda tok: with_biases(tok, "o_proj"), "non-zero o_proj biases"),
    "sliding window": (mistral, "sliding window attention (sliding_window=16)"),
    "rope type": (lambda tok: tiny_llama(tok, rope_parameters=LONGROPE), "rope scaling type 'longrope'"),
    "gpt2": (gpt2, "model_type 'gpt2' is not supported"),
}


def assert_refused(result, out, *words):
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(SOURCES))
def test_what_cannot_map_exactly_is_refused(case, tokenizer, tmp_path):
    build, message = SOURCES[case]
    src = save_folder(build(tokenizer), tokenizer, tmp_path / "src")
    out = tmp_path / "out"
    assert_refused(run_import("--model", src, "--out", out), out, message)


def test_an_unknown_model_type_is_refused(tmp_path):
    (tmp_path / "falcon").mkdir()
    (tmp_path / "falcon" / "config.json").write_text(json.dumps({"model_type": "falcon"}))
    out = tmp_path / "out"
    assert_refused(run_import("--model", tmp_path / "falcon", "--out", out), out, "model_type 'falcon'")


def test_an_unexpected_weight_is_refused(llama_dir, tmp_path):
    src = tmp_path / "extra"
    src.mkdir()
    for item in llama_dir.iterdir():
        (src / item.name).write_bytes(item.read_bytes())
    weights = load_file(src / "model.safetensors")
    save_file(weights | {"model.layers.0.self_attn.extra.weight": torch.ones(4)}, src / "model.safetensors",
              metadata={"format": "pt"})
    out = tmp_path / "out"
    assert_refused(run_import("--model", src, "--out", out), out, "model.layers.0.self_attn.extra.weight")


def test_an_earlier_import_is_kept_without_overwrite(llama_dir, tmp_path):
    out = tmp_path / "qwen2"
    assert run_import("--model", llama_dir, "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run_import("--model", llama_dir, "--out", out)
    assert result.exit_code == 1 and "already holds an import" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert run_import("--model", llama_dir, "--out", out, "--overwrite").exit_code == 0


def test_an_output_over_the_input_or_over_other_files_is_refused(llama_dir, tmp_path):
    before = sorted(p.name for p in llama_dir.iterdir())
    result = run_import("--model", llama_dir, "--out", llama_dir)
    assert result.exit_code == 1 and "--out" in result.output and "input" in result.output
    assert sorted(p.name for p in llama_dir.iterdir()) == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = run_import("--model", llama_dir, "--out", tmp_path / "busy", "--overwrite")
    assert result.exit_code == 1 and "notes.txt" in result.output
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tokenizer):
    """Adapter folders that do not fit the tiny Llama: another hidden size, another layer count."""
    root = tmp_path_factory.mktemp("adapters")
    lora_adapter(tiny_llama(tokenizer, hidden_size=48, head_dim=12), root / "wider")
    lora_adapter(tiny_llama(tokenizer, num_hidden_layers=3), root / "deeper")
    (root / "empty").mkdir()
    (root / "config-only").mkdir()
    (root / "config-only" / "adapter_config.json").write_bytes((root / "wider" / "adapter_config.json").read_bytes())
    return root


@pytest.mark.parametrize("name, message", [("missing", "adapter folder not found"),
                                           ("empty", "not a PEFT adapter folder (no adapter_config.json)"),
                                           ("config-only", "holds no adapter weights"),
                                           ("wider", "does not fit the model: Error(s) in loading state_dict for "
                                                     "PeftModel: size mismatch"),
                                           ("deeper", "does not fit the model (unexpected keys")])
def test_a_bad_adapter_is_refused(name, message, adapters, llama_dir, tmp_path):
    out = tmp_path / "out"
    assert_refused(run_import("--model", llama_dir, "--adapter", adapters / name, "--out", out), out, message)


# --------------------------------------------------------------------------- the pure mappings and the gate

def test_the_config_mapping_gives_reasons_or_a_qwen2_config(tokenizer):
    mapped = map_config(llama_config(tokenizer, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4,
                                                                 "factor": 2.0}))
    assert mapped.model_type == "qwen2" and mapped.use_sliding_window is False
    assert mapped.rope_parameters["rope_type"] == "yarn" and mapped.head_dim == 8
    reasons = map_config(MistralConfig(sliding_window=8, rope_parameters={"rope_type": "su", "rope_theta": 1e4}))
    assert len(reasons) == 2 and "sliding window" in reasons[0] and "'su'" in reasons[1]
    assert "LlamaForSequenceClassification" in map_config(llama_config(
        tokenizer, architectures=["LlamaForSequenceClassification"]))[0]


def test_the_weight_mapping_names_what_it_cannot_place(llama, tokenizer):
    config = map_config(llama.config)
    state = dict(llama.state_dict())
    mapped = map_weights(state, config)
    assert len(mapped.zero_biases_added) == 6 and set(mapped.weights) >= set(state)
    state["model.layers.1.mlp.extra"] = torch.ones(2)
    state["model.layers.0.mlp.up_proj.weight"] = torch.ones(3, 3)
    del state["model.norm.weight"]
    reasons = map_weights(state, config)
    assert any("missing weight model.norm.weight" in r for r in reasons)
    assert any("model.layers.0.mlp.up_proj.weight has shape (3, 3)" in r for r in reasons)
    assert any("model.layers.1.mlp.extra" in r for r in reasons)


def test_the_check_refuses_a_written_model_that_differs(llama, llama_dir, tokenizer, tmp_path):
    import_checkpoint(str(llama_dir), tmp_path / "out", say=lambda m: None)
    prompts = encode_prompts(tokenizer)
    reference = model_outputs(llama, prompts)
    assert check_written(tmp_path / "out", prompts, reference, tokenizer)["max_abs_diff"] == 0.0
    reference[1]["logits"][3, 7] += 2e-4
    with pytest.raises(PrunerecError, match="max .logit diff. 0.0002 > 0.0001"):
        check_written(tmp_path / "out", prompts, reference, tokenizer)


def test_help_explains_with_an_example():
    result = CliRunner().invoke(import_model, ["--help"])
    assert result.exit_code == 0
    assert "prunerec import --model SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smollm2" in result.output
    assert "prunerec train --data data/Games --model runs/smollm2" in result.output
