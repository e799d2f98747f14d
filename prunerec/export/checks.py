"""Comparisons of two engines' numbers on the same prompts (pure computation): logits, greedy
decoding and trie-constrained beam search, each a `Check` with its value and tolerance. The
export's verification (prunerec.export.verify) runs them on the engines an export holds."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from prunerec.model.batching import pad_rows, positions_of

GREEDY_STEPS = 32
# fp32: absolute; fp16 / bf16: relative to max(1, max |reference logit|)
LOGITS_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 3e-2}
MAX_LOGITS = 1 << 25  # logits values held at once while comparing (rows x width x vocab)


@dataclass
class Check:
    name: str
    passed: bool
    value: float | None = None
    tolerance: float | None = None
    detail: str = ""
    extra: dict = field(default_factory=dict)


def tolerance(precision: str, scale: float) -> float:
    base = LOGITS_TOLERANCE[precision]
    return base if precision == "fp32" else base * max(1.0, float(scale))


# ----------------------------------------------------------------------------- prompts


def _worse(worst: float, value: float) -> float:
    """max() that lets NaN through as infinity (a NaN difference must fail, not vanish)."""
    return float("inf") if not np.isfinite(value) else max(worst, value)


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int):
    ids, mask = pad_rows(prompts, pad_id, left=True)
    return ids.numpy(), mask.numpy(), positions_of(mask).numpy()


def _row_chunks(prompts, vocab: int):
    width = max(len(p) for p in prompts)
    rows = max(1, MAX_LOGITS // max(1, width * vocab))
    for begin in range(0, len(prompts), rows):
        yield begin, min(len(prompts), begin + rows)


@torch.no_grad()
def torch_logits(model, ids, mask, positions) -> np.ndarray:
    out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                position_ids=torch.from_numpy(positions), use_cache=False)
    return out.logits.float().numpy()


def compare_logits(reference, candidate, prompts, pad_id: int, vocab: int) -> tuple[float, float, int]:
    """(max |diff| over the real prompt positions, max |reference logit|, positions compared);
    `reference`/`candidate` map (ids, mask, positions) to float logits [batch, seq, vocab]."""
    ids, mask, positions = _left_pad(prompts, pad_id)
    worst = scale = 0.0
    for begin, end in _row_chunks(prompts, vocab):
        args = ids[begin:end], mask[begin:end], positions[begin:end]
        ref, cand = reference(*args), candidate(*args)
        keep = mask[begin:end].astype(bool)
        worst = _worse(worst, float(np.abs(ref[keep] - cand[keep]).max()))
        scale = max(scale, float(np.abs(ref[keep]).max()))
    return worst, scale, int(mask.sum())


def logits_check(name: str, what: str, reference, candidate, prompts, pad_id, vocab, precision) -> Check:
    diff, scale, n = compare_logits(reference, candidate, prompts, pad_id, vocab)
    tol = tolerance(precision, scale)
    return Check(name, bool(diff <= tol), diff, tol,
                 f"{what}: max abs logit diff over {len(prompts)} prompts, {n} positions ({precision}, "
                 f"max abs logit {scale:.3g})", {"logit_scale": scale})


# ----------------------------------------------------------------------------- engines


def greedy(stepper, prompts, steps: int = GREEDY_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [batch, steps], log-probabilities [batch, steps, vocab]) of greedy decoding, EOS ignored."""
    logprobs = stepper.start(prompts)
    tokens, history = [], []
    for step in range(steps):
        token = logprobs.argmax(-1)
        tokens.append(token)
        history.append(logprobs)
        if step + 1 < steps:
            logprobs = stepper.advance(list(range(len(prompts))), token.tolist())
    return torch.stack(tokens, 1), torch.stack(history, 1)


def greedy_checks(torch_stepper, onnx_stepper, prompts, precision: str, logit_scale: float) -> list[Check]:
    ref_tokens, ref_lp = greedy(torch_stepper, prompts)
    got_tokens, got_lp = greedy(onnx_stepper, prompts)
    return compare_greedy("onnx", ref_tokens, ref_lp, got_tokens, got_lp, precision, logit_scale)


