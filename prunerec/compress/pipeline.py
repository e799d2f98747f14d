"""The PruneRec recipe end to end: check, evaluate the base, then per stage score -> prune ->
distil from the original model -> evaluate -> publish a stock checkpoint; then the report.

Layout of OUT:
  stage1/ stage2/ stage3/ final/   stock HF Qwen2 folders + tokenizer + catalog.jsonl +
                                   prunerec.json + compress.json (what the stage did)
  report.json report.md *.png      the summary
  .state/run.json                  the run: inputs by path and content, settings (a resume must match)
  .state/base_eval.json            the base model's validation metrics
  .state/stageN/pruned/            the stage's pruned, not yet distilled model
  .state/stageN/train/             the distillation's Trainer state (resumable)
                                   (.state/stageN is removed once the whole run has finished)

Every folder is written atomically; a stage folder exists only once the stage finished. Each
stage starts from the previous stage's folder as read back from disk (the pruned model too),
so a resumed run computes exactly what an unbroken one does.

Under torchrun (several GPUs, data parallel) every rank runs this recipe: rank 0 alone scores,
prunes, evaluates and writes; every rank then reads the pruned model back from OUT and takes
part in the distillation (see train/trainer.py). OUT must be on storage all ranks see.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from prunerec import distributed
from prunerec.compress.distill import Lineage, distill
from prunerec.compress.options import CompressOptions
from prunerec.compress.outdir import STATE, prepare_out, run_info
from prunerec.compress.report import REPORT_KS, build_report, write_report
from prunerec.compress.stages import STAGES, Calibration, ScoringOptions, build_calibration
from prunerec.compress.targets import Targets, base_shape, resolve_targets, target_summary
from prunerec.compress.teacher_cache import TeacherCache
from prunerec.data.catalog import load_dataset
from prunerec.errors import PrunerecError
from prunerec.io import atomic_dir, write_json
from prunerec.model.checkpoint import RecModel, check_checkpoint, load_rec_model, quiet_loading
from prunerec.model.dtypes import precision_warning
from prunerec.model.encode import build_examples
from prunerec.model.surgery import count_parameters
from prunerec.train.sft import subsample

__all__ = ["CompressOptions", "CompressInputs", "load_inputs", "run_compress", "plan_only", "STAGE_FILE", "REPORT_KS"]

STAGE_FILE = "compress.json"
PRUNE_FILE = "pruning.json"


def _teacher_cache(opts: CompressOptions, run: dict | None, teacher) -> TeacherCache | None:
    """The cache folder of this teacher inside --teacher-cache (named by the teacher's content,
    as `run_info` fingerprinted it)."""
    if not opts.teacher_cache:
        return None
    if distributed.world_size() > 1:
        _say("note: --teacher-cache is not used under torchrun")
        return None
    name = hashlib.sha256(run["model_content"].encode()).hexdigest()[:16]
    return TeacherCache(Path(opts.teacher_cache).expanduser() / name, teacher.config.hidden_size)


def _say(message: str) -> None:
    if distributed.is_main():
        tqdm.write(message, file=sys.stderr)


def _eval_options(opts: CompressOptions):
    from prunerec.evaluate.options import EvalOptions

    return EvalOptions(split="valid", grounding="trie", beams=opts.beams, batch_size=opts.eval_batch_size,
                       limit=opts.eval_users, seed=opts.seed)


def _evaluate(rec: RecModel, data_dir, opts: CompressOptions) -> dict | None:
    """Validation HR/NDCG with trie-constrained beam search; None when --eval-users is 0."""
    if not opts.eval_users:
        return None
    from prunerec.evaluate.pipeline import evaluate_model

    rec.model.eval()
    started = time.perf_counter()
    report = evaluate_model(rec, data_dir, _eval_options(opts))
    result = report["results"]["trie"]
    return {"split": "valid", "users": report["users"], "num_beams": report["num_beams"],
            "metrics": result["metrics"], "ci95": result["ci95"],
            "popularity": report["results"]["popularity"]["metrics"],
            "seconds": round(time.perf_counter() - started, 2)}


def _save_rec(rec: RecModel, folder: Path, extra_files: dict[str, dict]) -> None:
    with atomic_dir(folder) as tmp:
        rec.save(tmp)
        for name, obj in extra_files.items():
            write_json(tmp / name, obj)


# ----------------------------------------------------------------------------- the recipe


@dataclass
class CompressInputs:
    base: RecModel
    targets: Targets
    data_dir: Path
    train: list
    valid: list
    calib: Calibration


def load_inputs(model_ref, data_dir, opts: CompressOptions, build: bool = True) -> CompressInputs:
    """Everything that can be wrong with the input, found before any work starts."""
    opts.check()
    check_checkpoint(str(model_ref))
    data = load_dataset(data_dir, splits=("train", "valid"))
    for split in ("train", "valid"):
        if not data[split]:
            raise PrunerecError(f"split '{split}' of {data_dir} has no rows")
    base = load_rec_model(str(model_ref), need_catalog=True)
    if base.catalog.titles != data.catalog.titles:
        raise PrunerecError(f"{model_ref} was trained for a different catalog than {data_dir}/items.jsonl")
    cfg = base.model.config
    if getattr(cfg, "model_type", "") != "qwen2" or not hasattr(base.model, "model"):
        raise PrunerecError(f"{model_ref} is a '{cfg.model_type}' model; compress works on Qwen2 checkpoints")
    targets = resolve_targets(cfg, heads=opts.heads, kv_heads=opts.kv_heads, hidden=opts.hidden, mlp=opts.mlp,
                              layers=opts.layers, config_file=opts.target_file)
    if not build:
        return CompressInputs(base, targets, Path(data_dir), [], [], Calibration([], [], 0))
    tok, settings = base.tokenizer, base.settings
    train_rows = subsample(data["train"], opts.train_limit, opts.seed)
    valid_rows = subsample(data["valid"], opts.valid_limit, opts.seed)
    calib_rows = subsample(data["train"], opts.calib_samples, opts.seed + 1)
    train = build_examples(tok, train_rows, data.catalog, settings)
    valid = build_examples(tok, valid_rows, data.catalog, settings)
    calib = build_calibration(build_examples(tok, calib_rows, data.catalog, settings), tok.pad_token_id,
                              opts.calib_batch_size)
    return CompressInputs(base, targets, Path(data_dir), train, valid, calib)


def plan_only(model_ref, data_dir, options: CompressOptions) -> dict:
    """The checks of a run and its target shape with parameter counts, without any work."""
    with quiet_loading():
        inputs = load_inputs(model_ref, data_dir, options, build=False)
    scoring = options.scoring()
    return {"method": scoring.method, "layer_method": scoring.layer_method, "mode": options.mode,
            "targets": inputs.targets.to_json(), **target_summary(inputs.base.model.config, inputs.targets)}


def _stage_info(base_ref, base: RecModel, stage: str, opts: CompressOptions, targets: Targets, distilled: bool) -> dict:
    info = {k: v for k, v in base.info.items() if k not in ("compress",)}
    return {**info, "compress": {"base": str(base_ref), "stage": stage, "method": opts.method,
                                 "layer_method": opts.scoring().layer_method, "mode": opts.mode,
                                 "distilled": distilled, "targets": targets.to_json()}}


def run_compress(model_ref, data_dir, out, options: CompressOptions | None = None, *, resume: bool = False,
                 stop_after: str | None = None, overwrite: bool = False) -> dict:
    """Run (or resume) the whole pipeline; returns the report (also written to OUT/report.json).

    ``stop_after`` ("base" or a stage name) returns early once that step is saved: for tests
    of --resume and for running one stage at a time.
    """
    with quiet_loading():
        return _run(model_ref, data_dir, Path(out), options or CompressOptions(), resume, stop_after, overwrite)


@dataclass
class _Run:
    """One compress run: its inputs, the frozen teacher, and whether this process writes (rank 0)."""
    model_ref: str
    data_dir: object
    out: Path
    opts: CompressOptions
    inputs: CompressInputs
    scoring: ScoringOptions
    main: bool
    info: dict | None
    teacher: object = None
    cache: TeacherCache | None = None

    @property
    def state(self) -> Path:
        return self.out / STATE


def _announce(run: _Run, plan: dict) -> None:
    targets, opts = run.inputs.targets, run.opts
    _say(f"compress {run.model_ref} -> {run.out}: method {opts.method} (layers: {run.scoring.layer_method}), "
         f"{opts.mode}; target {targets.layers} layers, {targets.heads}q/{targets.kv_heads}kv heads, hidden "
         f"{targets.hidden}, MLP {targets.mlp}: {plan['target_parameters']['non_embedding']:,} non-embedding "
         f"parameters ({plan['non_embedding_removed_share']:.2%} removed)")
    for note in targets.notes:
        _say(f"note: {note}")
    warning = precision_warning(opts.precision, distributed.device()) if opts.distill else None
    if warning:
        _say(f"warning: {warning}")


def _base_record(run: _Run) -> dict:
    """The base: counted and evaluated once (cached for --resume)."""
    base, base_file, record = run.inputs.base, run.state / "base_eval.json", None
    if run.main and not base_file.is_file():
        _say("evaluating the base model on validation")
        record = {"path": str(run.model_ref), "shape": base_shape(base.model.config),
                  "parameters": count_parameters(base.model), "eval": _evaluate(base, run.data_dir, run.opts)}
        write_json(base_file, record)
    distributed.barrier()
    return record if record is not None else json.loads(base_file.read_text())


def _freeze_teacher(run: _Run) -> None:
    run.teacher = run.inputs.base.model
    run.teacher.eval()
    for p in run.teacher.parameters():
        p.requires_grad_(False)
    run.cache = _teacher_cache(run.opts, run.info, run.teacher) if run.opts.distill else None


def _prune_stage(run: _Run, name: str, what: str, prune, prev: str) -> tuple[dict, Path]:
    """Score and prune the previous stage's model (rank 0; cached for --resume): the record, the folder."""
    opts, base, pruned_dir = run.opts, run.inputs.base, run.state / name / "pruned"
    if run.main and not (pruned_dir / PRUNE_FILE).is_file():
        _say(f"{name}: scoring and pruning {what} ({opts.method if name != 'stage3' else run.scoring.layer_method})")
        rec = load_rec_model(prev)
        t0 = time.perf_counter()
        prune_record = prune(rec.model, run.inputs.calib, run.inputs.targets, run.scoring)
        prune_record["wall_seconds"] = round(time.perf_counter() - t0, 2)
        info = _stage_info(run.model_ref, base, name, opts, run.inputs.targets, False)
        _save_rec(replace(rec, catalog=base.catalog, info=info), pruned_dir, {PRUNE_FILE: prune_record})
    distributed.barrier()
    return json.loads((pruned_dir / PRUNE_FILE).read_text()), pruned_dir


