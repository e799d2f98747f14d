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
part in the distillation (see rec/trainer.py). OUT must be on storage all ranks see.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from prunerec import distributed
from prunerec.compress.distill import DistillSettings, Lineage, distill
from prunerec.compress.outdir import STATE, prepare_out, run_info
from prunerec.compress.report import write_report
from prunerec.compress.stages import STAGES, Calibration, ScoringOptions, build_calibration, default_layer_method
from prunerec.compress.targets import Targets, base_shape, resolve_targets, target_summary
from prunerec.compress.teacher_cache import TeacherCache
from prunerec.data.catalog import load_dataset
from prunerec.errors import PrunerecError
from prunerec.io import atomic_dir, write_json
from prunerec.model.checkpoint import RecModel, check_checkpoint, load_rec_model, quiet_loading
from prunerec.model.surgery import count_parameters
from prunerec.options import BEAMS
from prunerec.rec.encode import build_examples
from prunerec.rec.sft import subsample
from prunerec.rec.train_options import TRAINING_FLAGS, TrainingOptions
from prunerec.rec.trainer import TrainConfig

__all__ = ["CompressOptions", "CompressInputs", "load_inputs", "run_compress", "plan_only", "STAGE_FILE", "REPORT_KS"]

STAGE_FILE = "compress.json"
PRUNE_FILE = "pruning.json"
REPORT_KS = (5, 10, 20)


@dataclass(frozen=True)
class CompressOptions:
    # what to prune and how
    method: str = "prunerec"
    layer_method: str | None = None  # None: default_layer_method(method)
    heads: int | float | str | None = None
    kv_heads: int | float | str | None = None
    hidden: int | float | str | None = None
    mlp: int | float | str | None = None
    layers: int | float | str | None = None
    target_file: str | None = None
    calib_samples: int = 64
    calib_batch_size: int = 16
    alpha: float = 0.7
    mask_mode: str = "zero_o_proj"
    stability: bool = False
    # distillation
    distill: bool = True
    one_shot: bool = False
    lam: float = 0.2
    tau: float = 1.0
    hidden_distill: float = 0.0
    teacher_cache: str | None = None  # folder; the teacher's hidden states are kept there per teacher
    epochs: int = TrainConfig.epochs
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    warmup: int = TrainConfig.warmup_steps
    weight_decay: float = TrainConfig.weight_decay
    patience: int = TrainConfig.patience
    eval_every: int = TrainConfig.eval_every
    max_steps: int = TrainConfig.max_steps
    stage_steps: tuple[int, ...] | None = None  # max_steps of each stage's distillation, in stage order
    time_budget: float = 0.0  # minutes per distillation
    decay_to_budget: bool = TrainConfig.decay_to_budget
    train_limit: int | None = None
    valid_limit: int | None = 500
    # evaluation
    eval_users: int = 500
    eval_batch_size: int = 8
    beams: int = BEAMS
    seed: int = TrainConfig.seed

    def check(self) -> None:
        for name in ("calib_samples", "calib_batch_size", "eval_batch_size", "beams"):
            if getattr(self, name) <= 0:
                raise PrunerecError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.eval_users < 0:
            raise PrunerecError(f"--eval-users must be >= 0, got {self.eval_users}")
        self.training().check()
        if self.one_shot and not self.distill:
            raise PrunerecError("--one-shot distils once after all stages; it cannot be combined with --no-distill")
        self.distill_settings()
        if self.teacher_cache and self.hidden_distill:
            raise PrunerecError("--teacher-cache keeps the teacher's last hidden states only; --hidden-distill needs "
                                "every layer's: use one or the other")
        self.scoring()
        if self.stage_steps is not None:
            if len(self.stage_steps) != len(STAGES) or min(self.stage_steps) < 1:
                raise PrunerecError(f"--stage-steps takes three step counts >= 1 (after stage I, II and III), "
                                    f"got {','.join(map(str, self.stage_steps))}")
            if not self.distill:
                raise PrunerecError("--stage-steps sets distillation lengths; it cannot be combined with --no-distill")

    def training(self) -> TrainingOptions:
        """The distillation's training options (the flags `prunerec train` shares)."""
        return TrainingOptions(**{name: getattr(self, name) for name in TRAINING_FLAGS})

    def distill_settings(self) -> DistillSettings:
        return DistillSettings(self.lam, self.tau, self.hidden_distill)

    def scoring(self) -> ScoringOptions:
        return ScoringOptions(method=self.method, layer_method=self.layer_method or default_layer_method(self.method),
                              alpha=self.alpha, mask_mode=self.mask_mode, seed=self.seed, stability=self.stability)

    def train_config(self, stage: str | None = None) -> TrainConfig:
        """The distillation's training settings; with --stage-steps, `stage`'s own step limit."""
        config = self.training().config(default_lr=self.lr, checkpoint_every=100)
        if self.stage_steps is None or stage is None:
            return config
        return replace(config, max_steps=self.stage_steps[[name for name, _, _ in STAGES].index(stage)])

    def distills_after(self, stage: str) -> bool:
        if not self.distill:
            return False
        return stage == STAGES[-1][0] if self.one_shot else True

    @property
    def mode(self) -> str:
        return "one-shot" if self.one_shot else ("prune only" if not self.distill else "staged")


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
    from prunerec.rec.evaluate import EvalOptions

    return EvalOptions(split="valid", groundings=("trie",), num_beams=opts.beams, batch_size=opts.eval_batch_size,
                       limit=opts.eval_users, seed=opts.seed)


