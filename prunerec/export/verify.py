"""Checks that an export computes what the PyTorch model computes, on real prompts.

Prompts are built like evaluation builds them: a few users of a prepared data folder (its test
split) or, without one, histories of random catalog titles. Checks (each with its value and
tolerance in OUT/export-report.json):

  hf_roundtrip   OUT/hf reloaded with AutoModelForCausalLM vs the source checkpoint: logits
  llama_logits   OUT/hf-llama (LlamaForCausalLM) vs OUT/hf (Qwen2ForCausalLM): logits
  onnx_logits    ONNX Runtime vs PyTorch: logits of every prompt position (empty past = prefill)
  onnx_decode    ONNX Runtime vs PyTorch: next-token log-probabilities over 32 KV-cached steps
  onnx_greedy    the same 32 greedy tokens from both engines
  onnx_beam      trie-constrained beam search (TorchStepper vs OnnxStepper): same titles, same order
  genai_decode   onnxruntime-genai (OUT/genai) vs PyTorch: log-probabilities of 32 greedy steps
  genai_greedy   onnxruntime-genai's own greedy search (do_sample=False) gives PyTorch's 32 tokens

Tolerances: fp32 logits within 1e-4 (absolute). Reduced precision is compared like with like
(fp16 ONNX against fp16 PyTorch) with a tolerance scaled to the logits, and a greedy token or a
beam rank may then differ where the reference itself has a near-tie within that tolerance.
A bf16 export's ONNX graph computes in fp32 over the bf16 weights (onnxruntime's CPU provider
has no bf16 kernels) and is compared with PyTorch in fp32 over the same weights (1e-4).
"""
from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from prunerec.errors import PrunerecError
from prunerec.model.checkpoint import SETTINGS_FILE
from prunerec.options import BEAMS
from prunerec.rec.batching import pad_rows, positions_of

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


class VerificationFailed(PrunerecError):
    def __init__(self, message: str, report: dict | None = None, table: str = ""):
        super().__init__(message)
        self.report, self.table = report, table


def tolerance(precision: str, scale: float) -> float:
    base = LOGITS_TOLERANCE[precision]
    return base if precision == "fp32" else base * max(1.0, float(scale))


# ----------------------------------------------------------------------------- prompts


def verification_prompts(rec, data_dir, users: int, seed: int = 0):
    """(prompts, catalog, description): `users` prompts built like evaluation builds them."""
    from prunerec.data.catalog import load_dataset
    from prunerec.rec.encode import history_titles, prompt_ids

    if data_dir:
        split = "test" if (Path(data_dir) / "test.jsonl").is_file() else "valid"
        data = load_dataset(data_dir, splits=(split,))
        if rec.catalog is not None and rec.catalog.titles != data.catalog.titles:
            raise PrunerecError(f"the model was trained for a different catalog than {data_dir}/items.jsonl")
        samples = data[split]
        if not samples:
            raise PrunerecError(f"split '{split}' of {data_dir} has no rows")
        if users < len(samples):
            samples = sorted(random.Random(seed).sample(samples, users), key=lambda s: s.user)
        prompts = prompt_ids(rec.tokenizer, [history_titles(s, data.catalog) for s in samples], rec.settings)
        return prompts, data.catalog, f"{len(prompts)} users of {data_dir} ({split} split)"
    if rec.catalog is None:
        raise PrunerecError("the model has no catalog.jsonl: pass --data (a prepared data folder) to verify, "
                            "or --no-verify")
    titles = list(rec.catalog.titles)
    rng = random.Random(seed)
    histories = []
    for _ in range(users):
        k = rng.randint(1, max(1, min(rec.settings.max_history, len(titles))))
        histories.append(rng.sample(titles, k))
    prompts = prompt_ids(rec.tokenizer, histories, rec.settings)
    return prompts, rec.catalog, f"{len(prompts)} prompts from random catalog titles (seed {seed})"


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
def _torch_logits(model, ids, mask, positions) -> np.ndarray:
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


def _logits_check(name: str, what: str, reference, candidate, prompts, pad_id, vocab, precision) -> Check:
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


def _greedy_checks(torch_stepper, onnx_stepper, prompts, precision: str, logit_scale: float) -> list[Check]:
    ref_tokens, ref_lp = greedy(torch_stepper, prompts)
    got_tokens, got_lp = greedy(onnx_stepper, prompts)
    return _compare_greedy("onnx", ref_tokens, ref_lp, got_tokens, got_lp, precision, logit_scale)


