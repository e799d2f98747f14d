"""Importance scores on tiny random Qwen2 models with planted dead components."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from prunerec.compress import importance as imp

HIDDEN, HEADS, KV, HEAD_DIM, INTER, LAYERS, VOCAB = 48, 4, 2, 16, 64, 3, 97


def tiny(tied: bool = True, seed: int = 0, layers: int = LAYERS) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=layers,
        num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM,
        tie_word_embeddings=tied, max_position_embeddings=64,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    return model


def batches(n=2, bsz=3, t=10, seed=1, labels=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (bsz, t), generator=g)
        mask = torch.ones_like(ids)
        mask[1, t - 3:] = 0  # right padding
        mask[2, t - 1:] = 0
        b = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}
        if labels:
            lab = ids.masked_fill(mask == 0, -100)
            lab[:, :2] = -100
            b["labels"] = lab
        out.append(b)
    return out


def hs(h):
    return slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)


# ----------------------------------------------------------------------------- heads


@pytest.mark.parametrize("mode", ["zero_o_proj", "scale_query"])
def test_dead_head_scores_lowest(mode):
    model = tiny()
    dead = {0: 2, 1: 1, 2: 3}
    with torch.no_grad():
        for l, h in dead.items():
            model.model.layers[l].self_attn.o_proj.weight[:, hs(h)] = 0
    scores, masked = imp.head_importance_kl(model, batches(), alpha=0.0, mask_mode=mode)
    assert scores.shape == (LAYERS, HEADS) and masked == [[], [], []]
    for l, h in dead.items():
        assert scores[l, h] == 0 and scores[l].argmin() == h  # KL 0 -> min after min-max
        assert scores[l].max() == 1
    scores7, _ = imp.head_importance_kl(model, batches(), mask_mode=mode)
    assert scores7[0].argmin() == dead[0]
    torch.testing.assert_close(scores7[1], 0.7 * scores7[0] + 0.3 * scores[1])


def test_head_kl_sequential_masking():
    model = tiny()
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight[:, hs(1)] = 0
    b = batches()
    scores, masked = imp.head_importance_kl(model, b, n_remove_per_layer=2)
    assert len(masked) == LAYERS and all(len(m) == 2 for m in masked)
    assert 1 in masked[0]
    # layer-0 scores are the same, later layers are scored with earlier removals in place
    plain, _ = imp.head_importance_kl(model, b)
    torch.testing.assert_close(scores[0], plain[0])
    assert not torch.allclose(scores[2], plain[2])


def test_masked_heads_restores_model():
    model = tiny()
    ids = batches()[0]
    with torch.no_grad():
        ref = model(**ids).logits
        with imp.masked_heads(model, {0: [0, 1]}):
            changed = model(**ids).logits
        after = model(**ids).logits
    assert not torch.allclose(ref, changed) and torch.equal(ref, after)
    with pytest.raises(ValueError):
        with imp.masked_heads(model, {0: [0]}, mode="nope"):
            pass


def test_select_heads_gqa():
    # 8 query heads, 4 KV groups of 2; layer 0 favours groups 1 and 3, layer 1 groups 0 and 2
    importance = torch.tensor(
        [
            [0.1, 0.0, 0.9, 0.3, 0.2, 0.1, 0.4, 0.8],
            [0.9, 0.8, 0.0, 0.1, 0.2, 0.7, 0.3, 0.0],
        ]
    )
    kv, q = imp.select_heads(importance, n_kv_heads_total=4, keep_q_per_layer=2, keep_kv_per_layer=2)
    assert kv == [[1, 3], [0, 2]]
    assert q == [[2, 7], [0, 5]]
    kv, q = imp.select_heads(importance, 4, keep_q_per_layer=4, keep_kv_per_layer=2)
    assert q == [[2, 3, 6, 7], [0, 1, 4, 5]]
    kv, q = imp.select_heads(importance, 4, keep_q_per_layer=1, keep_kv_per_layer=1)
    assert kv == [[1], [0]] and q == [[2], [0]]


@pytest.mark.parametrize(
    "n_kv,kq,kkv",
    [(4, 3, 2), (4, 6, 2), (4, 0, 1), (4, 2, 0), (4, 10, 5), (4, 2, 5), (3, 2, 1), (4, 9, 1)],
)
def test_select_heads_refuses_impossible(n_kv, kq, kkv):
    with pytest.raises(ValueError):
        imp.select_heads(torch.rand(2, 8), n_kv, kq, kkv)


def test_select_heads_feeds_surgery():
    from prunerec.model.surgery import keep_attention_heads

    model = tiny()
    scores = imp.random_head_scores(model, seed=3)
    kv, q = imp.select_heads(scores, KV, keep_q_per_layer=2, keep_kv_per_layer=1)
    keep_attention_heads(model, kv, q)
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 1


# ----------------------------------------------------------------------------- hidden


@torch.no_grad()
def kill_hidden_dim(model, j, everything=False):
    model.model.embed_tokens.weight[:, j] = 0
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        a.o_proj.weight[j] = 0
        m.down_proj.weight[j] = 0
        if everything:
            for lin in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj):
                lin.weight[:, j] = 0
            layer.input_layernorm.weight[j] = 0
            layer.post_attention_layernorm.weight[j] = 0
    if everything:
        model.model.norm.weight[j] = 0
        model.lm_head.weight[:, j] = 0


@pytest.mark.parametrize("tied", [True, False])
def test_hidden_importance_dead_dim(tied):
    model = tiny(tied)
    kill_hidden_dim(model, 5)
    s = imp.hidden_importance(model, batches())
    assert s.shape == (HIDDEN,) and s[5] == 0 and s.argmin() == 5
    assert (s[torch.arange(HIDDEN) != 5] > 0).all()


def test_hidden_importance_matches_closed_form():
    """Only the last real position carries gradient: s_j = ||W[pred, j] * h_last_j||."""
    model = tiny(False)
    b = batches(n=1)[0]
    with torch.no_grad():
        h = model.model(**b).last_hidden_state
        last = b["attention_mask"].sum(1) - 1
        hl = h[torch.arange(3), last]
        pred = model.lm_head(hl).argmax(-1)
        expect = (model.lm_head.weight[pred] * hl).pow(2).sum(0).sqrt()
    torch.testing.assert_close(imp.hidden_importance(model, [b]), expect, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- MLP


def test_mlp_frequency_dead_channel():
    model = tiny()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[9] = 0
            layer.mlp.gate_proj.weight[9] = 0
    b = batches()
    counts = imp.mlp_channel_frequency(model, b, k=8)
    n_real = sum(int(x["attention_mask"].sum()) for x in b)
    assert len(counts) == LAYERS and all(c.shape == (INTER,) for c in counts)
    for c in counts:
        assert c[9] == 0 and int(c.sum()) == 8 * n_real  # padding tokens are not counted


def test_mlp_activation_share():
    model = tiny()
    share = imp.mlp_activation_share(model, batches())
    assert share.shape == (LAYERS, 5)
    assert (share > 0).all() and (share <= 1 + 1e-6).all()
    assert (share[:, 1:] >= share[:, :-1]).all()
    agg = imp.mlp_activation_share(model, batches(), percents=(10, 100), per_token=False)
    torch.testing.assert_close(agg[:, 1], torch.ones(LAYERS))


# ----------------------------------------------------------------------------- layers


@torch.no_grad()
def make_identity(model, l):
    model.model.layers[l].self_attn.o_proj.weight.zero_()
    model.model.layers[l].mlp.down_proj.weight.zero_()


def own_text(model, seed=2):
    """Calibration text the model itself finds likely (its greedy continuations)."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, VOCAB, (4, 3), generator=g)
    seqs = model.generate(prompts, max_new_tokens=9, do_sample=False, pad_token_id=0)
    labels = seqs.clone()
    labels[:, :3] = -100
    return [{"input_ids": seqs, "attention_mask": torch.ones_like(seqs), "labels": labels}]


