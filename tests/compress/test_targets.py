"""Target shapes: paper proportions, rounding, overrides, refusals (pure, no model weights)."""

from pathlib import Path

import pytest
from transformers import AutoConfig, Qwen2Config

from prunerec.compress.targets import (
    Targets,
    feasible_heads,
    load_target_file,
    parse_amount,
    resolve_targets,
    target_summary,
)
from prunerec.errors import PrunerecError
from prunerec.model.presets import PRESETS


def qwen05b():
    return Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)


def test_qwen2_05b_defaults_are_the_paper():
    cfg = qwen05b()
    t = resolve_targets(cfg)
    assert (t.heads, t.kv_heads, t.hidden, t.mlp, t.layers) == (7, 1, 448, 896, 8)
    assert t.hidden == t.heads * 64 and not t.notes
    s = target_summary(cfg, t)
    assert s["base_parameters"]["non_embedding"] == 357_898_112
    assert s["target_parameters"]["non_embedding"] == 13_316_032
    assert s["non_embedding_removed_share"] == pytest.approx(0.9628, abs=1e-4)
    assert s["target_shape"]["head_dim"] == 64


QWEN2_05B_CONFIG = Path(__file__).resolve().parents[3] / "shared" / "models" / "qwen2-0.5b"


def test_real_qwen2_05b_config_defaults_are_the_paper():
    if not (QWEN2_05B_CONFIG / "config.json").is_file():
        pytest.skip(f"{QWEN2_05B_CONFIG}/config.json is not beside the repository")
    cfg = AutoConfig.from_pretrained(QWEN2_05B_CONFIG)
    t = resolve_targets(cfg)
    assert (t.heads, t.kv_heads, t.hidden, t.mlp, t.layers) == (7, 1, 448, 896, 8) and not t.notes
    s = target_summary(cfg, t)
    assert s["base_parameters"]["non_embedding"] == 357_898_112
    assert s["target_parameters"]["non_embedding"] == 13_316_032


def test_deep_preset_defaults_are_the_paper_proportions():
    """The deep preset has Qwen2-0.5B's depth, query heads per KV head and MLP ratio, so the default
    targets are the paper's proportions: 16 of 24 layers removed, MLP 896/4864 of its width, one
    KV head, the query heads nearest to half (4 of 7: 3.5 is not a head count), hidden = kept
    heads x head_dim, and > 95% of non-embedding parameters removed."""
    p = PRESETS["deep"]
    assert (p.num_layers, p.num_heads, p.num_kv_heads, p.head_dim) == (24, 7, 1, 32)
    assert p.hidden_size == p.num_heads * p.head_dim
    assert p.intermediate_size * 896 == p.hidden_size * 4864  # Qwen2-0.5B's MLP ratio, exactly
    cfg = p.config(8192, 0)
    t = resolve_targets(cfg)
    assert t == Targets(layers=8, heads=4, kv_heads=1, hidden=128, mlp=224)
    assert t.layers * 24 == p.num_layers * 8 and t.mlp * 4864 == p.intermediate_size * 896
    assert [n.split(":")[0] for n in t.notes] == ["heads"]  # the one rounding, said out loud
    s = target_summary(cfg, t)
    assert s["target_shape"]["head_dim"] == 32
    assert s["base_parameters"]["non_embedding"] == 22_382_048
    assert s["target_parameters"]["non_embedding"] == 1_019_520
    assert s["non_embedding_removed_share"] == pytest.approx(0.9544, abs=1e-4)


def test_paper_14q_2kv_variant_count():
    cfg = qwen05b()
    t = resolve_targets(cfg, heads=14, kv_heads=2, hidden=448)
    assert target_summary(cfg, t)["target_parameters"]["non_embedding"] == 16_990_656
    assert any("head_dim" in n for n in t.notes)  # 448 != 14 x 64 is flagged for vLLM


