"""Physical pruning of tiny random Qwen2 models: exactness, save/reload, generate, counts."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from prunerec.model.surgery import (
    count_parameters,
    count_parameters_from_config,
    keep_attention_heads,
    keep_hidden,
    keep_mlp_channels,
    remove_layers,
)

HIDDEN, HEADS, KV, HEAD_DIM, INTER, LAYERS, VOCAB = 48, 4, 2, 16, 64, 3, 97


def tiny(tied: bool, seed: int = 0, **kw) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM,
        tie_word_embeddings=tied, max_position_embeddings=64, **kw,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))  # non-unit norms test the RMSNorm compensation
            else:
                p.normal_(0, 0.15)  # biases too, so bias slicing is exercised
    return model


def batch():
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


@torch.no_grad()
def logits(model):
    ids, mask = batch()
    return model(input_ids=ids, attention_mask=mask).logits


def head_slice(h):
    return slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)


@torch.no_grad()
def zero_heads(model, keep_q):
    for layer, q in zip(model.model.layers, keep_q):
        for h in range(HEADS):
            if h not in q:
                layer.self_attn.o_proj.weight[:, head_slice(h)] = 0


@torch.no_grad()
def zero_hidden(model, drop):
    model.model.embed_tokens.weight[:, drop] = 0
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight[drop, :] = 0
        layer.mlp.down_proj.weight[drop, :] = 0


@torch.no_grad()
def zero_mlp(model, keep):
    for layer, k in zip(model.model.layers, keep):
        drop = [c for c in range(INTER) if c not in set(k.tolist())]
        layer.mlp.down_proj.weight[:, drop] = 0


@torch.no_grad()
def make_identity(model, layers):
    for l in layers:
        model.model.layers[l].self_attn.o_proj.weight.zero_()
        model.model.layers[l].mlp.down_proj.weight.zero_()


KEEP_KV = [[0, 1], [1, 0], [1, 0]]
KEEP_Q = [[0, 3], [1, 2], [0, 2]]  # one query head per kept group; 2 heads x 16 = 32 != hidden 48
KEEP_KV_1 = [[1], [0], [1]]
KEEP_Q_1 = [[2, 3], [0, 1], [2, 3]]


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("keep_kv,keep_q", [(KEEP_KV, KEEP_Q), (KEEP_KV_1, KEEP_Q_1)])
def test_heads_exact(tied, keep_kv, keep_q):
    model = tiny(tied)
    zero_heads(model, keep_q)
    ref = logits(model)
    keep_attention_heads(model, keep_kv, keep_q)
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, len(keep_kv[0]), HEAD_DIM)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (2 * HEAD_DIM, HIDDEN) and attn.q_proj.bias.shape == (2 * HEAD_DIM,)
    assert attn.k_proj.weight.shape == (len(keep_kv[0]) * HEAD_DIM, HIDDEN)
    assert attn.o_proj.weight.shape == (HIDDEN, 2 * HEAD_DIM)
    torch.testing.assert_close(logits(model), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "keep_kv,keep_q,msg",
    [
        ([[0, 1], [0], [0, 1]], [[0, 2], [0], [0, 2]], "same"),  # counts differ across layers
        ([[0, 1]] * 3, [[0, 1, 2]] * 3, "same number"),  # 2 + 1 heads over two groups
        ([[0]] * 3, [[0, 2]] * 3, "dropped KV"),  # head 2 belongs to group 1
        ([[0]] * 3, [[0, 7]] * 3, "indices must lie"),
        ([[0]] * 2, [[0]] * 2, "one entry per layer"),
        ([[]] * 3, [[]] * 3, "nothing"),
        ([[0, 0]] * 3, [[0, 1]] * 3, "duplicate"),
    ],
)
def test_heads_invalid(keep_kv, keep_q, msg):
    model = tiny(True)
    with pytest.raises(ValueError, match=msg):
        keep_attention_heads(model, keep_kv, keep_q)


@pytest.mark.parametrize("tied", [True, False])
def test_hidden_exact(tied):
    model = tiny(tied)
    drop = [1, 5, 6, 20, 33, 47, 30, 31, 2, 9, 11, 40]
    zero_hidden(model, drop)
    ref = logits(model)
    keep = torch.tensor([j for j in range(HIDDEN) if j not in drop])
    eps = model.config.rms_norm_eps
    keep_hidden(model, keep[torch.randperm(len(keep))])  # order must not matter
    assert model.config.hidden_size == 36 and model.config.head_dim == HEAD_DIM
    assert model.config.rms_norm_eps == pytest.approx(eps * 48 / 36)
    assert model.model.norm.variance_epsilon == pytest.approx(eps * 48 / 36)
    assert model.model.embed_tokens.weight.shape == (VOCAB, 36)
    assert model.lm_head.weight.shape == (VOCAB, 36)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    torch.testing.assert_close(logits(model), ref, atol=1e-5, rtol=0)


def test_hidden_without_compensation_would_differ():
    """Guard that the test above really exercises the RMSNorm correction."""
    model = tiny(True)
    drop = list(range(0, HIDDEN, 4))
    zero_hidden(model, drop)
    ref = logits(model)
    keep_hidden(model, torch.tensor([j for j in range(HIDDEN) if j not in drop]))
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "variance_epsilon"):
                m.weight /= (48 / 36) ** 0.5
    assert (logits(model) - ref).abs().max() > 1e-2


@pytest.mark.parametrize("tied", [True, False])
def test_mlp_exact(tied):
    model = tiny(tied)
    g = torch.Generator().manual_seed(3)
    keep = [torch.randperm(INTER, generator=g)[:24] for _ in range(LAYERS)]
    zero_mlp(model, keep)
    ref = logits(model)
    keep_mlp_channels(model, keep)
    assert model.config.intermediate_size == 24
    assert model.model.layers[1].mlp.down_proj.weight.shape == (HIDDEN, 24)
    torch.testing.assert_close(logits(model), ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="same number"):
        keep_mlp_channels(model, [torch.arange(4), torch.arange(4), torch.arange(5)])


@pytest.mark.parametrize("tied", [True, False])
def test_remove_identity_layers(tied):
    model = tiny(tied, use_sliding_window=True, max_window_layers=1, sliding_window=4)
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    make_identity(model, [0, 2])
    ref = logits(model)
    remove_layers(model, [0, 2])
    assert model.config.num_hidden_layers == 1 and len(model.model.layers) == 1
    assert model.config.layer_types == ["sliding_attention"]
    assert model.config.max_window_layers == 0
    assert model.model.layers[0].self_attn.layer_idx == 0
    torch.testing.assert_close(logits(model), ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        remove_layers(model, [0])


def test_remove_layers_keeps_cache_consistent():
    model = tiny(True)
    remove_layers(model, [1])
    assert [l.self_attn.layer_idx for l in model.model.layers] == [0, 1]
    ids, _ = batch()
    with torch.no_grad():
        full = model(input_ids=ids[:1]).logits[:, -1]
        out = model(input_ids=ids[:1, :-1], use_cache=True)
        step = model(input_ids=ids[:1, -1:], past_key_values=out.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_all_stages_save_reload_generate(tied, tmp_path):
    model = tiny(tied)
    drop_hidden = [0, 7, 13, 19, 25, 31, 37, 43, 44, 45, 46, 47]
    g = torch.Generator().manual_seed(5)
    keep_mlp = [torch.randperm(INTER, generator=g)[:16] for _ in range(LAYERS)]
    zero_heads(model, KEEP_Q)
    zero_hidden(model, drop_hidden)
    zero_mlp(model, keep_mlp)
    make_identity(model, [1])
    ref = logits(model)

    keep_attention_heads(model, KEEP_KV, KEEP_Q)
    keep_hidden(model, torch.tensor([j for j in range(HIDDEN) if j not in drop_hidden]))
    keep_mlp_channels(model, keep_mlp)
    remove_layers(model, [1])
    torch.testing.assert_close(logits(model), ref, atol=1e-5, rtol=0)

    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is Qwen2ForCausalLM
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "layer_types"):
        assert getattr(loaded.config, key) == getattr(model.config, key), key
    assert (loaded.config.hidden_size, loaded.config.num_attention_heads * loaded.config.head_dim) == (36, 32)
    sd, lsd = model.state_dict(), loaded.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in lsd.items()}
    torch.testing.assert_close(logits(loaded), ref, atol=1e-5, rtol=0)
    assert count_parameters(loaded) == count_parameters(model) == count_parameters_from_config(loaded.config)

    ids, mask = batch()
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    out_mem = model.generate(input_ids=ids[:1], attention_mask=mask[:1], **kw)
    out_disk = loaded.generate(input_ids=ids[:1], attention_mask=mask[:1], **kw)
    assert out_mem.shape == (1, 14) and torch.equal(out_mem, out_disk)
    beams = loaded.generate(input_ids=ids[:1], num_beams=3, num_return_sequences=3, **kw)
    assert beams.shape[0] == 3


QWEN2_05B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
)


def test_param_counts_qwen2_05b():
    cfg = Qwen2Config(**QWEN2_05B)
    assert count_parameters_from_config(cfg)["non_embedding"] == 357_898_112
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    counts = count_parameters(model)
    assert counts == count_parameters_from_config(cfg)
    assert counts["non_embedding"] == 357_898_112
    assert counts["total"] == 357_898_112 + 151936 * 896

    # the paper's target shapes, reached by surgery on the meta model
    keep_hidden(model, torch.arange(448))
    keep_mlp_channels(model, [torch.arange(896)] * 24)
    remove_layers(model, list(range(8, 24)))
    assert count_parameters(model)["non_embedding"] == 16_990_656
    assert count_parameters_from_config(model.config)["non_embedding"] == 16_990_656
    keep_attention_heads(model, [[0]] * 8, [list(range(7))] * 8)
    assert count_parameters(model)["non_embedding"] == 13_316_032
    assert count_parameters_from_config(model.config)["non_embedding"] == 13_316_032
    assert model.config.head_dim == 64 and model.lm_head.weight is model.model.embed_tokens.weight


def test_param_counts_untied():
    cfg = Qwen2Config(**{**QWEN2_05B, "tie_word_embeddings": False, "num_hidden_layers": 2})
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    counts = count_parameters(model)
    assert counts == count_parameters_from_config(cfg)
    assert counts["embedding"] == 2 * 151936 * 896
