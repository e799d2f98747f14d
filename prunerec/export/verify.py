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

from prunerec.errors import PrunerecError
from prunerec.export.checks import (
    GREEDY_STEPS,
    Check,
    beam_check,
    compare_greedy,
    greedy,
    greedy_checks,
    logits_check,
    tolerance,
    torch_logits,
)
from prunerec.model.checkpoint import SETTINGS_FILE
from prunerec.options import BEAMS


class VerificationFailed(PrunerecError):
    def __init__(self, message: str, report: dict | None = None, table: str = ""):
        super().__init__(message)
        self.report, self.table = report, table


def verification_prompts(rec, data_dir, users: int, seed: int = 0):
    """(prompts, catalog, description): `users` prompts built like evaluation builds them."""
    from prunerec.data.catalog import load_dataset
    from prunerec.model.encode import history_titles, prompt_ids

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


def _export_info(folder: Path) -> dict:
    path = folder / SETTINGS_FILE
    return (json.loads(path.read_text()).get("export") or {}) if path.is_file() else {}


def _load(ref, dtype) -> tuple[object, float]:
    from prunerec.model.checkpoint import load_rec_model

    t0 = time.perf_counter()
    rec = load_rec_model(str(ref), dtype=dtype)
    return rec, time.perf_counter() - t0


def _torch_fn(model):
    return lambda ids, mask, pos: torch_logits(model, ids, mask, pos)


@dataclass
class _Reference:
    """The PyTorch reference every check compares against, loaded once (and widened copies of it
    for graphs that compute in another precision)."""
    ref: str | Path
    precision: str
    rec: object
    prompts: list
    widened: dict = field(default_factory=dict)

    @property
    def pad(self) -> int:
        return self.rec.tokenizer.pad_token_id

    @property
    def vocab(self) -> int:
        return self.rec.model.config.vocab_size

    def in_precision(self, graph_precision: str):
        """PyTorch in the precision a graph computes in (bf16: fp32 over the same bf16 weights)."""
        from prunerec.export.hf import DTYPES

        if DTYPES[graph_precision] == DTYPES[self.precision]:
            return self.rec
        if graph_precision not in self.widened:
            self.widened[graph_precision], _ = _load(self.ref, DTYPES[self.precision])
            self.widened[graph_precision].model.to(DTYPES[graph_precision])
        return self.widened[graph_precision]

    def logits_check(self, name: str, what: str, expected, actual, precision: str | None = None) -> Check:
        return logits_check(name, what, expected, actual, self.prompts, self.pad, self.vocab,
                             precision or self.precision)


def _roundtrip_check(ref: _Reference, source) -> Check:
    from prunerec.export.hf import DTYPES

    src, _ = _load(source, DTYPES[ref.precision])
    return ref.logits_check("hf_roundtrip", "OUT/hf reloaded vs the source checkpoint", _torch_fn(src.model),
                            _torch_fn(ref.rec.model))


def _llama_check(ref: _Reference, llama_dir: Path, loads: dict) -> Check:
    from prunerec.export.hf import DTYPES

    llama, loads["hf-llama"] = _load(llama_dir, DTYPES[ref.precision])
    arch = type(llama.model).__name__
    if arch != "LlamaForCausalLM":
        return Check("llama_logits", False, None, None, f"OUT/hf-llama loads as {arch}, not LlamaForCausalLM")
    return ref.logits_check("llama_logits", "OUT/hf-llama (Llama) vs OUT/hf (Qwen2) in transformers",
                            _torch_fn(ref.rec.model), _torch_fn(llama.model))


