"""BIGRec supervised fine-tuning: the model learns to write the next item's title.

Loss on response tokens only, prompts cut from the left, validation loss during training,
early stopping, best weights kept, resumable. The result is a stock HF checkpoint folder
plus the catalog it was trained for (see model/checkpoint.py).

Under torchrun every rank runs this function: rank 0 prepares the state folder and the
tokenizer first, all ranks train (data parallel, see rec/trainer.py), rank 0 writes the result.
"""
from __future__ import annotations

import random
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2ForCausalLM

from prunerec import distributed
from prunerec.data.catalog import Catalog, Dataset, Sample, load_dataset
from prunerec.io import publish_dir, write_json
from prunerec.model.checkpoint import RecModel, load_rec_model
from prunerec.model.presets import PRESETS, Preset
from prunerec.model.tokenizer import train_tokenizer
from prunerec.plots import pyplot, save_png
from prunerec.rec.batching import response_ce
from prunerec.rec.encode import build_examples, history_titles
from prunerec.rec.prompt import PromptSettings, format_prompt, format_response
from prunerec.rec.trainer import TrainConfig, Trainer

STATE_DIR = ".train-state"


def subsample(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """A seeded random subset of `limit` rows (all rows when limit is None or larger)."""
    if not limit or limit >= len(samples):
        return samples
    return random.Random(seed).sample(samples, limit)


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
        tokenizer.save_pretrained(tokenizer_dir)
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


def train_recommender(data_dir: str | Path, model_ref: str, out_dir: str | Path, *, settings: PromptSettings,
                      config: TrainConfig, train_limit: int | None = None, valid_limit: int | None = 1000,
                      resume: bool = False) -> dict:
    out_dir = Path(out_dir)
    state_dir = out_dir / STATE_DIR
    distributed.init()
    main = distributed.is_main()
    with distributed.rank0_first():  # rank 0 clears the state and trains the tokenizer, the others load it
        if main and not resume and state_dir.exists():
            shutil.rmtree(state_dir)
        if main:
            state_dir.mkdir(parents=True, exist_ok=True)
        data = load_dataset(data_dir, splits=("train", "valid"))
        rec = base_recommender(model_ref, data, settings, config.seed, state_dir)
    train_rows = subsample(data["train"], train_limit, config.seed)
    valid_rows = subsample(data["valid"], valid_limit, config.seed)
    train_examples = build_examples(rec.tokenizer, train_rows, data.catalog, settings)
    valid_examples = build_examples(rec.tokenizer, valid_rows, data.catalog, settings)
    trainer = Trainer(rec.model, train_examples, valid_examples, config, state_dir, response_ce,
                      pad_id=rec.tokenizer.pad_token_id, desc="sft")
    started = time.perf_counter()
    state = trainer.run(resume=resume)
    rec.model.load_state_dict(trainer.best_weights(), strict=False)
    summary = {
        "data": str(data_dir), "train_rows": len(train_rows), "valid_rows": len(valid_rows),
        "train_tokens_per_epoch": sum(len(e.input_ids) for e in train_examples),
        "steps": state.step, "best_step": state.best_step, "best_valid_loss": state.best_loss,
        "stop_reason": state.stop_reason, "train_seconds": round(state.elapsed_s, 1),
        "wall_seconds_this_run": round(time.perf_counter() - started, 1),
        "parameters": sum(p.numel() for p in rec.model.parameters()),
        "config": asdict(config), "log": state.log,
    }
    if distributed.world_size() > 1:
        summary["world_size"] = distributed.world_size()
    rec = replace(rec, info={**rec.info, "training": {k: v for k, v in summary.items() if k != "log"}})
    if main:
        staging = out_dir / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        rec.save(staging)
        write_json(staging / "training.json", summary)
        if state.log:
            plot_training(state.log, staging / "training.png")
        publish_dir(staging, out_dir)
    distributed.barrier()
    return summary
