"""The cached, head-batched Stage I head importance gives the scores (and so the kept heads) of
the original algorithm: one full masked forward per head.

Tolerance: both paths do the same float32 operations on the same values; only the batch shape
of the matrix products differs (one copy of the batch vs k stacked copies), which changes the
summation blocking in BLAS, i.e. the last bits (~1e-7 relative). Scores are min-max normalised
within a layer, which divides those differences by the spread of the layer's KLs (up to ~100x
the smallest KL here, with scale_query's near-identical heads), so scores in [0, 1] agree to
~1e-5; 1e-4 absolute leaves room and still catches any real change (a wrong layer input or a
mask on the wrong copy moves scores by >1e-2).
"""

import pytest
import torch

from prunerec.compress import hooks
from prunerec.compress import importance as imp
from tests.compress.test_importance import LAYERS, batches, tiny


@torch.no_grad()
def reference_head_importance(model, batches_, alpha=0.7, n_remove_per_layer=None, mask_mode="zero_o_proj"):
    """The original implementation, kept verbatim: every head is scored by a full forward."""
    n_layers, n_heads, _ = hooks.model_dims(model)
    batches_ = [hooks.to_model_device(model, b) for b in hooks.batch_list(batches_)]
    importance = torch.zeros(n_layers, n_heads)
    masked: dict[int, list[int]] = {}
    with hooks.eval_mode(model):
        ref = [hooks.last_token_logp(model, b) for b in batches_]
        for l in range(n_layers):
            raw = torch.zeros(n_heads)
            for h in range(n_heads):
                with hooks.masked_heads(model, {**masked, l: [h]}, mask_mode):
                    raw[h] = hooks.mean_kl_full_forward(model, batches_, ref)
            span = raw.max() - raw.min()
            norm = (raw - raw.min()) / span if span > 0 else torch.zeros_like(raw)
            importance[l] = norm if l == 0 else alpha * importance[l - 1] + (1 - alpha) * norm
            if n_remove_per_layer:
                masked[l] = sorted(importance[l].argsort()[:n_remove_per_layer].tolist())
    return importance, [masked.get(l, []) for l in range(n_layers)]


@pytest.mark.parametrize("mode", ["zero_o_proj", "scale_query"])
@pytest.mark.parametrize("n_remove", [None, 2])
@pytest.mark.parametrize("heads_per_pass,rows_per_bucket", [(1, 1), (3, 4), (None, 16)])
def test_cached_scores_equal_reference(mode, n_remove, heads_per_pass, rows_per_bucket):
    model = tiny(layers=4, seed=3)
    b = batches(n=2, bsz=3, t=10, seed=5)
    want, want_masked = reference_head_importance(model, b, n_remove_per_layer=n_remove, mask_mode=mode)
    got, got_masked = imp.head_importance_kl(model, b, n_remove_per_layer=n_remove, mask_mode=mode,
                                             heads_per_pass=heads_per_pass, rows_per_bucket=rows_per_bucket)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert got_masked == want_masked
    assert imp.select_heads(got, 2, 2, 1) == imp.select_heads(want, 2, 2, 1)


def test_cached_scores_left_padding_and_single_row():
    model = tiny(seed=4)
    ids = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(2))
    left = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(left)
    mask[0, :3] = 0
    b = [{"input_ids": ids}, {"input_ids": left.masked_fill(mask == 0, 0), "attention_mask": mask}]
    want, _ = reference_head_importance(model, b)
    got, _ = imp.head_importance_kl(model, b, heads_per_pass=4)
    assert got.shape == (LAYERS, 4)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_cached_scores_leave_model_unchanged():
    model = tiny()
    b = batches()[0]
    before = model(**b).logits
    imp.head_importance_kl(model, [b], n_remove_per_layer=1)
    assert torch.equal(model(**b).logits, before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
