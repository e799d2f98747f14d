"""The greedy layer search that carries each batch's stream up the model once per round, with the
candidates stacked as copies of the batch, gives the perplexities, and so the removal order, of
the original search: one full forward per candidate with the removed layers skipped. Both run
the same float32 operations on the same values; only the number of rows in a matrix product
differs (BLAS blocking: the last bits, ~1e-7 relative), and regrouping rows by length
(length_buckets) changes only the order of the sum over rows. 1e-6 relative catches any real
change (a layer run twice or skipped moves a perplexity by far more)."""

import math

import pytest
import torch

from prunerec.compress import hooks
from prunerec.compress import importance as imp
from tests.compress.test_importance import batches, tiny


@torch.no_grad()
def reference_greedy(model, batches_, n_remove):
    """The original implementation, kept verbatim: every candidate is a full forward."""
    n_layers, removed, rounds = len(hooks.decoder_layers(model)), [], []
    for _ in range(n_remove):
        best, best_ppl, ppls = None, math.inf, {}
        for c in range(n_layers):
            if c in removed:
                continue
            with hooks.skipped_layers(model, removed + [c]):
                ppls[c] = imp.calibration_perplexity(model, batches_)
            if ppls[c] < best_ppl:
                best, best_ppl = c, ppls[c]
        removed.append(best)
        rounds.append(ppls)
    return removed, rounds


@pytest.mark.parametrize("labels", [False, True])
def test_candidate_perplexities_equal_full_forwards(labels):
    model = tiny(layers=5, seed=7)
    b = batches(n=3, bsz=3, t=11, seed=2, labels=labels)
    want_order, want_rounds = reference_greedy(model, b, n_remove=3)
    inputs = [imp._perplexity_input(model, x) for x in b]
    n = sum(int(p.labelled.sum()) for p in inputs)
    removed = []
    for want in want_rounds:
        kept = [l for l in range(5) if l not in removed]
        totals = dict.fromkeys(kept, 0.0)
        for p in inputs:
            for c, value in imp._candidate_nll(model, p, kept).items():
                totals[c] += value
        got = {c: math.exp(t / n) for c, t in totals.items()}
        assert got.keys() == want.keys()
        assert all(got[c] == pytest.approx(want[c], rel=1e-6) for c in want)
        removed.append(min(want, key=lambda c: (want[c], c)))
    assert imp.greedy_layer_removal(model, b, n_remove=3) == want_order == removed


def test_candidates_in_small_groups_match_one_stack():
    model = tiny(layers=5, seed=11)
    p = imp._perplexity_input(model, batches(n=1, bsz=3, t=10, seed=3)[0])
    kept = [0, 1, 3, 4]
    one_stack = imp._candidate_nll(model, p, kept)
    one_each = imp._candidate_nll(model, p, kept, tokens_per_pass=1)
    assert one_stack.keys() == one_each.keys() == set(kept)
    assert all(one_each[c] == pytest.approx(one_stack[c], rel=1e-6) for c in kept)


def test_greedy_leaves_model_unchanged():
    model = tiny(layers=4, seed=8)
    b = batches(n=2, bsz=3, t=9, seed=4)
    before = imp.calibration_perplexity(model, b)
    imp.greedy_layer_removal(model, b, n_remove=2)
    assert imp.calibration_perplexity(model, b) == before
    assert len(hooks.decoder_layers(model)) == 4


def test_length_buckets_keep_every_row():
    b = batches(n=2, bsz=3, t=9, seed=6, labels=True)
    buckets = hooks.length_buckets(b, rows=2)
    def rows(bs):
        out = []
        for x in bs:
            for r, n in enumerate(x["attention_mask"].sum(1).tolist()):
                out.append((tuple(x["input_ids"][r, :n].tolist()), tuple(x["labels"][r, :n].tolist())))
                assert not x["attention_mask"][r, n:].any()
        return sorted(out)
    assert rows(buckets) == rows(b)
    assert [int(x["attention_mask"].sum(1).max()) for x in buckets] == [x["input_ids"].shape[1] for x in buckets]
    model = tiny(layers=3, seed=9)
    assert imp.calibration_perplexity(model, buckets) == pytest.approx(imp.calibration_perplexity(model, b), rel=1e-6)


def test_length_buckets_leave_left_padding_alone():
    b = batches(n=1, bsz=3, t=8, seed=1)
    left = {"input_ids": b[0]["input_ids"], "attention_mask": b[0]["attention_mask"].flip(1)}
    assert hooks.length_buckets([left], rows=1) == [left]
