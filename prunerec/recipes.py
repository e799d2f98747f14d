"""What each CLI command runs: argument checking, then one call into the library, then files."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from prunerec.errors import PrunerecError
from prunerec.io import write_json, write_text
from prunerec.model.presets import PRESETS
from prunerec.rec.prompt import PromptSettings
from prunerec.rec.trainer import TrainConfig

SCRATCH_LR, CHECKPOINT_LR = 1e-3, 3e-4


def data_category(data_dir: str | Path) -> str:
    stats = Path(data_dir) / "stats.json"
    if stats.is_file():
        try:
            return json.loads(stats.read_text()).get("category") or "catalog"
        except json.JSONDecodeError:
            pass
    return "catalog"


def _positive(name: str, value, allow_zero: bool = False):
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise PrunerecError(f"--{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def run_train(data_dir, model_ref, out, *, template=None, category=None, max_history=10, cutoff=512,
              epochs=3, batch_size=32, lr=None, warmup=20, patience=1, eval_every=0, max_steps=0,
              time_budget=0.0, train_limit=None, valid_limit=1000, seed=0, resume=False) -> dict:
    from prunerec.model.checkpoint import check_checkpoint
    from prunerec.rec.sft import train_recommender

    for name, value in [("epochs", epochs), ("batch-size", batch_size), ("max-history", max_history),
                        ("cutoff", cutoff), ("train-limit", train_limit), ("valid-limit", valid_limit)]:
        _positive(name, value)
    for name, value in [("warmup", warmup), ("patience", patience), ("eval-every", eval_every),
                        ("max-steps", max_steps), ("time-budget", time_budget)]:
        _positive(name, value, allow_zero=True)
    scratch = model_ref in PRESETS
    if not scratch:
        check_checkpoint(model_ref)
    settings = PromptSettings(template=template or ("compact" if scratch else "alpaca"),
                              category=category or data_category(data_dir), max_history=max_history,
                              cutoff_tokens=cutoff)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr or (SCRATCH_LR if scratch else CHECKPOINT_LR),
                         warmup_steps=warmup, patience=patience, eval_every=eval_every, max_steps=max_steps,
                         time_budget_s=time_budget * 60, seed=seed)
    return train_recommender(data_dir, model_ref, out, settings=settings, config=config,
                             train_limit=train_limit, valid_limit=valid_limit, resume=resume)


def run_evaluate(model_ref, data_dir, *, split="test", grounding="both", beams=20, batch_size=8, limit=None,
                 out=None, seed=0) -> tuple[dict, str]:
    from prunerec.rec.evaluate import GROUNDINGS, EvalOptions, evaluate_path, format_table

    _positive("beams", beams)
    _positive("batch-size", batch_size)
    _positive("limit", limit)
    groundings = GROUNDINGS if grounding == "both" else (grounding,)
    options = EvalOptions(split=split, groundings=groundings, num_beams=beams, batch_size=batch_size,
                          limit=limit, seed=seed)
    report = evaluate_path(model_ref, data_dir, options)
    table = format_table(report)
    if out:
        write_json(out, report)
        write_text(Path(out).with_suffix(".md"), table + "\n")
    return report, table


# --- demo -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    name: str
    marker: str  # a file whose presence means the step finished
    run: Callable[[], None]


def demo_steps(out: Path, minutes: float, eval_users: int) -> list[Step]:
    from prunerec.data.demo import write_demo

    data, model = out / "data", out / "model"

    def make_data():
        write_demo(data)

    def train():
        run_train(data, "tiny", model, epochs=20, batch_size=32, eval_every=100, patience=2,
                  time_budget=minutes, max_history=10)

    def evaluate():
        run_evaluate(model, data, split="test", grounding="both", limit=eval_users, out=out / "eval.json")

    return [Step("data", "data/stats.json", make_data),
            Step("train", "model/training.json", train),
            Step("evaluate", "eval.json", evaluate)]


def run_demo(out, *, minutes=5.0, eval_users=300, resume=False) -> str:
    out = Path(out)
    _positive("minutes", minutes)
    _positive("users", eval_users)
    log = []
    for step in demo_steps(out, minutes, eval_users):
        if resume and (out / step.marker).exists():
            log.append(f"{step.name}: already done")
            continue
        started = time.perf_counter()
        print(f"== demo step: {step.name}", flush=True)
        step.run()
        log.append(f"{step.name}: {time.perf_counter() - started:.0f}s")
    from prunerec.rec.evaluate import format_table

    table = format_table(json.loads((out / "eval.json").read_text()))
    return "\n".join(["", "demo finished (" + ", ".join(log) + ")", "", table])