def _stage_record(run: _Run, name: str, what: str, rec: RecModel, prune_record: dict, summary: dict | None,
                  distilled: bool) -> dict:
    evaluation = _evaluate(rec, run.data_dir, run.opts)
    distill_s = summary["train_seconds"] if summary else 0.0
    eval_s = evaluation["seconds"] if evaluation else 0.0
    record = {
        "stage": name, "pruned": what, "method": run.opts.method, "layer_method": run.scoring.layer_method,
        "mode": run.opts.mode, "distilled": distilled,
        "shape": base_shape(rec.model.config), "parameters": count_parameters(rec.model),
        "pruning": prune_record, "distill": summary, "eval": evaluation,
        "wall_seconds": {"prune": prune_record["wall_seconds"], "distill": distill_s, "evaluate": eval_s,
                         "total": round(prune_record["wall_seconds"] + distill_s + eval_s, 2)},
    }
    if distributed.world_size() > 1 and summary:
        record["distill"]["world_size"] = distributed.world_size()
    return record


def _run_stage(run: _Run, name: str, what: str, prune, prev: str, records: list[dict]) -> dict:
    """Prune, distil (where the mode says so), evaluate and save one stage; its record."""
    opts, base, stage_dir = run.opts, run.inputs.base, run.out / name
    prune_record, pruned_dir = _prune_stage(run, name, what, prune, prev)
    rec = load_rec_model(str(pruned_dir))
    distilled = opts.distills_after(name)
    summary = None
    if distilled:
        _say(f"{name}: distilling from the original model")
        lineage = Lineage.of([r["pruning"]["kept"] for r in records] + [prune_record["kept"]],
                             run.teacher.config.num_hidden_layers)
        summary = distill(rec.model, run.teacher, run.inputs.train, run.inputs.valid, opts.train_config(name),
                          run.state / name / "train", base.tokenizer.pad_token_id, opts.distill_settings(),
                          resume=True, desc=f"{name} distill", lineage=lineage, cache=run.cache)
    record = None
    if run.main:
        _say(f"{name}: evaluating on validation")
        record = _stage_record(run, name, what, rec, prune_record, summary, distilled)
        info = _stage_info(run.model_ref, base, name, opts, run.inputs.targets, distilled)
        _save_rec(replace(rec, catalog=base.catalog, info=info), stage_dir, {STAGE_FILE: record})
    distributed.barrier()
    return record if run.main else json.loads((stage_dir / STAGE_FILE).read_text())


