"""`prunerec import`: a Llama-family checkpoint becomes the stock Qwen2 folder every other command takes.

import_checkpoint opens the source (import_sources), merges a LoRA adapter if one is given, maps config
and weights (import_mapping) and writes the folder, checked on write: the written folder is loaded back
and its float32 logits and greedy tokens compared with the source's; above MAX_LOGIT_DIFF, or with a
tokenizer that cannot stand in for the source's, nothing is written. report_table renders the report.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from prunerec.errors import PrunerecError
from prunerec.io import TEMP_MARK, atomic_dir, check_fresh_output, refuse_output_over_inputs, sweep_temps, write_json
from prunerec.model.checkpoint import quiet_loading
from prunerec.model.dtypes import NAMES
from prunerec.model.import_mapping import MappedWeights, config_summary, map_config, map_weights, some_names
from prunerec.model.import_sources import (
    Source,
    adapter_summary,
    attach_lora,
    load_source_model,
    load_source_tokenizer,
    open_source,
    special_tokens,
)
from prunerec.model.prompt import PromptSettings, format_prompt, format_response

REPORT_FILE = "import.json"
MAX_LOGIT_DIFF = 1e-4
GREEDY_STEPS = 8
CHECK_PROMPTS = (
    "The capital of France is",
    format_prompt(["Halo 2", "Portal 2", "Minecraft - PC"], PromptSettings(category="games"))
    + format_response("Super Mario Odyssey"),
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
)


# --------------------------------------------------------------------------- the check

def encode_prompts(tokenizer) -> list[list[int]]:
    return [tokenizer(text)["input_ids"] for text in CHECK_PROMPTS]


@torch.no_grad()
def logits_of(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0].float()


@torch.no_grad()
def greedy_ids(model, ids: list[int], steps: int = GREEDY_STEPS) -> list[int]:
    """The `steps` tokens greedy decoding appends to `ids` (full recomputation: no cache to differ)."""
    sequence = list(ids)
    for _ in range(steps):
        sequence.append(int(model(torch.tensor([sequence])).logits[0, -1].argmax()))
    return sequence[len(ids):]


def model_outputs(model, prompts: list[list[int]]) -> list[dict]:
    return [{"logits": logits_of(model, ids), "greedy": greedy_ids(model, ids)} for ids in prompts]


def compare_outputs(prompts, source: list[dict], result: list[dict], tokenizer) -> dict:
    """Max |logit difference| over every position of every prompt, and greedy agreement."""
    rows = []
    for ids, want, got in zip(prompts, source, result):
        diff = float((want["logits"] - got["logits"]).abs().max())
        rows.append({"tokens": len(ids), "max_abs_diff": diff,
                     "next_tokens_agree": bool(torch.equal(want["logits"].argmax(-1), got["logits"].argmax(-1))),
                     "greedy_source": want["greedy"], "greedy_result": got["greedy"],
                     "greedy_text": tokenizer.decode(got["greedy"])})
    return {"tolerance": MAX_LOGIT_DIFF, "max_abs_diff": max(row["max_abs_diff"] for row in rows),
            "greedy_agree": all(r["greedy_source"] == r["greedy_result"] and r["next_tokens_agree"] for r in rows),
            "greedy_steps": GREEDY_STEPS, "prompts": rows}


def tokenizer_refusals(tokenizer, written) -> list[str]:
    """Why the tokenizer the written folder loads cannot stand in for the source's: another
    vocabulary, other special tokens, or text lost in an encode/decode round trip."""
    reasons = []
    source_vocab, written_vocab = tokenizer.get_vocab(), written.get_vocab()
    if written_vocab != source_vocab:
        changed = sorted(set(source_vocab.items()) ^ set(written_vocab.items()), key=lambda item: item[1])
        reasons.append(f"the written tokenizer's vocabulary differs ({some_names([repr(t) for t, _ in changed])})")
    if special_tokens(written) != special_tokens(tokenizer):
        reasons.append(f"the written tokenizer's special tokens {special_tokens(written)} differ from "
                       f"{special_tokens(tokenizer)}")
    lossy = [number for number, text in enumerate(CHECK_PROMPTS, 1) if _round_trip(written, text) != text]
    if lossy:
        reasons.append(f"the written tokenizer ({type(written).__name__}: transformers loads every qwen2 folder's "
                       f"tokenizer with Qwen2's byte-level pre-tokenizer) loses text of check prompts {lossy}; "
                       "only byte-level BPE tokenizers can be imported")
    return reasons


def _round_trip(tokenizer, text: str) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def tokenizer_summary(prompts: list[list[int]], tokenizer, written) -> dict:
    """How the written tokenizer compares with the source's on the check prompts."""
    alike = sum(ids == again for ids, again in zip(prompts, encode_prompts(written)))
    note = None
    if alike < len(prompts):
        note = (f"the folder's tokenizer loads as {type(written).__name__} with Qwen2's pre-tokenizer (transformers' "
                f"rule for qwen2 folders) and splits {len(prompts) - alike} of {len(prompts)} check prompts "
                f"differently from the source's {type(tokenizer).__name__} (same vocabulary, lossless)")
    return {"source_class": type(tokenizer).__name__, "loads_as": type(written).__name__,
            "prompts_encoded_alike": alike, "prompts": len(prompts), "note": note}