def compare_greedy(engine: str, ref_tokens, ref_lp, got_tokens, got_lp, precision: str, logit_scale: float,
                    what: str = "KV-cached greedy steps") -> list[Check]:
    """`{engine}_decode` (log-probabilities up to the first differing token) and `{engine}_greedy`
    (identical tokens; with reduced precision a difference on a near-tie is tolerated)."""
    prompts = range(len(ref_tokens))
    # a log-probability moves by up to twice the logits' error (the logit and the normaliser)
    tol = 2 * tolerance(precision, logit_scale)
    worst_lp, diverged, ties = 0.0, [], []
    for row in range(len(prompts)):
        same = (ref_tokens[row] == got_tokens[row]).tolist()
        first = same.index(False) if False in same else GREEDY_STEPS
        # log-probabilities agree up to (and including) the first differing step: same inputs so far
        upto = min(first + 1, GREEDY_STEPS)
        ref_row, got_row = ref_lp[row, :upto], got_lp[row, :upto]
        diff = torch.where(ref_row == got_row, torch.zeros_like(ref_row), (ref_row - got_row).abs())  # -inf == -inf
        worst_lp = _worse(worst_lp, float(diff.max()))
        if first < GREEDY_STEPS:
            a, b = int(ref_tokens[row, first]), int(got_tokens[row, first])
            margin = float(ref_lp[row, first, a] - ref_lp[row, first, b])
            entry = {"prompt": row, "step": first, "reference_token": a, f"{engine}_token": b, "margin": margin}
            (ties if precision != "fp32" and margin <= tol else diverged).append(entry)
    decode = Check(f"{engine}_decode", bool(worst_lp <= tol), worst_lp, tol,
                   f"max abs log-prob diff over {GREEDY_STEPS} {what} x {len(prompts)} prompts ({precision})")
    detail = (f"{GREEDY_STEPS} greedy tokens x {len(prompts)} prompts: "
              + ("identical" if not diverged and not ties else
                 f"{len(diverged)} prompt(s) diverge" + (f", {len(ties)} only on near-ties" if ties else "")))
    if diverged:
        d = diverged[0]
        detail += f" (first: prompt {d['prompt']} at step {d['step']}, margin {d['margin']:.3g})"
    tokens = Check(f"{engine}_greedy", not diverged, float(len(diverged)), 0.0, detail,
                   {"diverged": diverged, "near_ties": ties})
    return [decode, tokens]


def beam_check(torch_stepper, onnx_stepper, prompts, trie, titles, num_beams: int, precision: str,
                score_scale_tol: float) -> Check:
    from prunerec.search.beam import constrained_beam_search

    t0 = time.perf_counter()
    ref = constrained_beam_search(torch_stepper, prompts, trie, num_beams)
    t1 = time.perf_counter()
    got = constrained_beam_search(onnx_stepper, prompts, trie, num_beams)
    t2 = time.perf_counter()
    score_tol = score_scale_tol * trie.max_len
    worst_score, mismatched, ties = 0.0, [], 0
    for row, (r, g) in enumerate(zip(ref, got)):
        for rank in range(max(len(r), len(g))):
            if rank >= len(r) or rank >= len(g):
                mismatched.append({"prompt": row, "rank": rank, "reason": "different list lengths"})
                break
            diff = abs(r[rank][1] - g[rank][1])
            worst_score = max(worst_score, diff)
            if r[rank][0] != g[rank][0]:
                if precision != "fp32" and diff <= score_tol:
                    ties += 1
                    continue
                mismatched.append({"prompt": row, "rank": rank, "reference": titles[r[rank][0]],
                                   "onnx": titles[g[rank][0]], "score_diff": diff})
    detail = (f"{num_beams} beams x {len(prompts)} prompts: "
              + ("same titles in the same order" if not mismatched else f"{len(mismatched)} rank(s) differ")
              + (f", except {ties} rank(s) where near-tied titles swapped (score diff within {score_tol:.3g})"
                 if ties else "")
              + f"; max abs score diff {worst_score:.3g}; torch {t1 - t0:.2f}s, onnxruntime {t2 - t1:.2f}s")
    if mismatched:
        m = mismatched[0]
        detail += f"; first: prompt {m['prompt']} rank {m['rank']}"
    return Check("onnx_beam", not mismatched, float(len(mismatched)), 0.0, detail,
                 {"mismatched": mismatched[:20], "max_score_diff": worst_score,
                  "seconds": {"torch": round(t1 - t0, 3), "onnxruntime": round(t2 - t1, 3)},
                  "reference": [[titles[i] for i, _ in row] for row in ref]})


# ----------------------------------------------------------------------------- the whole verification
