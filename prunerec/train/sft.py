"""BIGRec supervised fine-tuning: the model learns to write the next item's title.

Loss on response tokens only, prompts cut from the left, validation loss during training,
early stopping, best weights kept, resumable. The result is a stock HF checkpoint folder
plus the catalog it was trained for (see model/checkpoint.py).

Under torchrun every rank runs this function: rank 0 prepares the state folder and the
tokenizer first, all ranks train (data parallel, see train/trainer.py), rank 0 writes the result.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2ForCausalLM

from prunerec import distributed, io
from prunerec.data.catalog import Catalog, Dataset, Sample, load_dataset
from prunerec.errors import PrunerecError
from prunerec.model.batching import response_ce
from prunerec.model.checkpoint import RecModel, load_rec_model
from prunerec.model.encode import build_examples, history_titles
from prunerec.model.presets import PRESETS, Preset
from prunerec.model.prompt import PromptSettings, format_prompt, format_response
from prunerec.model.tokenizer import train_tokenizer
from prunerec.model.validate import check_catalog_titles
from prunerec.plots import pyplot, save_png
from prunerec.train.lora import add_lora, freeze_below, merge_lora, top_layers, trainable_parameters
from prunerec.train.options import FineTuneOptions
from prunerec.train.trainer import TrainConfig, Trainer

FULL_FINE_TUNING = FineTuneOptions()
STATE_DIR = ".train-state"
RUN_FILE = "run.json"  # in STATE_DIR: what the run is (content fingerprints, options)
# options added since: the value an older run.json's run had
IDENTITY_ADDED = {"--precision": "fp32", "--valid-period": False}
DATA_FILES = ("items.jsonl", "train.jsonl", "valid.jsonl")
# what a training run writes into OUT (an earlier run's are replaced only with --overwrite)
OWN_OUTPUTS = (STATE_DIR, "config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
               "tokenizer_config.json", "catalog.jsonl", "prunerec.json", "training.json", "training.png")


def subsample(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """A seeded random subset of `limit` rows (all rows when limit is None or larger)."""
    if not limit or limit >= len(samples):
        return samples
    return random.Random(seed).sample(samples, limit)


def most_recent(samples: list[Sample], per_user: int) -> list[Sample]:
    """Each user's `per_user` last rows (rows of a user are stored oldest first), in file order."""
    if not per_user:
        return samples
    seen: dict[int, int] = {}
    kept = []
    for sample in reversed(samples):
        if seen.get(sample.user, 0) < per_user:
            seen[sample.user] = seen.get(sample.user, 0) + 1
            kept.append(sample)
    return kept[::-1]


def period_rows(rows: list[Sample], held_out_users: set[int]) -> list[Sample]:
    """One row per item of each row's `targets` (its `target` where it has none), each with the items
    before it appended to the history; users in `held_out_users` left out."""
    expanded = []
    for row in rows:
        if row.user in held_out_users:
            continue
        items = row.targets or (row.target,)
        expanded += [Sample(row.user, row.history + tuple(items[:i]), item) for i, item in enumerate(items)]
    return expanded


def training_rows(data: Dataset, valid_rows: list[Sample], tuning: FineTuneOptions, train_limit: int | None,
                  seed: int) -> list[Sample]:
    """The rows a run trains on: the train split (with --valid-period, then the validation period but for the
    users of `valid_rows`), each user's most recent ones, then a seeded sample."""
    rows = data["train"]
    if tuning.valid_period:
        later = period_rows(data["valid"], {row.user for row in valid_rows})
        rows = sorted(rows + later, key=lambda row: row.user)  # stable: a user's train rows, then the later ones
    return subsample(most_recent(rows, tuning.recent_per_user), train_limit, seed)


def prepare_trainable(model, tuning: FineTuneOptions) -> dict:
    """Set what trains (LoRA adapters, the top layers, or everything); what was set, for the report."""
    layers = top_layers(model, tuning.train_layers)
    if tuning.lora:
        trainable = add_lora(model, tuning.lora, tuning.alpha, layers)
    elif tuning.train_layers:
        trainable = freeze_below(model, layers)
    else:
        trainable = trainable_parameters(model)
    return {"lora_rank": tuning.lora, "lora_alpha": tuning.alpha if tuning.lora else None,
            "trained_layers": [layers.start, layers.stop], "trainable_parameters": trainable}