def test_tiny_preset_defaults():
    p = PRESETS["tiny"]
    t = resolve_targets(p.config(999, 0))
    assert t == Targets(layers=1, heads=1, kv_heads=1, hidden=64, mlp=96)
    p = PRESETS["small"]  # 4q/2kv, hidden 256, MLP 1024, 6 layers
    t = resolve_targets(p.config(999, 0))
    assert (t.heads, t.kv_heads, t.hidden, t.mlp, t.layers) == (2, 1, 128, 192, 2)


def test_counts_ratios_and_rounding():
    cfg = qwen05b()
    t = resolve_targets(cfg, heads="0.6", mlp="0.1", hidden="50%", layers=0.5)
    assert t.heads == 8 and t.kv_heads == 2  # 8.4 -> 8 (feasible), 8 needs both KV groups
    assert t.hidden == 448 and t.mlp == 512 and t.layers == 12  # 486.4 -> multiple of 64
    t = resolve_targets(cfg, heads="4", mlp="100", layers="3", hidden="320")
    assert (t.heads, t.kv_heads, t.mlp, t.layers, t.hidden) == (4, 1, 100, 3, 320)  # counts exact
    t = resolve_targets(cfg, heads=4)
    assert t.hidden == 256  # hidden follows heads x head_dim when not given
    t = resolve_targets(cfg, mlp=0.01)
    assert t.mlp == 64  # 48.6 -> nearest multiple of 32
    t = resolve_targets(cfg, mlp=0.005)
    assert t.mlp == 32  # never below 32
    assert feasible_heads(14, 2) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14]


def test_parse_amount():
    assert parse_amount("7", "x") == 7 and isinstance(parse_amount("7", "x"), int)
    assert parse_amount("0.25", "x") == 0.25 and parse_amount("25%", "x") == 0.25
    assert parse_amount("1.0", "x") == 1.0 and parse_amount(None, "x") is None
    for bad in ("0", "-2", "1.5", "0.0", "abc", True, "nan"):
        with pytest.raises(PrunerecError):
            parse_amount(bad, "--heads")


@pytest.mark.parametrize("kwargs, message", [
    (dict(heads=15), "only 14 query heads"),
    (dict(heads=9), "cannot be spread evenly"),
    (dict(heads=7, kv_heads=2), "not divisible"),
    (dict(kv_heads=3), "only 2 KV heads"),
    (dict(layers=0), "at least 1"),
    (dict(layers=25), "only 24 layers"),
    (dict(hidden=0), "at least 1"),
    (dict(hidden=1000), "only 896 hidden"),
    (dict(mlp=5000), "only 4864 MLP"),
    (dict(mlp="-1"), "at least 1"),
    (dict(heads="2.5"), "ratio must lie in"),
])
def test_impossible_targets_refused(kwargs, message):
    with pytest.raises(PrunerecError, match=message):
        resolve_targets(qwen05b(), **kwargs)


def test_target_files(tmp_path):
    js = tmp_path / "t.json"
    js.write_text('{"heads": 4, "mlp": 0.25, "layers": 6}')
    yml = tmp_path / "t.yaml"
    yml.write_text("targets:\n  heads: 0.5\n  hidden: 384\n")
    assert load_target_file(js) == {"heads": 4, "mlp": 0.25, "layers": 6}
    t = resolve_targets(qwen05b(), config_file=js, layers=10)  # flags override the file
    assert (t.heads, t.mlp, t.layers) == (4, 1216, 10)
    t = resolve_targets(qwen05b(), config_file=yml)
    assert (t.heads, t.hidden) == (7, 384)
    bad = tmp_path / "bad.json"
    bad.write_text('{"head": 4}')
    with pytest.raises(PrunerecError, match="unknown keys"):
        resolve_targets(qwen05b(), config_file=bad)
    bad.write_text("{not json")
    with pytest.raises(PrunerecError, match="cannot read"):
        load_target_file(bad)
    with pytest.raises(PrunerecError, match="not found"):
        load_target_file(tmp_path / "missing.yaml")
