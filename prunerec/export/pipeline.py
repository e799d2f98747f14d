"""`prunerec export`: write OUT/hf (+ OUT/hf-llama when needed), OUT/onnx and, on request,
OUT/genai (onnxruntime-genai's builder), verify them, write OUT/export-report.json. Each folder
is written atomically (io.atomic_dir)."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from prunerec.errors import PrunerecError
from prunerec.export import card, genai, hf
from prunerec.export.onnx_export import (
    MODEL_FILE,
    OPSET,
    export_decoder,
    input_names,
    output_names,
)
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
from prunerec.options import BEAMS

FORMATS = ("hf", "onnx", "genai")
DEFAULT_FORMATS = ("hf", "onnx")
REPORT_FILE = "export-report.json"


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...] = DEFAULT_FORMATS
    dtype: str = "auto"  # auto: the checkpoint's storage dtype
    verify: bool = True
    users: int = 4
    data_dir: str | None = None
    beams: int = BEAMS
    seed: int = 0
    threads: int | None = None
    overwrite: bool = False  # replace an earlier export's folders in OUT

    def check(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise PrunerecError(f"unknown export format(s) {unknown or self.formats!r}; "
                                f"choose from {', '.join(FORMATS)}")
        if self.dtype not in hf.DTYPES and self.dtype != "auto":
            raise PrunerecError(f"unknown dtype '{self.dtype}'; choose from auto, {', '.join(hf.DTYPES)}")
        if self.users < 1:
            raise PrunerecError("--users must be at least 1")
        if self.beams < 1:
            raise PrunerecError("--beams must be at least 1")
        if "genai" in self.formats and self.dtype != "auto":
            genai.check(self.dtype)


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    ExportOptions(formats=formats).check()
    return formats


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


def run_export(model_ref: str, out: str | Path, options: ExportOptions = ExportOptions(),
               say=print) -> tuple[dict, str]:
    """Export, then verify (unless options.verify is False). Returns (report, table); raises
    VerificationFailed (a PrunerecError, carrying both) when a check fails."""
    options.check()
    with quiet_loading():
        return _run_export(model_ref, out, options, say)


def _run_export(model_ref: str, out: str | Path, options: ExportOptions, say) -> tuple[dict, str]:
    out = Path(out)
    started = time.perf_counter()
    refuse_output_over_inputs(out, "--out", model=model_ref)
    check_fresh_output(out, ("hf", "hf-llama", "onnx", "genai", REPORT_FILE), False, options.overwrite, "an export",
                       resumable=False)
    if options.dtype == "auto":
        options = replace(options, dtype=NAMES[stored_dtype(check_checkpoint(str(model_ref)))])
    rec = load_rec_model(str(model_ref), dtype=hf.DTYPES[options.dtype])  # validated before OUT is touched
    sweep_temps(out)
    rec = replace(rec, storage_dtype=None)  # exports are stored in --dtype
    config = rec.model.config
    shape, params = hf.shape(config), count_parameters(rec.model)
    prov = card.provenance(model_ref)
    llama_needed = hf.needs_llama_copy(config)
    if "genai" in options.formats:
        genai.check(options.dtype, config)  # refused before anything is written
    base_info = {"source": str(model_ref), "dtype": options.dtype}
    folders: dict[str, dict] = {}
    notes: list[str] = []
    seconds: dict[str, float] = {}

    if "hf" in options.formats:
        t0 = time.perf_counter()
        vllm_folder = "hf-llama" if llama_needed else "hf"
        genai_path = str(out / "genai") if "genai" in options.formats else None
        with atomic_dir(out / "hf") as tmp:
            hf.write_hf(rec, tmp, {**base_info, "format": "hf"})
            write_text(tmp / "README.md", card.model_card(name=f"{Path(str(model_ref)).name} (prunerec export)",
                                                          shape=shape, parameters=params, dtype=options.dtype,
                                                          prov=prov, vllm_folder=vllm_folder,
                                                          path=str(out / "hf"), genai_path=genai_path))
        folders["hf"] = {"path": str(out / "hf")}
        if llama_needed:
            with atomic_dir(out / "hf-llama") as tmp:
                hf.write_llama(rec, tmp, {**base_info, "format": "hf-llama"})
                write_text(tmp / "README.md", card.model_card(
                    name=f"{Path(str(model_ref)).name} (prunerec export, Llama layout)", shape=shape,
                    parameters=params, dtype=options.dtype, prov=prov, vllm_folder=vllm_folder,
                    path=str(out / "hf-llama"), llama=True, genai_path=genai_path))
            folders["hf-llama"] = {"path": str(out / "hf-llama")}
            notes.append(f"heads x head_dim = {shape['heads'] * shape['head_dim']} != hidden {shape['hidden']}: "
                         "vLLM's native Qwen2 would ignore head_dim; serve OUT/hf-llama with vLLM "
                         "(or OUT/hf with vLLM's own --model-impl transformers; `prunerec serve` picks that "
                         "backend by itself)")
        elif (out / "hf-llama").exists():
            shutil.rmtree(out / "hf-llama")
        seconds["hf"] = round(time.perf_counter() - t0, 2)
        say(f"wrote {out / 'hf'}" + (f" and {out / 'hf-llama'}" if llama_needed else ""))

    if "onnx" in options.formats:
        t0 = time.perf_counter()
        onnx_dtype = "fp32" if options.dtype == "bf16" else options.dtype
        if options.dtype == "bf16":
            rec.model.float()  # the bf16 values, widened exactly; the HF folders are already written
            notes.append("bf16: the ONNX graph computes in fp32 over the bf16-rounded weights "
                         "(onnxruntime's CPU provider has no bf16 kernels)")
        n_layers = config.num_hidden_layers
        info = {**base_info, "format": "onnx", "onnx_dtype": onnx_dtype, "file": MODEL_FILE, "opset": OPSET,
                "inputs": input_names(n_layers), "outputs": output_names(n_layers),
                "past_layout": "[batch, num_key_value_heads, past_sequence_length, head_dim]",
                "empty_past_for_prefill": True}
        say(f"exporting ONNX ({onnx_dtype}) with torch.onnx.export(dynamo=True) ...")
        with atomic_dir(out / "onnx") as tmp:
            _write_onnx_folder(rec, tmp, info)
        folders["onnx"] = {"path": str(out / "onnx"), "dtype": onnx_dtype, "opset": OPSET}
        seconds["onnx"] = round(time.perf_counter() - t0, 2)
        say(f"wrote {out / 'onnx'}")

    if "genai" in options.formats:
        t0 = time.perf_counter()
        if options.dtype == "bf16":
            rec.model.float()  # as for ONNX: fp32 over the bf16-rounded weights
            notes.append("bf16: the genai model computes in fp32 over the bf16-rounded weights "
                         "(onnxruntime-genai's builder makes bf16 models for CUDA only)")
        say(f"building {out / 'genai'} with onnxruntime-genai's model builder (fp32, CPU) ...")
        with atomic_dir(out / "genai") as tmp:
            record = genai.write_genai(rec, tmp, {**base_info, "format": "genai"})
        folders["genai"] = {"path": str(out / "genai"), "dtype": record["graph_dtype"],
                            "execution_provider": record["execution_provider"],
                            "onnxruntime_genai": record["onnxruntime_genai"]}
        seconds["genai"] = round(time.perf_counter() - t0, 2)
        say(f"wrote {out / 'genai'}")

    for entry in folders.values():
        entry["bytes"] = folder_bytes(Path(entry["path"]))
    del rec

    verification = {"skipped": True}
    if options.verify:
        say("verifying ...")
        t0 = time.perf_counter()
        verification = verify_export(out, source=model_ref, data_dir=options.data_dir, users=options.users,
                                     beams=options.beams, seed=options.seed, threads=options.threads,
                                     formats=options.formats)
        seconds["verify"] = round(time.perf_counter() - t0, 2)
        for name, value in verification["load_seconds"].items():
            if name in folders:
                folders[name]["load_seconds"] = round(value, 3)
    seconds["total"] = round(time.perf_counter() - started, 2)
    report = {
        "source": str(model_ref), "out": str(out), "formats": list(options.formats), "dtype": options.dtype,
        "shape": shape, "parameters": params, "provenance": prov, "folders": folders,
        "vllm": ({"folder": "hf-llama" if llama_needed else "hf",
                  "why": "heads x head_dim != hidden_size; vLLM's native Qwen2 ignores head_dim" if llama_needed
                  else "hidden_size == heads x head_dim: the stock Qwen2 folder serves as is"}
                 if "hf" in options.formats else None),
        "verification": verification, "notes": notes, "seconds": seconds,
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