def _onnx_checks(ref: _Reference, onnx_dir: Path, onnx_precision: str, catalog, beams: int, providers, threads,
                 loads: dict) -> tuple[list[Check], str]:
    """Prefill logits, greedy tokens and the constrained beam search of onnxruntime against PyTorch;
    also the provider the session ran on."""
    from prunerec.export.onnx_stepper import OnnxStepper, make_session
    from prunerec.search.beam import TorchStepper
    from prunerec.search.title_index import TitleIndex

    # bf16: the graph holds the bf16-rounded weights in fp32; compare like with like
    reference, pad = ref.in_precision(onnx_precision), ref.pad
    t0 = time.perf_counter()
    session = make_session(onnx_dir, providers=providers, threads=threads, exact=True)
    loads["onnx"] = time.perf_counter() - t0
    stepper = OnnxStepper(session, pad)
    logits = ref.logits_check("onnx_logits", "onnxruntime vs PyTorch, prefill with an empty past",
                              _torch_fn(reference.model),
                              lambda ids, mask, pos: stepper.forward(ids, mask, pos)[0].astype(np.float32),
                              onnx_precision)
    checks = [logits, *greedy_checks(TorchStepper(reference.model, pad), stepper, ref.prompts, onnx_precision,
                                      logits.extra["logit_scale"])]
    index = TitleIndex.of_catalog(ref.rec.tokenizer, catalog)
    num_beams = max(1, min(beams, len(index.titles)))
    score_tol = 0.0 if onnx_precision == "fp32" else 2 * tolerance(onnx_precision, logits.extra["logit_scale"])
    checks.append(beam_check(TorchStepper(reference.model, pad), OnnxStepper(session, pad), ref.prompts,
                              index.trie, index.titles, num_beams, onnx_precision, score_tol))
    return checks, session.get_providers()[0]


def _present(out: Path, formats: Sequence[str] | None) -> dict[str, Path]:
    """The export folders in OUT to verify (only those of `formats` when given; hf covers hf-llama)."""
    fmt_of = {"hf": "hf", "hf-llama": "hf", "onnx": "onnx", "genai": "genai"}
    present = {name: out / name for name, fmt in fmt_of.items()
               if (out / name).is_dir() and (formats is None or fmt in formats)}
    if not ({"hf", "onnx", "genai"} & set(present)):
        raise PrunerecError(f"{out} holds no export (no hf/, onnx/ or genai/ folder)")
    return present


def verify_export(out: str | Path, *, source: str | Path | None = None, data_dir=None, users: int = 4,
                  beams: int = BEAMS, seed: int = 0, providers=None, threads: int | None = None,
                  formats: Sequence[str] | None = None) -> dict:
    """Run every check that applies to the folders present in OUT (only those of `formats` when
    given: hf covers hf-llama, a folder left by an earlier export is then ignored); returns the
    verification record (`passed`, `checks`, `load_seconds`, `prompts`). Raises nothing for a
    failed check: see raise_if_failed."""
    from prunerec.export.hf import DTYPES

    out = Path(out)
    present = _present(out, formats)
    info = _export_info(present.get("hf") or present.get("onnx") or present["genai"])
    precision = info.get("dtype", "fp32")
    onnx_precision = _export_info(present["onnx"]).get("onnx_dtype", "fp32") if "onnx" in present else precision
    reference_ref = present.get("hf") or source or info.get("source")
    if reference_ref is None:
        raise PrunerecError("an export without hf/ needs its source checkpoint to verify against")
    loads: dict[str, float] = {}
    rec, seconds = _load(reference_ref, DTYPES[precision])
    if "hf" in present:
        loads["hf"] = seconds
    prompts, catalog, described = verification_prompts(rec, data_dir, users, seed)
    ref = _Reference(reference_ref, precision, rec, prompts)
    checks: list[Check] = []
    if "hf" in present and source is not None and Path(source).expanduser().resolve() != present["hf"].resolve():
        checks.append(_roundtrip_check(ref, source))
    if "hf-llama" in present:
        checks.append(_llama_check(ref, present["hf-llama"], loads))
    provider = None
    if "onnx" in present:
        onnx, provider = _onnx_checks(ref, present["onnx"], onnx_precision, catalog, beams, providers, threads, loads)
        checks += onnx
    genai_precision = None
    if "genai" in present:
        genai_precision = _export_info(present["genai"]).get("graph_dtype", "fp32")
        checks += _genai_checks(present["genai"], ref.in_precision(genai_precision).model, ref.pad, prompts,
                                genai_precision, threads, loads)
    return {"passed": all(c.passed for c in checks), "precision": precision, "onnx_precision": onnx_precision,
            "onnx_provider": provider, "genai_precision": genai_precision, "prompts": described,
            "prompt_tokens": [len(p) for p in prompts], "checks": [asdict(c) for c in checks], "load_seconds": loads}


def _genai_checks(folder: Path, reference_model, pad: int, prompts, precision: str, threads,
                  loads: dict) -> list[Check]:
    """onnxruntime-genai's greedy search on OUT/genai vs PyTorch's greedy: genai_decode, genai_greedy."""
    from prunerec.export import genai
    from prunerec.search.beam import TorchStepper

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
    checks = compare_greedy("genai", ref_tokens, ref_lp, got_tokens, got_lp, precision, scale,
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