def _compare_greedy(engine: str, ref_tokens, ref_lp, got_tokens, got_lp, precision: str, logit_scale: float,
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


def _beam_check(torch_stepper, onnx_stepper, prompts, trie, titles, num_beams: int, precision: str,
                score_scale_tol: float) -> Check:
    from prunerec.rec.beam import constrained_beam_search

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


def _export_info(folder: Path) -> dict:
    path = folder / SETTINGS_FILE
    return (json.loads(path.read_text()).get("export") or {}) if path.is_file() else {}


def _load(ref, dtype) -> tuple[object, float]:
    from prunerec.model.checkpoint import load_rec_model

    t0 = time.perf_counter()
    rec = load_rec_model(str(ref), dtype=dtype)
    return rec, time.perf_counter() - t0


def verify_export(out: str | Path, *, source: str | Path | None = None, data_dir=None, users: int = 4,
                  beams: int = BEAMS, seed: int = 0, providers=None, threads: int | None = None,
                  formats: Sequence[str] | None = None) -> dict:
    """Run every check that applies to the folders present in OUT (only those of `formats` when
    given: hf covers hf-llama, a folder left by an earlier export is then ignored); returns the
    verification record (`passed`, `checks`, `load_seconds`, `prompts`). Raises nothing for a
    failed check: see raise_if_failed."""
    from prunerec.export.hf import DTYPES
    from prunerec.export.onnx_stepper import OnnxStepper, make_session
    from prunerec.rec.beam import TorchStepper
    from prunerec.rec.title_index import TitleIndex

    out = Path(out)
    hf_dir, llama_dir, onnx_dir, genai_dir = out / "hf", out / "hf-llama", out / "onnx", out / "genai"

    def wanted(folder: Path, fmt: str) -> bool:
        return folder.is_dir() and (formats is None or fmt in formats)

    has_hf, has_llama, has_onnx = wanted(hf_dir, "hf"), wanted(llama_dir, "hf"), wanted(onnx_dir, "onnx")
    has_genai = wanted(genai_dir, "genai")
    if not (has_hf or has_onnx or has_genai):
        raise PrunerecError(f"{out} holds no export (no hf/, onnx/ or genai/ folder)")
    info = _export_info(hf_dir if has_hf else onnx_dir if has_onnx else genai_dir)
    precision = info.get("dtype", "fp32")
    onnx_precision = _export_info(onnx_dir).get("onnx_dtype", "fp32") if has_onnx else precision
    reference_ref = hf_dir if has_hf else (source or info.get("source"))
    if reference_ref is None:
        raise PrunerecError("an export without hf/ needs its source checkpoint to verify against")
    checks: list[Check] = []
    loads: dict[str, float] = {}

    rec, seconds = _load(reference_ref, DTYPES[precision])
    if has_hf:
        loads["hf"] = seconds
    prompts, catalog, described = verification_prompts(rec, data_dir, users, seed)
    pad = rec.tokenizer.pad_token_id
    vocab = rec.model.config.vocab_size

    def torch_fn(model):
        return lambda ids, mask, pos: _torch_logits(model, ids, mask, pos)

    widened = {}

    def graph_reference(graph_precision: str):
        """PyTorch in the precision a graph computes in (bf16: fp32 over the same bf16 weights)."""
        if DTYPES[graph_precision] == DTYPES[precision]:
            return rec
        if graph_precision not in widened:
            widened[graph_precision], _ = _load(reference_ref, DTYPES[precision])
            widened[graph_precision].model.to(DTYPES[graph_precision])
        return widened[graph_precision]

    if has_hf and source is not None and Path(source).expanduser().resolve() != hf_dir.resolve():
        src, _ = _load(source, DTYPES[precision])
        checks.append(_logits_check("hf_roundtrip", "OUT/hf reloaded vs the source checkpoint",
                                    torch_fn(src.model), torch_fn(rec.model), prompts, pad, vocab, precision))
        del src
    if has_llama:
        llama, seconds = _load(llama_dir, DTYPES[precision])
        loads["hf-llama"] = seconds
        arch = type(llama.model).__name__
        if arch != "LlamaForCausalLM":
            checks.append(Check("llama_logits", False, None, None,
                                f"OUT/hf-llama loads as {arch}, not LlamaForCausalLM"))
        else:
            checks.append(_logits_check("llama_logits", "OUT/hf-llama (Llama) vs OUT/hf (Qwen2) in transformers",
                                        torch_fn(rec.model), torch_fn(llama.model), prompts, pad, vocab, precision))
        del llama
    if has_onnx:
        # bf16: the graph holds the bf16-rounded weights in fp32; compare like with like
        reference = graph_reference(onnx_precision)
        t0 = time.perf_counter()
        session = make_session(onnx_dir, providers=providers, threads=threads, exact=True)
        loads["onnx"] = time.perf_counter() - t0
        stepper = OnnxStepper(session, pad)
        logits = _logits_check("onnx_logits", "onnxruntime vs PyTorch, prefill with an empty past",
                               torch_fn(reference.model),
                               lambda ids, mask, pos: stepper.forward(ids, mask, pos)[0].astype(np.float32),
                               prompts, pad, vocab, onnx_precision)
        checks.append(logits)
        checks += _greedy_checks(TorchStepper(reference.model, pad), stepper, prompts, onnx_precision,
                                 logits.extra["logit_scale"])
        index = TitleIndex.of_catalog(rec.tokenizer, catalog)
        titles, trie = index.titles, index.trie
        num_beams = max(1, min(beams, len(titles)))
        score_tol = 0.0 if onnx_precision == "fp32" else 2 * tolerance(onnx_precision, logits.extra["logit_scale"])
        checks.append(_beam_check(TorchStepper(reference.model, pad), OnnxStepper(session, pad), prompts, trie,
                                  titles, num_beams, onnx_precision, score_tol))
        provider = session.get_providers()[0]
    else:
        provider = None
    genai_precision = None
    if has_genai:
        genai_precision = _export_info(genai_dir).get("graph_dtype", "fp32")
        checks += _genai_checks(genai_dir, graph_reference(genai_precision).model, pad, prompts, genai_precision,
                                threads, loads)
    return {"passed": all(c.passed for c in checks), "precision": precision, "onnx_precision": onnx_precision,
            "onnx_provider": provider, "genai_precision": genai_precision, "prompts": described,
            "prompt_tokens": [len(p) for p in prompts], "checks": [asdict(c) for c in checks], "load_seconds": loads}


def _genai_checks(folder: Path, reference_model, pad: int, prompts, precision: str, threads,
                  loads: dict) -> list[Check]:
    """onnxruntime-genai's greedy search on OUT/genai vs PyTorch's greedy: genai_decode, genai_greedy."""
    from prunerec.export import genai
    from prunerec.rec.beam import TorchStepper

    t0 = time.perf_counter()
    try:
        model = genai.load_model(folder, threads=threads)
    except Exception as error:  # any load failure is a failed check, with its message
        return [Check("genai_greedy", False, None, None, f"onnxruntime-genai cannot load {folder}: {error}")]
    loads["genai"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_tokens, ref_lp = greedy(TorchStepper(reference_model, pad), prompts)
    t1 = time.perf_counter()
    try:
        got_tokens, got_lp, scale = genai.greedy(model, prompts, GREEDY_STEPS)
    except Exception as error:
        return [Check("genai_greedy", False, None, None, f"onnxruntime-genai failed to generate: {error}")]
    t2 = time.perf_counter()
    checks = _compare_greedy("genai", ref_tokens, ref_lp, got_tokens, got_lp, precision, scale,
                             what="greedy steps of onnxruntime-genai's search")
    timing = {"torch": round(t1 - t0, 3), "onnxruntime_genai": round(t2 - t1, 3)}
    checks[1].detail += f"; torch {timing['torch']:.2f}s, onnxruntime-genai {timing['onnxruntime_genai']:.2f}s"
    checks[1].extra["seconds"] = timing
    return checks


def failure_message(verification: dict) -> str:
    parts = []
    for c in verification["checks"]:
        if c["passed"]:
            continue
        if c["value"] is not None and c["tolerance"] is not None and c["name"] in ("hf_roundtrip", "llama_logits",
                                                                                     "onnx_logits", "onnx_decode",
                                                                                     "genai_decode"):
            parts.append(f"{c['name']}: {c['value']:.3g} > tolerance {c['tolerance']:.3g} ({c['detail']})")
        else:
            parts.append(f"{c['name']}: {c['detail']}")
    return "verification failed: " + "; ".join(parts)


def raise_if_failed(verification: dict, report: dict | None = None, table: str = "") -> None:
    if not verification.get("passed", True):
        raise VerificationFailed(failure_message(verification), report, table)