def _evaluate(rec: RecModel, data_dir, opts: CompressOptions) -> dict | None:
    """Validation HR/NDCG with trie-constrained beam search; None when --eval-users is 0."""
    if not opts.eval_users:
        return None
    from prunerec.rec.evaluate import evaluate_model

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


def run_compress(model_ref, data_dir, out, options: CompressOptions = CompressOptions(), *, resume: bool = False,
                 stop_after: str | None = None, overwrite: bool = False) -> dict:
    """Run (or resume) the whole pipeline; returns the report (also written to OUT/report.json).

    ``stop_after`` ("base" or a stage name) returns early once that step is saved: for tests
    of --resume and for running one stage at a time.
    """
    with quiet_loading():
        return _run(model_ref, data_dir, Path(out), options, resume, stop_after, overwrite)


def _run(model_ref, data_dir, out: Path, options: CompressOptions, resume: bool, stop_after: str | None,
         overwrite: bool) -> dict:
    started = time.perf_counter()
    inputs = load_inputs(model_ref, data_dir, options)
    base, targets, opts = inputs.base, inputs.targets, options
    scoring = opts.scoring()
    distributed.init()
    main = distributed.is_main()  # under torchrun: rank 0 scores, prunes, evaluates and writes
    info = run_info(model_ref, data_dir, opts, targets) if main else None
    if main:
        prepare_out(out, model_ref, data_dir, info, opts, resume, overwrite)
    distributed.barrier()
    state = out / STATE
    plan = target_summary(base.model.config, targets)
    _say(f"compress {model_ref} -> {out}: method {opts.method} (layers: {scoring.layer_method}), {opts.mode}; "
         f"target {targets.layers} layers, {targets.heads}q/{targets.kv_heads}kv heads, hidden {targets.hidden}, "
         f"MLP {targets.mlp}: {plan['target_parameters']['non_embedding']:,} non-embedding parameters "
         f"({plan['non_embedding_removed_share']:.2%} removed)")
    for note in targets.notes:
        _say(f"note: {note}")

    # the base: counted and evaluated once (cached for --resume)
    base_file = state / "base_eval.json"
    base_record = None
    if main and not base_file.is_file():
        _say("evaluating the base model on validation")
        base_record = {"path": str(model_ref), "shape": base_shape(base.model.config),
                       "parameters": count_parameters(base.model), "eval": _evaluate(base, data_dir, opts)}
        write_json(base_file, base_record)
    distributed.barrier()
    if base_record is None:
        base_record = json.loads(base_file.read_text())
    if stop_after == "base":
        return {}

    teacher = base.model
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    dsettings = opts.distill_settings()
    cache = _teacher_cache(opts, info, teacher) if opts.distill else None

    records, prev = [], str(model_ref)
    bar = tqdm(total=len(STAGES), desc="compress", unit="stage", dynamic_ncols=True, disable=not main)
    for name, what, prune in STAGES:
        stage_dir, sdir = out / name, state / name
        if (stage_dir / STAGE_FILE).is_file():
            records.append(json.loads((stage_dir / STAGE_FILE).read_text()))
            _say(f"{name}: already finished, reusing {stage_dir}")
            prev = str(stage_dir)
            bar.update(1)
            if stop_after == name:
                break
            continue
        bar.set_postfix_str(f"{name}: {what}")
        pruned_dir = sdir / "pruned"
        if main and not (pruned_dir / PRUNE_FILE).is_file():
            _say(f"{name}: scoring and pruning {what} ({opts.method if name != 'stage3' else scoring.layer_method})")
            rec = load_rec_model(prev)
            t0 = time.perf_counter()
            prune_record = prune(rec.model, inputs.calib, targets, scoring)
            prune_record["wall_seconds"] = round(time.perf_counter() - t0, 2)
            _save_rec(replace(rec, catalog=base.catalog, info=_stage_info(model_ref, base, name, opts, targets, False)),
                      pruned_dir, {PRUNE_FILE: prune_record})
        distributed.barrier()
        prune_record = json.loads((pruned_dir / PRUNE_FILE).read_text())
        rec = load_rec_model(str(pruned_dir))
        distilled = opts.distills_after(name)
        summary = None
        if distilled:
            _say(f"{name}: distilling from the original model")
            lineage = Lineage.of([r["pruning"]["kept"] for r in records] + [prune_record["kept"]],
                                 teacher.config.num_hidden_layers)
            summary = distill(rec.model, teacher, inputs.train, inputs.valid, opts.train_config(name), sdir / "train",
                              base.tokenizer.pad_token_id, dsettings, resume=True, desc=f"{name} distill",
                              lineage=lineage, cache=cache)
        if main:
            _say(f"{name}: evaluating on validation")
            evaluation = _evaluate(rec, data_dir, opts)
            distill_s = summary["train_seconds"] if summary else 0.0
            eval_s = evaluation["seconds"] if evaluation else 0.0
            record = {
                "stage": name, "pruned": what, "method": opts.method, "layer_method": scoring.layer_method,
                "mode": opts.mode, "distilled": distilled,
                "shape": base_shape(rec.model.config), "parameters": count_parameters(rec.model),
                "pruning": prune_record, "distill": summary, "eval": evaluation,
                "wall_seconds": {"prune": prune_record["wall_seconds"], "distill": distill_s, "evaluate": eval_s,
                                 "total": round(prune_record["wall_seconds"] + distill_s + eval_s, 2)},
            }
            if distributed.world_size() > 1 and summary:
                record["distill"]["world_size"] = distributed.world_size()
            info = _stage_info(model_ref, base, name, opts, targets, distilled)
            _save_rec(replace(rec, catalog=base.catalog, info=info), stage_dir, {STAGE_FILE: record})
        distributed.barrier()
        records.append(record if main else json.loads((stage_dir / STAGE_FILE).read_text()))
        prev = str(stage_dir)
        bar.update(1)
        if stop_after == name:
            break
    bar.close()
    if len(records) < len(STAGES):
        return {}

    if main:
        with atomic_dir(out / "final") as tmp:
            shutil.copytree(out / STAGES[-1][0], tmp, dirs_exist_ok=True)
        report = build_report(model_ref, data_dir, out, opts, targets, plan, base_record, records,
                              time.perf_counter() - started)
        write_report(out, report)
        for name, _, _ in STAGES:  # pruned copies and trainer states are only needed to resume
            shutil.rmtree(state / name, ignore_errors=True)
        _say(f"done: {out / 'final'}; report in {out / 'report.md'}")
    distributed.barrier()
    return json.loads((out / "report.json").read_text()) if not main else report


