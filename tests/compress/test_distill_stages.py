"""Distillation loss and the stage functions on tiny random Qwen2 models (seconds)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from prunerec.compress.distill import DistillSettings, Lineage, hidden_loss, kd_loss, make_loss_fn
from prunerec.compress.stages import (
    METHODS,
    ScoringOptions,
    build_calibration,
    stage1_attention_hidden,
    stage2_mlp,
    stage3_layers,
)
from prunerec.compress.targets import Targets
from prunerec.errors import PrunerecError
from prunerec.model import surgery
from prunerec.model.batching import collate, response_ce
from prunerec.model.encode import Example

VOCAB = 61


def tiny(seed=0, layers=3):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
                      max_position_embeddings=64)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p)) if "norm" in name else p.normal_(0, 0.2)
    return model


def examples(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 6 + i % 4
        out.append(Example(torch.randint(1, VOCAB, (length,), generator=g).tolist(), 2 + i % 2))
    return out


# ----------------------------------------------------------------------------- distillation


def test_kd_loss_parts():
    torch.manual_seed(0)
    s, t = torch.randn(5, VOCAB), torch.randn(5, VOCAB)
    y = torch.randint(0, VOCAB, (5,))
    assert torch.allclose(kd_loss(s, t, y, lam=1.0), F.cross_entropy(s, y))
    assert torch.allclose(kd_loss(s, s, y, lam=0.3), 0.3 * F.cross_entropy(s, y), atol=1e-6)  # KL(p||p) = 0
    for tau in (1.0, 2.0):
        pt, ls = F.softmax(t / tau, -1), F.log_softmax(s / tau, -1)
        kl = (pt * (pt.log() - ls)).sum(-1).mean()
        want = 0.2 * F.cross_entropy(s, y) + 0.8 * tau**2 * kl
        assert torch.allclose(kd_loss(s, t, y, lam=0.2, tau=tau), want, atol=1e-5)
    with pytest.raises(PrunerecError):
        DistillSettings(lam=1.5)
    with pytest.raises(PrunerecError):
        DistillSettings(tau=0)


def test_distill_loss_uses_shifted_response_tokens_only():
    teacher, student = tiny(0), tiny(1)
    loss_fn = make_loss_fn(teacher, DistillSettings(lam=0.2, tau=1.0))
    assert not any(p.requires_grad for p in teacher.parameters())
    ex = examples(4)
    # student == teacher: the KL vanishes and what is left is lambda * the shifted response CE
    same = copy.deepcopy(teacher)
    batch = collate(ex, pad_id=0)
    assert torch.allclose(loss_fn(same, batch), 0.2 * response_ce(same, batch), atol=1e-5)
    # padding does not count: the batch loss is the token-weighted mean of per-example losses
    per = [(loss_fn(student, collate([e], 0)).item(), e.n_response) for e in ex]
    want = sum(l * n for l, n in per) / sum(n for _, n in per)
    assert loss_fn(student, batch).item() == pytest.approx(want, rel=1e-4)
    # gradients reach the student only
    loss_fn(student, batch).backward()
    assert student.lm_head.weight.grad is not None and teacher.lm_head.weight.grad is None


def test_hidden_loss_hand_made():
    # hidden_states as Hugging Face lays them out: embeddings, layer outputs, final normed output
    teacher = [torch.full((1, 2, 4), float(i)) for i in range(5)]  # 4 layers, hidden 4
    mask = torch.tensor([[1, 0]])
    keep = (0, 2)
    same = [t[..., list(keep)] for t in teacher[:3]] + [torch.zeros(1, 2, 2)]  # student: 3 layers
    lineage = Lineage(layers=(0, 1, 3), hidden=keep)
    # the last student layer (and so its final output) is left to the logits
    assert hidden_loss(same, teacher, lineage, mask).item() == 0.0
    # student layer i is compared with teacher layer lineage.layers[i]: here 0 -> 0, 1 -> 1 only
    off = [t.clone() for t in same]
    off[2][0, 0] = 0.0  # teacher layer 1's output is 2.0 -> error 1 on this term
    assert hidden_loss(off, teacher, lineage, mask).item() == pytest.approx(0.5 * 1.0)
    # padded positions do not count
    padded = [t.clone() for t in same]
    padded[1][0, 1] = 99.0
    assert hidden_loss(padded, teacher, lineage, mask).item() == 0.0
    # the kept dimensions are the ones compared
    wrong_dims = [t[..., [1, 3]] * 0 + 7 for t in teacher[:3]] + [torch.zeros(1, 2, 2)]
    assert hidden_loss(wrong_dims, teacher, lineage, mask).item() > 1
    assert Lineage.of([{"hidden": [0, 2]}, {"mlp": [[1]]}, {"layers": [0, 1, 3]}], 4) == lineage
    assert Lineage.of([], 3) == Lineage((0, 1, 2))
    with pytest.raises(PrunerecError):
        DistillSettings(hidden_weight=-1)


def test_hidden_term_vanishes_where_only_a_pass_through_layer_was_removed():
    teacher = tiny(0, layers=4)
    with torch.no_grad():  # layer 1 adds nothing to the residual stream
        teacher.model.layers[1].self_attn.o_proj.weight.zero_()
        teacher.model.layers[1].mlp.down_proj.weight.zero_()
    student = copy.deepcopy(teacher)
    surgery.remove_layers(student, [1])
    settings = DistillSettings(lam=0.2, hidden_weight=3.0)
    batch = collate(examples(4), pad_id=0)
    with_hidden = make_loss_fn(teacher, settings, Lineage.of([{"layers": [0, 2, 3]}], 4))
    logits_only = make_loss_fn(teacher, DistillSettings(lam=0.2))
    assert with_hidden(student, batch).item() == pytest.approx(logits_only(student, batch).item(), abs=1e-6)
    # a lineage that pairs the student with the wrong teacher layers is penalized
    wrong = make_loss_fn(teacher, settings, Lineage((0, 1, 3)))
    assert wrong(student, batch).item() > logits_only(student, batch).item() + 1e-3
    # and the term trains the student
    other = tiny(1, layers=3)
    with_hidden(other, batch).backward()
    assert other.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        make_loss_fn(teacher, settings)


# ----------------------------------------------------------------------------- calibration


def test_build_calibration():
    ex = examples(5)
    calib = build_calibration(ex, pad_id=0, batch_size=2)
    assert calib.n_samples == 5 and len(calib.prompts) == 3 and len(calib.full) == 3
    first = calib.full[0]
    for row, e in enumerate(ex[:2]):
        n, r = len(e.input_ids), e.n_response
        assert first["input_ids"][row, :n].tolist() == list(e.input_ids)
        labels = first["labels"][row]
        assert (labels[: n - r] == -100).all() and (labels[n:] == -100).all()
        assert labels[n - r:n].tolist() == list(e.input_ids[n - r:])
        p = calib.prompts[0]
        assert int(p["attention_mask"][row].sum()) == n - r
        assert p["input_ids"][row, : n - r].tolist() == list(e.input_ids[: n - r])
    with pytest.raises(PrunerecError):
        build_calibration([Example([1, 2], 2)], 0)


# ----------------------------------------------------------------------------- stages


def _calib():
    return build_calibration(examples(6, seed=3), pad_id=0, batch_size=3)


# every width method with the cheap layer criteria; greedy perplexity once, with PruneRec's widths
STAGE_CASES = [(m, lm) for m in METHODS for lm in ("shortgpt", "random")] + [("prunerec", "greedy-ppl")]


@pytest.mark.parametrize("method, layer_method", STAGE_CASES)
def test_stages_reach_targets(tmp_path, method, layer_method):
    model, calib = tiny(), _calib()
    targets = Targets(layers=1, heads=2, kv_heads=1, hidden=16, mlp=32)
    opts = ScoringOptions(method=method, layer_method=layer_method, seed=0)
    r1 = stage1_attention_hidden(model, calib, targets, opts)
    assert r1["shape_after"]["heads"] == 2 and r1["shape_after"]["kv_heads"] == 1
    assert r1["shape_after"]["hidden"] == 16 and len(r1["kept"]["hidden"]) == 16
    assert all(len(q) == 2 for q in r1["kept"]["q_heads"]) and all(len(kv) == 1 for kv in r1["kept"]["kv_heads"])
    for q, kv in zip(r1["kept"]["q_heads"], r1["kept"]["kv_heads"]):
        assert {h // 2 for h in q} == set(kv)  # kept query heads belong to the kept KV group
    r2 = stage2_mlp(model, calib, targets, opts)
    assert r2["shape_after"]["mlp"] == 32 and all(len(k) == 32 for k in r2["kept"]["mlp"])
    r3 = stage3_layers(model, calib, targets, opts)
    assert r3["shape_after"]["layers"] == 1 and len(r3["kept"]["removed"]) == 2
    # a stock checkpoint that reloads to the same function
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    b = calib.full[0]
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                   model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits)
    assert again.model.layers[0].self_attn.q_proj.weight.shape == (16, 16)


def test_scoring_is_deterministic_and_methods_differ():
    targets = Targets(layers=2, heads=2, kv_heads=1, hidden=16, mlp=32)
    kept = {}
    for method in ("prunerec", "prunerec", "random", "magnitude"):
        model = tiny()
        r = stage1_attention_hidden(model, _calib(), targets, ScoringOptions(method=method))
        kept.setdefault(method, []).append(r["kept"]["hidden"])
    assert kept["prunerec"][0] == kept["prunerec"][1]
    assert len({tuple(v[0]) for v in kept.values()}) == 3


def test_nothing_to_prune_is_a_no_op():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full = Targets(layers=3, heads=4, kv_heads=2, hidden=32, mlp=96)
    for stage in (stage1_attention_hidden, stage2_mlp, stage3_layers):
        assert stage(model, _calib(), full, ScoringOptions())["kept"] == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_scoring_options_refused():
    for kwargs in (dict(method="wanda"), dict(layer_method="cosine"), dict(alpha=2.0), dict(mask_mode="x")):
        with pytest.raises(PrunerecError):
            ScoringOptions(**kwargs)


def test_calibration_stability_report():
    model = tiny()
    targets = Targets(layers=1, heads=2, kv_heads=1, hidden=16, mlp=32)
    calib = build_calibration(examples(8, seed=5), pad_id=0, batch_size=2)  # 4 batches -> halves of 4 samples
    opts = ScoringOptions(stability=True)
    records = [stage(model, calib, targets, opts) for stage in (stage1_attention_hidden, stage2_mlp, stage3_layers)]
    found = {name: v for r in records for name, v in r["kept"].get("stability", {}).items()}
    assert set(found) == {"heads", "hidden", "mlp", "layers"}
    for v in found.values():
        assert 0 <= v["jaccard_between_halves"] <= 1 and v["half_samples"] == [4, 4]
    assert "stability" in records[0]["scoring_seconds"]
    # data-free criteria skip it
    r = stage2_mlp(tiny(), calib, targets, ScoringOptions(method="magnitude", stability=True))
    assert "stability" not in r["kept"] and "stability" not in r["scoring_seconds"]
