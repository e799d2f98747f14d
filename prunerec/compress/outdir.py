"""OUT of `prunerec compress`: what may be written there, and whether a --resume matches the run in it."""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from prunerec.errors import PrunerecError
from prunerec.io import check_fresh_output, fingerprint, refuse_output_over_inputs, remove_own, sweep_temps, write_json
from prunerec.train.sft import DATA_FILES, model_fingerprint

STATE = ".state"
# files and folders of ours: an earlier run's are replaced only with --overwrite
OWN_OUTPUTS = (STATE, "stage1", "stage2", "stage3", "final", "report.json", "report.md",
               "parameters.png", "quality.png", "distill_loss.png")


def _ref_id(ref) -> str:
    path = Path(str(ref)).expanduser()
    return str(path.resolve()) if path.exists() else str(ref)


def _as_saved(value):
    return json.loads(json.dumps(value))  # tuples become lists


def run_info(model_ref, data_dir, opts, targets) -> dict:
    """What the run is: its inputs by path and by content, its options and targets."""
    return {"model": _ref_id(model_ref), "data": _ref_id(data_dir),
            "model_content": model_fingerprint(str(model_ref)),
            "data_content": "sha256 " + fingerprint(data_dir, DATA_FILES),
            "options": _as_saved(asdict(opts)), "targets": targets.to_json()}


# options that change how the work is done, never its result: a resume may change them
RESULT_NEUTRAL = ("teacher_cache",)


def changed_options(saved_options: dict, opts) -> list[str]:
    """Names of the options in `opts` that differ from a saved run's; an option added since that
    run was saved counts at its default, and RESULT_NEUTRAL ones never count."""
    now, defaults = _as_saved(asdict(opts)), _as_saved({f.name: f.default for f in fields(opts)})
    return [name for name, value in now.items()
            if name not in RESULT_NEUTRAL and saved_options.get(name, defaults[name]) != value]


def _changed(saved: dict, run_info: dict, opts) -> str:
    names = {"model": "--model", "data": "--data", "model_content": "--model (its content changed)",
             "data_content": "--data (its content changed)", "targets": "the targets"}
    diff = [names.get(k, k) for k in run_info if k != "options" and saved.get(k) != run_info[k]]
    diff += [f"--{k.replace('_', '-')}" for k in changed_options(saved.get("options", {}), opts)]
    return ", ".join(diff)


def prepare_out(out: Path, model_ref, data_dir, run_info: dict, opts, resume: bool, overwrite: bool) -> None:
    refuse_output_over_inputs(out, "--out", model=model_ref, data=data_dir)
    if check_fresh_output(out, OWN_OUTPUTS, resume, overwrite, "a compress run"):
        remove_own(out, OWN_OUTPUTS)
    sweep_temps(out)
    state = out / STATE
    saved_path = state / "run.json"
    if resume and saved_path.is_file():
        changed = _changed(json.loads(saved_path.read_text()), run_info, opts)
        if changed:
            raise PrunerecError(f"{out} holds a compress run with different settings ({changed}); rerun with the "
                                "same options to resume, or with --overwrite to start again")
    state.mkdir(parents=True, exist_ok=True)
    write_json(saved_path, run_info)
