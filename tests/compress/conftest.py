"""Tiny base recommenders for the compress tests, built once per session (seconds)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """These tests are tiny; see tests/conftest.py."""


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """(data_dir, base_dir): demo data and the 'tiny' preset trained for 20 steps
    (hidden 128, 2 query heads of 64 over 1 KV head, 4 layers, MLP 512)."""
    from prunerec.data.demo import write_demo
    from prunerec.train.pipeline import run_train

    root = tmp_path_factory.mktemp("compress")
    data, base = root / "data", root / "base"
    write_demo(data, n_items=300, n_users=200)
    run_train(data, "tiny", base, max_steps=20, eval_every=10, valid_limit=50, train_limit=400)
    return data, base


@pytest.fixture(scope="session")
def gqa_base(tiny_base, tmp_path_factory):
    """A random 4q/2kv Qwen2 recommender with the tiny base's tokenizer and catalog, so head
    pruning has to choose KV groups (hidden 64 = 4 x 16, MLP 128, 3 layers)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from prunerec.model.checkpoint import RecModel, load_rec_model

    _, base_dir = tiny_base
    base = load_rec_model(str(base_dir))
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=base.model.config.vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      tie_word_embeddings=True, max_position_embeddings=512, eos_token_id=base.tokenizer.eos_token_id,
                      pad_token_id=base.tokenizer.pad_token_id, bos_token_id=base.tokenizer.eos_token_id)
    out = tmp_path_factory.mktemp("gqa") / "base"
    RecModel(Qwen2ForCausalLM(cfg).eval(), base.tokenizer, base.catalog, base.settings, {"base": "random"}).save(out)
    return out
