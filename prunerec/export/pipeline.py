"""`prunerec export`: write OUT/hf (+ OUT/hf-llama when needed), OUT/onnx and, on request,
OUT/genai (onnxruntime-genai's builder), verify them, write OUT/export-report.json. Each folder
is written atomically (io.atomic_dir)."""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from prunerec.export import card, genai, hf
from prunerec.export.onnx_export import (
    MODEL_FILE,
    OPSET,
    export_decoder,
    input_names,
    output_names,
)
from prunerec.export.options import ExportOptions
from prunerec.export.verify import raise_if_failed, verify_export
from prunerec.io import (
    atomic_dir,
    check_fresh_output,
    folder_bytes,
    refuse_output_over_inputs,
    sweep_temps,
    write_json,
    write_jsonl,
    write_text,
)
from prunerec.model.checkpoint import CATALOG_FILE, SETTINGS_FILE, check_checkpoint, load_rec_model, quiet_loading
from prunerec.model.dtypes import NAMES, stored_dtype
from prunerec.model.surgery import count_parameters

REPORT_FILE = "export-report.json"


def _write_onnx_folder(rec, folder: Path, export_info: dict) -> None:
    """model.onnx (+ .data) beside tokenizer, config, generation config, catalog and prunerec.json."""
    from transformers import GenerationConfig

    export_decoder(rec.model, folder)
    rec.tokenizer.save_pretrained(folder)
    rec.model.config.save_pretrained(folder)
    cfg = rec.model.config
    generation = getattr(rec.model, "generation_config", None) or GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    generation.save_pretrained(folder)
    if rec.catalog is not None:
        write_jsonl(folder / CATALOG_FILE, ({"item_id": i, "title": t} for i, t in enumerate(rec.catalog.titles)))
    write_json(folder / SETTINGS_FILE, {"prompt": rec.settings.to_json(), **rec.info, "export": export_info})


def run_export(model_ref: str, out: str | Path, options: ExportOptions | None = None,
               say=print) -> tuple[dict, str]:
    """Export, then verify (unless options.verify is False). Returns (report, table); raises
    VerificationFailed (a PrunerecError, carrying both) when a check fails."""
    options = options or ExportOptions()
    options.check()
    with quiet_loading():
        return _run_export(model_ref, out, options, say)


@dataclass
class _Export:
    """One export run: its inputs, and what each written format adds to the report."""
    model_ref: str
    out: Path
    options: ExportOptions
    rec: object
    say: Callable[[str], None]
    folders: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def base_info(self) -> dict:
        return {"source": str(self.model_ref), "dtype": self.options.dtype}

    @property
    def llama_needed(self) -> bool:
        return hf.needs_llama_copy(self.rec.model.config)


def _write_hf(run: _Export, shape: dict, params: dict, prov: dict) -> None:
    out, options, name = run.out, run.options, Path(str(run.model_ref)).name
    vllm_folder = "hf-llama" if run.llama_needed else "hf"
    genai_path = str(out / "genai") if "genai" in options.formats else None
    card_fields = dict(shape=shape, parameters=params, dtype=options.dtype, prov=prov, vllm_folder=vllm_folder,
                       genai_path=genai_path)
    with atomic_dir(out / "hf") as tmp:
        hf.write_hf(run.rec, tmp, {**run.base_info, "format": "hf"})
        write_text(tmp / "README.md", card.model_card(name=f"{name} (prunerec export)", path=str(out / "hf"),
                                                      **card_fields))
    run.folders["hf"] = {"path": str(out / "hf")}
    if run.llama_needed:
        with atomic_dir(out / "hf-llama") as tmp:
            hf.write_llama(run.rec, tmp, {**run.base_info, "format": "hf-llama"})
            write_text(tmp / "README.md", card.model_card(name=f"{name} (prunerec export, Llama layout)",
                                                          path=str(out / "hf-llama"), llama=True, **card_fields))
        run.folders["hf-llama"] = {"path": str(out / "hf-llama")}
        run.notes.append(f"heads x head_dim = {shape['heads'] * shape['head_dim']} != hidden {shape['hidden']}: "
                         "vLLM's native Qwen2 would ignore head_dim; serve OUT/hf-llama with vLLM "
                         "(or OUT/hf with vLLM's own --model-impl transformers; `prunerec serve` picks that "
                         "backend by itself)")
    elif (out / "hf-llama").exists():
        shutil.rmtree(out / "hf-llama")
    run.say(f"wrote {out / 'hf'}" + (f" and {out / 'hf-llama'}" if run.llama_needed else ""))


def _write_onnx(run: _Export) -> None:
    onnx_dtype = "fp32" if run.options.dtype == "bf16" else run.options.dtype
    if run.options.dtype == "bf16":
        run.rec.model.float()  # the bf16 values, widened exactly; the HF folders are already written
        run.notes.append("bf16: the ONNX graph computes in fp32 over the bf16-rounded weights "
                         "(onnxruntime's CPU provider has no bf16 kernels)")
    n_layers = run.rec.model.config.num_hidden_layers
    info = {**run.base_info, "format": "onnx", "onnx_dtype": onnx_dtype, "file": MODEL_FILE, "opset": OPSET,
            "inputs": input_names(n_layers), "outputs": output_names(n_layers),
            "past_layout": "[batch, num_key_value_heads, past_sequence_length, head_dim]",
            "empty_past_for_prefill": True}
    run.say(f"exporting ONNX ({onnx_dtype}) with torch.onnx.export(dynamo=True) ...")
    with atomic_dir(run.out / "onnx") as tmp:
        _write_onnx_folder(run.rec, tmp, info)
    run.folders["onnx"] = {"path": str(run.out / "onnx"), "dtype": onnx_dtype, "opset": OPSET}
    run.say(f"wrote {run.out / 'onnx'}")