def tokenizer_corpus(catalog: Catalog, samples: list[Sample], settings: PromptSettings, n_prompts: int = 2000):
    """Responses of every title (twice, so single-use merges survive) and a sample of prompts."""
    responses = [format_response(t) for t in catalog.titles]
    prompts = [format_prompt(history_titles(s, catalog), settings) for s in subsample(samples, n_prompts, 0)]
    return responses + responses + prompts


def scratch_model(preset: Preset, data: Dataset, settings: PromptSettings, seed: int, tokenizer_dir: Path):
    if (tokenizer_dir / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        tokenizer = train_tokenizer(tokenizer_corpus(data.catalog, data["train"], settings), preset.vocab_size)
        if distributed.is_main():
            with io.atomic_dir(tokenizer_dir) as tmp:
                tokenizer.save_pretrained(tmp)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(preset.config(len(tokenizer), tokenizer.eos_token_id))
    return model, tokenizer


def base_recommender(model_ref: str, data: Dataset, settings: PromptSettings, seed: int, state_dir: Path) -> RecModel:
    if model_ref in PRESETS:
        preset = PRESETS[model_ref]
        model, tokenizer = scratch_model(preset, data, settings, seed, state_dir / "tokenizer")
        info = {"base": f"scratch preset '{preset.name}'", "preset": asdict(preset)}
        return RecModel(model, tokenizer, data.catalog, settings, info)
    loaded = load_rec_model(model_ref)
    return replace(loaded, catalog=data.catalog, settings=settings, info={"base": model_ref})


def plot_training(log: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in log], [r["valid_loss"] for r in log], marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (response tokens)")
    ax.set_title("SFT validation loss")
    ax.grid(alpha=0.3)
    save_png(fig, path, dpi=120)


def model_fingerprint(model_ref: str) -> str:
    """What a base model is, by content: a preset's shape, a local folder's files, else the hub id."""
    if model_ref in PRESETS:
        return f"preset {model_ref}: " + json.dumps(asdict(PRESETS[model_ref]), sort_keys=True)
    path = Path(model_ref).expanduser()
    return "sha256 " + io.fingerprint(path) if path.is_dir() else f"hub id {model_ref}"


def run_identity(data_dir, model_ref: str, settings: PromptSettings, config: TrainConfig, train_limit,
                 valid_limit, tuning: FineTuneOptions = FULL_FINE_TUNING) -> dict:
    """Everything that shapes a training run's result, by CLI option (a resume must match it)."""
    ending = ("time_budget_s", "decay_to_budget")  # may change on resume: they only decide the end
    options = {**{f"--{k.replace('_', '-')}": v for k, v in asdict(config).items() if k not in ending},
               "--template": settings.template, "--category": settings.category,
               "--max-history": settings.max_history, "--cutoff": settings.cutoff_tokens,
               "--train-limit": train_limit, "--valid-limit": valid_limit, **tuning.identity()}
    options["--warmup"] = options.pop("--warmup-steps")
    return {"--data": "sha256 " + io.fingerprint(data_dir, DATA_FILES), "--model": model_fingerprint(model_ref),
            **options}


def check_identity(state_dir: Path, identity: dict, out_dir: Path) -> None:
    saved_path = state_dir / RUN_FILE
    if not saved_path.is_file():
        return
    saved = {**IDENTITY_ADDED, **json.loads(saved_path.read_text())}
    changed = [k for k in identity if saved.get(k) != identity[k]]
    if changed:
        words = [f"{k} (its content changed)" if k in ("--data", "--model") else k for k in changed]
        raise PrunerecError(f"{out_dir} holds a training run with different {', '.join(words)}; rerun with the "
                            "same options to resume it, or with --overwrite to start again")


def prepare_output(out_dir: Path, data_dir, model_ref: str, identity: dict, resume: bool, overwrite: bool) -> None:
    """Rank 0: refuse an output over the inputs or over an earlier run not asked for; clean up."""
    io.refuse_output_over_inputs(out_dir, "--out", data=data_dir, model=model_ref)
    if io.check_fresh_output(out_dir, OWN_OUTPUTS, resume, overwrite, "a training run"):
        io.remove_own(out_dir, OWN_OUTPUTS)
    io.sweep_temps(out_dir)
    state_dir = out_dir / STATE_DIR
    if resume:
        check_identity(state_dir, identity, out_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    io.write_json(state_dir / RUN_FILE, identity)


def _check_rows(data_dir, name: str, rows: list) -> None:
    if not rows:
        need = "examples to learn from" if name == "train" else "validation rows (they choose the best model)"
        raise PrunerecError(f"{Path(data_dir) / f'{name}.jsonl'} has no rows: training needs {need}")


def train_recommender(data_dir: str | Path, model_ref: str, out_dir: str | Path, *, settings: PromptSettings,
                      config: TrainConfig, train_limit: int | None = None, valid_limit: int | None = 1000,
                      resume: bool = False, overwrite: bool = False,
                      tuning: FineTuneOptions = FULL_FINE_TUNING) -> dict:
    out_dir = Path(out_dir)
    state_dir = out_dir / STATE_DIR
    distributed.init()
    main = distributed.is_main()
    with distributed.rank0_first():  # rank 0 checks OUT and trains the tokenizer, the others load it
        data = load_dataset(data_dir, splits=("train", "valid"))
        for split in ("train", "valid"):
            _check_rows(data_dir, split, data[split])
        if main:
            identity = run_identity(data_dir, model_ref, settings, config, train_limit, valid_limit, tuning)
            prepare_output(out_dir, data_dir, model_ref, identity, resume, overwrite)
        rec = base_recommender(model_ref, data, settings, config.seed, state_dir)
        # a title the tokenizer cannot write back could never be recommended: refuse before training
        check_catalog_titles(rec.tokenizer, data.catalog.titles, Path(data_dir) / "items.jsonl",
                             rec.model.config.vocab_size)
    valid_rows = subsample(data["valid"], valid_limit, config.seed)
    train_rows = training_rows(data, valid_rows, tuning, train_limit, config.seed)
    train_examples = build_examples(rec.tokenizer, train_rows, data.catalog, settings)
    valid_examples = build_examples(rec.tokenizer, valid_rows, data.catalog, settings)
    trained = prepare_trainable(rec.model, tuning)
    trainer = Trainer(rec.model, train_examples, valid_examples, config, state_dir, response_ce,
                      pad_id=rec.tokenizer.pad_token_id, desc="sft")
    started = time.perf_counter()
    try:
        state = trainer.run(resume=resume)
    except ValueError as err:  # e.g. a state written with other settings
        raise PrunerecError(str(err)) from None
    rec.model.load_state_dict(trainer.best_weights(), strict=False)
    merge_lora(rec.model)
    summary = {
        "data": str(data_dir), "train_rows": len(train_rows), "valid_rows": len(valid_rows),
        "train_tokens_per_epoch": sum(len(e.input_ids) for e in train_examples),
        "steps": state.step, "best_step": state.best_step, "best_valid_loss": state.best_loss,
        "stop_reason": state.stop_reason, "train_seconds": round(state.elapsed_s, 1),
        "wall_seconds_this_run": round(time.perf_counter() - started, 1),
        "parameters": sum(p.numel() for p in rec.model.parameters()), **trained,
        "config": asdict(config), "log": state.log,
    }
    if distributed.world_size() > 1:
        summary["world_size"] = distributed.world_size()
    rec = replace(rec, info={**rec.info, "training": {k: v for k, v in summary.items() if k != "log"}})
    if main:
        staging = io.make_temp_dir(out_dir / "staging")
        rec.save(staging)
        io.write_json(staging / "training.json", summary)
        if state.log:
            plot_training(state.log, staging / "training.png")
        io.publish_dir(staging, out_dir)
    distributed.barrier()
    return summary