# --------------------------------------------------------------------------- writing

def build_qwen2(mapped: MappedWeights, config: Qwen2Config, generation_config) -> Qwen2ForCausalLM:
    """A Qwen2ForCausalLM holding the mapped tensors themselves (no copy)."""
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on the meta device; buffers (rotary frequencies) real
        model = Qwen2ForCausalLM(config)
    model.load_state_dict(mapped.weights, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = generation_config
    return model.eval()


def write_qwen2(model, tokenizer, dtype: torch.dtype, folder: Path) -> None:
    """Weights in `dtype`, config, generation config and tokenizer files. AutoTokenizer gives any
    tokenizer in a qwen2 folder Qwen2Tokenizer's pre-tokenizer and normalizer, so the tokenizer files
    are re-saved from what loads: every engine reading tokenizer.json then splits text alike."""
    model.to(dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    AutoTokenizer.from_pretrained(folder).save_pretrained(folder)


def load_written(folder: Path):
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def storage_choice(source: Source, adapter: str | None) -> tuple[torch.dtype, str | None]:
    """The dtype written, and why it is not the source's where it is not."""
    dtype = source.storage_dtype()
    if adapter and dtype != torch.float32:
        return torch.float32, (f"merged LoRA weights are not representable in {NAMES[dtype]}: "
                               "stored as fp32 to stay exact")
    return dtype, None


# --------------------------------------------------------------------------- output folder rules

def prepare_output(out: Path, ref: str, adapter: str | None, overwrite: bool) -> None:
    """Refuse an output over the inputs, an earlier import without `overwrite`, and a folder that
    holds anything else (an import replaces the whole folder); remove a killed import's leftovers."""
    refuse_output_over_inputs(out, "--out", model=ref, adapter=adapter)
    if out.exists() and not out.is_dir():
        raise PrunerecError(f"--out {out} is a file: pick a folder")
    check_fresh_output(out, (REPORT_FILE,), False, overwrite, "an import", resumable=False)
    if out.is_dir() and not (out / REPORT_FILE).exists():
        others = sorted(p.name for p in out.iterdir() if TEMP_MARK not in p.name)
        if others:
            raise PrunerecError(f"--out {out} holds other files ({some_names(others)}): an import writes a whole "
                                "model folder; pick a new or empty folder")
    sweep_temps(out)
    for leftover in out.parent.iterdir() if out.parent.is_dir() else ():
        if not leftover.name.startswith(f".{out.name}{TEMP_MARK}"):
            continue
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the command

def import_checkpoint(src: str, out: str | Path, adapter: str | None = None, overwrite: bool = False,
                      say=print) -> dict:
    """Write `src` (optionally with the LoRA `adapter` merged) as a stock Qwen2 folder `out`, checked
    on write; returns the report, also written as out/import.json. Refusals raise PrunerecError and
    leave `out` as it was."""
    out = Path(out)
    prepare_output(out, src, adapter, overwrite)
    source = open_source(src)
    qwen2_config = _refuse_unless(map_config(source.config), f"'{src}' cannot be imported exactly")
    result, tokenizer, prompts, reference, report = convert(source, qwen2_config, adapter, say)
    dtype, dtype_note = storage_choice(source, adapter)
    report["result"] = {"path": str(out), "storage_dtype": NAMES[dtype], "storage_note": dtype_note,
                        "config": config_summary(qwen2_config)}
    with atomic_dir(out) as tmp:
        say(f"writing {out} ({NAMES[dtype]})")
        write_qwen2(result, tokenizer, dtype, tmp)
        del result  # the check loads the written folder back: one model in memory at a time
        say("checking the written model against the source")
        report["check"] = check_written(tmp, prompts, reference, tokenizer)
        write_json(tmp / REPORT_FILE, report)
    return report


def convert(source: Source, qwen2_config: Qwen2Config, adapter: str | None, say):
    """(Qwen2 model, tokenizer, check prompts, the source's outputs on them, report so far)."""
    say(f"loading {source.ref}")
    model = load_source_model(source)
    tokenizer, token_fixes = load_source_tokenizer(source)
    prompts = encode_prompts(tokenizer)
    report = {"source": source.describe(), "adapter": None}
    if adapter:
        say(f"merging the LoRA adapter {adapter}")
        model, report["adapter"] = merge_lora(model, adapter, prompts)
    reference = model_outputs(model, prompts)
    mapped = _refuse_unless(map_weights(model.state_dict(), qwen2_config), f"the weights of '{source.ref}' do not map")
    report |= {"weights": {"zero_qkv_biases_added": len(mapped.zero_biases_added),
                           "zero_biases_dropped": mapped.zero_biases_dropped},
               "special_tokens": special_tokens(tokenizer), "special_token_fixes": token_fixes}
    return build_qwen2(mapped, qwen2_config, model.generation_config), tokenizer, prompts, reference, report


def merge_lora(model, adapter: str, prompts: list[list[int]]):
    """(merged model, adapter report): the merge's own rounding is measured against the unmerged adapter."""
    peft_model, config = attach_lora(model, adapter)
    unmerged = [logits_of(peft_model, ids) for ids in prompts]
    merged = peft_model.merge_and_unload()
    merge_diff = max(float((logits_of(merged, ids) - want).abs().max()) for ids, want in zip(prompts, unmerged))
    return merged, adapter_summary(adapter, config) | {"merge_max_abs_diff": merge_diff}


def check_written(folder: Path, prompts, reference: list[dict], tokenizer) -> dict:
    """Load the written folder back and compare it with the source; refuse above MAX_LOGIT_DIFF."""
    model, written_tokenizer = load_written(folder)
    if model.config.model_type != "qwen2":
        raise PrunerecError(f"the written model loads as '{model.config.model_type}', not qwen2")
    reasons = tokenizer_refusals(tokenizer, written_tokenizer)
    if reasons:
        raise PrunerecError("; ".join(reasons) + "; nothing was written")
    check = compare_outputs(prompts, reference, model_outputs(model, prompts), written_tokenizer)
    check["tokenizer"] = tokenizer_summary(prompts, tokenizer, written_tokenizer)
    if not check["max_abs_diff"] <= MAX_LOGIT_DIFF:  # also refuses NaN
        raise PrunerecError(f"the imported model differs from the source: max |logit diff| "
                            f"{check['max_abs_diff']:.3g} > {MAX_LOGIT_DIFF:g}; nothing was written")
    return check


def _refuse_unless(outcome, what: str):
    """`outcome` unless it is a list of reasons, which become the PrunerecError's message."""
    if isinstance(outcome, list):
        raise PrunerecError(f"{what}: " + "; ".join(outcome))
    return outcome


# --------------------------------------------------------------------------- the table

def report_table(report: dict) -> str:
    """A few lines for the terminal: source, result, and the check of each prompt."""
    source, result, check = report["source"], report["result"], report["check"]
    shape = result["config"]
    stored = f"{source['gguf_file_type']} dequantized" if source.get("gguf_file_type") else source["dtype"]
    lines = [f"source  {source['ref']} ({source['format']}, {source['model_type']}, {stored})"]
    if report["adapter"]:
        lines.append(f"adapter {report['adapter']['path']} (LoRA r={report['adapter']['r']}, merge rounding "
                     f"{report['adapter']['merge_max_abs_diff']:.2e})")
    lines.append(f"result  {result['path']} (qwen2, {shape['layers']} layers, hidden {shape['hidden']}, "
                 f"{shape['heads']}/{shape['kv_heads']} heads x {shape['head_dim']}, {result['storage_dtype']})")
    notes = [result["storage_note"], *report["special_token_fixes"], check["tokenizer"]["note"]]
    lines += [f"note    {note}" for note in notes if note]
    lines.append(f"{'prompt':<8}{'tokens':>7}{'max|diff|':>11}  greedy agree  greedy text")
    for number, row in enumerate(check["prompts"], 1):
        agree = "yes" if row["greedy_source"] == row["greedy_result"] and row["next_tokens_agree"] else "NO"
        lines.append(f"{number:<8}{row['tokens']:>7}{row['max_abs_diff']:>11.2e}  {agree:<12}  "
                     f"{json.dumps(row['greedy_text'], ensure_ascii=False)}")
    lines.append(f"max |logit diff| {check['max_abs_diff']:.2e} (tolerance {check['tolerance']:g}); "
                 f"report in {Path(result['path']) / REPORT_FILE}")
    return "\n".join(lines)