def _write_genai(run: _Export) -> None:
    if run.options.dtype == "bf16":
        run.rec.model.float()  # as for ONNX: fp32 over the bf16-rounded weights
        run.notes.append("bf16: the genai model computes in fp32 over the bf16-rounded weights "
                         "(onnxruntime-genai's builder makes bf16 models for CUDA only)")
    run.say(f"building {run.out / 'genai'} with onnxruntime-genai's model builder (fp32, CPU) ...")
    with atomic_dir(run.out / "genai") as tmp:
        record = genai.write_genai(run.rec, tmp, {**run.base_info, "format": "genai"})
    run.folders["genai"] = {"path": str(run.out / "genai"), "dtype": record["graph_dtype"],
                            "execution_provider": record["execution_provider"],
                            "onnxruntime_genai": record["onnxruntime_genai"]}
    run.say(f"wrote {run.out / 'genai'}")


def _timed(run: _Export, name: str, step: Callable[[], object]):
    started = time.perf_counter()
    result = step()
    run.seconds[name] = round(time.perf_counter() - started, 2)
    return result


def _verify(run: _Export) -> dict:
    options = run.options
    run.say("verifying ...")
    verification = _timed(run, "verify", lambda: verify_export(
        run.out, source=run.model_ref, data_dir=options.data_dir, users=options.users, beams=options.beams,
        seed=options.seed, threads=options.threads, formats=options.formats))
    for name, value in verification["load_seconds"].items():
        if name in run.folders:
            run.folders[name]["load_seconds"] = round(value, 3)
    return verification


def _vllm_note(llama_needed: bool) -> dict:
    return {"folder": "hf-llama" if llama_needed else "hf",
            "why": "heads x head_dim != hidden_size; vLLM's native Qwen2 ignores head_dim" if llama_needed
            else "hidden_size == heads x head_dim: the stock Qwen2 folder serves as is"}


def _load_for_export(model_ref: str, out: Path, options: ExportOptions) -> tuple:
    """The model in --dtype, validated before OUT is touched (then OUT's leftovers are swept)."""
    refuse_output_over_inputs(out, "--out", model=model_ref)
    check_fresh_output(out, ("hf", "hf-llama", "onnx", "genai", REPORT_FILE), False, options.overwrite, "an export",
                       resumable=False)
    if options.dtype == "auto":
        options = replace(options, dtype=NAMES[stored_dtype(check_checkpoint(str(model_ref)))])
    rec = load_rec_model(str(model_ref), dtype=hf.DTYPES[options.dtype])
    sweep_temps(out)
    if "genai" in options.formats:
        genai.check(options.dtype, rec.model.config)  # refused before anything is written
    return replace(rec, storage_dtype=None), options  # exports are stored in --dtype


def _run_export(model_ref: str, out: str | Path, options: ExportOptions, say) -> tuple[dict, str]:
    out, started = Path(out), time.perf_counter()
    rec, options = _load_for_export(model_ref, out, options)
    run = _Export(model_ref, out, options, rec, say)
    shape, params, prov = hf.shape(rec.model.config), count_parameters(rec.model), card.provenance(model_ref)
    llama_needed = run.llama_needed
    if "hf" in options.formats:
        _timed(run, "hf", lambda: _write_hf(run, shape, params, prov))
    for name, write in (("onnx", _write_onnx), ("genai", _write_genai)):
        if name in options.formats:
            _timed(run, name, lambda write=write: write(run))
    for entry in run.folders.values():
        entry["bytes"] = folder_bytes(Path(entry["path"]))
    run.rec = rec = None
    verification = _verify(run) if options.verify else {"skipped": True}
    run.seconds["total"] = round(time.perf_counter() - started, 2)
    report = {
        "source": str(model_ref), "out": str(out), "formats": list(options.formats), "dtype": options.dtype,
        "shape": shape, "parameters": params, "provenance": prov, "folders": run.folders,
        "vllm": _vllm_note(llama_needed) if "hf" in options.formats else None,
        "verification": verification, "notes": run.notes, "seconds": run.seconds,
    }
    write_json(out / REPORT_FILE, report)
    table = format_table(report)
    if options.verify:
        raise_if_failed(verification, report, table)
    return report, table


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _num(x) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.3g}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.4g}"


def format_table(report: dict) -> str:
    lines = ["| folder | size | load s |", "|---|---|---|"]
    for name, entry in report["folders"].items():
        load = entry.get("load_seconds")
        lines.append(f"| {name} | {_size(entry['bytes'])} | {'-' if load is None else f'{load:.2f}'} |")
    ver = report["verification"]
    if ver.get("skipped"):
        lines += ["", "verification skipped (--no-verify)"]
    else:
        lines += ["", "| check | result | value | tolerance | what |", "|---|---|---|---|---|"]
        for c in ver["checks"]:
            lines.append(f"| {c['name']} | {'pass' if c['passed'] else 'FAIL'} | {_num(c['value'])} | "
                         f"{_num(c['tolerance'])} | {c['detail']} |")
        lines += ["", f"prompts: {ver['prompts']}; " + ("all checks passed" if ver["passed"] else "SOME CHECKS FAILED")]
    if report.get("vllm"):
        lines.append(f"serve with vLLM: {Path(report['out']) / report['vllm']['folder']} ({report['vllm']['why']})")
    lines += [f"note: {n}" for n in report["notes"]]
    p = report["parameters"]
    lines.append(f"parameters: {p['total']:,} total, {p['non_embedding']:,} non-embedding; "
                 f"report: {Path(report['out']) / REPORT_FILE}")
    return "\n".join(lines)