def test_greedy_removes_identity_layer_first():
    model = tiny(layers=4)
    make_identity(model, 2)
    b = own_text(model)
    base = imp.calibration_perplexity(model, b)
    with imp.skipped_layers(model, [2]):
        assert imp.calibration_perplexity(model, b) == pytest.approx(base, rel=1e-6)
    order = imp.greedy_layer_removal(model, b, n_remove=2)
    assert order[0] == 2 and len(set(order)) == 2
    assert len(model.model.layers) == 4 and all(type(l).__name__ == "Qwen2DecoderLayer" for l in model.model.layers)
    with pytest.raises(ValueError):
        imp.greedy_layer_removal(model, b, n_remove=4)


def test_perplexity_uses_labels_and_ignores_padding():
    model = tiny()
    b = batches(labels=True)
    with torch.no_grad():
        loss = model(**b[0]).loss
    assert imp.calibration_perplexity(model, b[:1]) == pytest.approx(float(torch.exp(loss)), rel=1e-5)


def test_shortgpt_identity_layer_lowest():
    model = tiny(layers=4)
    make_identity(model, 1)
    s = imp.shortgpt_layer_scores(model, batches())
    assert s.shape == (4,) and s.argmin() == 1 and s[1].abs() < 1e-6 and (s[[0, 2, 3]] > 1e-3).all()