def _run_stages(run: _Run, stop_after: str | None) -> list[dict]:
    records, prev = [], str(run.model_ref)
    bar = tqdm(total=len(STAGES), desc="compress", unit="stage", dynamic_ncols=True, disable=not run.main)
    for name, what, prune in STAGES:
        stage_dir = run.out / name
        if (stage_dir / STAGE_FILE).is_file():
            records.append(json.loads((stage_dir / STAGE_FILE).read_text()))
            _say(f"{name}: already finished, reusing {stage_dir}")
        else:
            bar.set_postfix_str(f"{name}: {what}")
            records.append(_run_stage(run, name, what, prune, prev, records))
        prev = str(stage_dir)
        bar.update(1)
        if stop_after == name:
            break
    bar.close()
    return records


def _finish(run: _Run, plan: dict, base_record: dict, records: list[dict], started: float) -> dict:
    """OUT/final, report.json and report.md (rank 0), and the stages' resume state removed."""
    out, report = run.out, None
    if run.main:
        with atomic_dir(out / "final") as tmp:
            shutil.copytree(out / STAGES[-1][0], tmp, dirs_exist_ok=True)
        report = build_report(run.model_ref, run.data_dir, out, run.opts, run.inputs.targets, plan, base_record,
                              records, time.perf_counter() - started)
        write_report(out, report)
        for name, _, _ in STAGES:  # pruned copies and trainer states are only needed to resume
            shutil.rmtree(run.state / name, ignore_errors=True)
        _say(f"done: {out / 'final'}; report in {out / 'report.md'}")
    distributed.barrier()
    return report if run.main else json.loads((out / "report.json").read_text())


def _run(model_ref, data_dir, out: Path, options: CompressOptions, resume: bool, stop_after: str | None,
         overwrite: bool) -> dict:
    started = time.perf_counter()
    inputs = load_inputs(model_ref, data_dir, options)
    distributed.init()
    main = distributed.is_main()  # under torchrun: rank 0 scores, prunes, evaluates and writes
    info = run_info(model_ref, data_dir, options, inputs.targets) if main else None
    if main:
        prepare_out(out, model_ref, data_dir, info, options, resume, overwrite)
    distributed.barrier()
    run = _Run(model_ref, data_dir, out, options, inputs, options.scoring(), main, info)
    plan = target_summary(inputs.base.model.config, inputs.targets)
    _announce(run, plan)
    base_record = _base_record(run)
    if stop_after == "base":
        return {}
    _freeze_teacher(run)
    records = _run_stages(run, stop_after)
    if len(records) < len(STAGES):
        return {}
    return _finish(run, plan, base_record, records, started)