# ----------------------------------------------------------------------------- report


def _kept_ratios(candidate: dict | None, base: dict | None) -> dict:
    if not candidate or not base:
        return {}
    out = {}
    for k in REPORT_KS:
        for m in ("HR", "NDCG"):
            key = f"{m}@{k}"
            b, c = base["metrics"].get(key), candidate["metrics"].get(key)
            if b is not None and c is not None and b > 0:
                out[key] = c / b
    if out:
        out["mean"] = sum(out.values()) / len(out)
    return out


def build_report(model_ref, data_dir, out: Path, opts: CompressOptions, targets: Targets, plan: dict,
                 base_record: dict, records: list[dict], wall_s: float) -> dict:
    base_params = base_record["parameters"]
    stages = []
    for r in records:
        p = r["parameters"]
        stages.append({**r, "non_embedding_removed_share": 1 - p["non_embedding"] / base_params["non_embedding"],
                       "total_removed_share": 1 - p["total"] / base_params["total"],
                       "quality_kept": _kept_ratios(r["eval"], base_record["eval"])})
    final = stages[-1]
    return {
        "model": str(model_ref), "data": str(data_dir), "out": str(out),
        "options": asdict(opts), "targets": targets.to_json(), "plan": plan,
        "base": base_record, "stages": stages,
        "final": {"path": str(out / "final"), "shape": final["shape"], "parameters": final["parameters"],
                  "non_embedding_removed_share": final["non_embedding_removed_share"],
                  "total_removed_share": final["total_removed_share"],
                  "quality_kept": final["quality_kept"], "eval": final["eval"]},
        "wall_seconds_this_run": round(wall_s, 1),
        "wall_seconds_stages": round(sum(s["wall_seconds"]["total"] for s in stages), 1),
    }