# ----------------------------------------------------------------------------- baselines


@torch.no_grad()
def kill_head(model, l, h):
    a = model.model.layers[l].self_attn
    a.q_proj.weight[hs(h)] = 0
    a.q_proj.bias[hs(h)] = 0
    a.o_proj.weight[:, hs(h)] = 0


@torch.no_grad()
def kill_channel(model, c):
    for layer in model.model.layers:
        layer.mlp.gate_proj.weight[c] = 0
        layer.mlp.up_proj.weight[c] = 0
        layer.mlp.down_proj.weight[:, c] = 0


@pytest.mark.parametrize("kind", ["magnitude", "wanda"])
def test_baseline_heads(kind):
    model = tiny()
    kill_head(model, 1, 2)
    fn = getattr(imp, f"{kind}_head_scores")
    s = fn(model) if kind == "magnitude" else fn(model, batches())
    assert s.shape == (LAYERS, HEADS) and s[1, 2] == 0 and s[1].argmin() == 2 and (s[0] > 0).all()


@pytest.mark.parametrize("kind", ["magnitude", "wanda"])
@pytest.mark.parametrize("tied", [True, False])
def test_baseline_hidden(kind, tied):
    model = tiny(tied)
    kill_hidden_dim(model, 11, everything=(kind == "magnitude"))  # wanda: zero residual suffices
    fn = getattr(imp, f"{kind}_hidden_scores")
    s = fn(model) if kind == "magnitude" else fn(model, batches())
    assert s.shape == (HIDDEN,) and s[11] == 0 and s.argmin() == 11
    assert (s[torch.arange(HIDDEN) != 11] > 0).all()


@pytest.mark.parametrize("kind", ["magnitude", "wanda"])
def test_baseline_mlp(kind):
    model = tiny()
    kill_channel(model, 30)
    fn = getattr(imp, f"{kind}_mlp_scores")
    s = fn(model) if kind == "magnitude" else fn(model, batches())
    assert len(s) == LAYERS
    for c in s:
        assert c.shape == (INTER,) and c[30] == 0 and c.argmin() == 30


def test_wanda_mlp_zero_up_gate_only():
    """Wanda counts activations: a channel with dead gate/up rows has no down input either."""
    model = tiny()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[4] = 0
            layer.mlp.up_proj.weight[4] = 0
    for c in imp.wanda_mlp_scores(model, batches()):
        assert c[4] == 0


def test_random_reproducible():
    model = tiny()
    for name, shape in [("head", (LAYERS, HEADS)), ("hidden", (HIDDEN,)), ("layer", (LAYERS,))]:
        fn = getattr(imp, f"random_{name}_scores")
        a, b, c = fn(model, seed=7), fn(model, seed=7), fn(model, seed=8)
        assert a.shape == shape and torch.equal(a, b) and not torch.equal(a, c)
    m1, m2 = imp.random_mlp_scores(model, seed=1), imp.random_mlp_scores(model, seed=1)
    assert len(m1) == LAYERS and all(torch.equal(x, y) and x.shape == (INTER,) for x, y in zip(m1, m2))
    assert not torch.equal(m1[0], m1[1])
