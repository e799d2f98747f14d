"""The training flags `prunerec train` and `prunerec compress` (for each distillation) share,
declared once: help, bounds and defaults here; each command may override a default."""
from __future__ import annotations

from dataclasses import dataclass

from prunerec.errors import PrunerecError
from prunerec.model.dtypes import PRECISIONS
from prunerec.model.prompt import TEMPLATES, PromptSettings
from prunerec.options import check_flags, flag
from prunerec.train.trainer import TrainConfig

TRAINING_FLAGS = ("epochs", "batch_size", "lr", "warmup", "weight_decay", "patience", "eval_every", "max_steps",
                  "time_budget", "decay_to_budget", "train_limit", "valid_limit", "seed")


@dataclass(frozen=True)
class TrainingOptions:
    epochs: int = flag(TrainConfig.epochs, "Epochs (of each distillation, when compressing); --max-steps, when "
                                           "set, overrides it.", low=1)
    batch_size: int = flag(TrainConfig.batch_size, "Examples per optimizer step.", low=1)
    lr: float | None = flag(None, "Peak learning rate.", kind=float, low=0, open_low=True,
                            default_text="3e-4 for checkpoints, 1e-3 for scratch presets")
    warmup: int = flag(TrainConfig.warmup_steps, "Warm-up steps.", low=0)
    weight_decay: float = flag(TrainConfig.weight_decay, "AdamW weight decay.", low=0)
    patience: int = flag(TrainConfig.patience, "Validations without improvement before stopping.", low=0)
    eval_every: int = flag(TrainConfig.eval_every, "Steps between validations (0: each epoch).", low=0)
    max_steps: int = flag(TrainConfig.max_steps, "Train exactly this many steps, however many epochs that takes "
                                                 "(0: --epochs decides; per distillation when compressing).", low=0)
    time_budget: float = flag(0.0, "Minutes of training (per distillation when compressing), then stop at the "
                                   "next validation (0: no limit).", low=0)
    decay_to_budget: bool = flag(TrainConfig.decay_to_budget, "Let the learning rate fall linearly to zero when "
                                 "--time-budget ends, and stop there (for runs the budget, not the epochs, will end).")
    train_limit: int | None = flag(None, "Train on a seeded random subset of this many rows.", kind=int, low=1)
    valid_limit: int | None = flag(1000, "Validation rows used for the loss.", low=1)
    seed: int = flag(TrainConfig.seed, "Seed of the data order, subsets and initialisation.")

    def check(self) -> TrainingOptions:
        check_flags(self)
        if self.decay_to_budget and not self.time_budget:
            raise PrunerecError("--decay-to-budget needs a --time-budget to decay to")
        return self

    def config(self, default_lr: float, checkpoint_every: int = 200) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr or default_lr,
                           warmup_steps=self.warmup, weight_decay=self.weight_decay, patience=self.patience,
                           eval_every=self.eval_every, checkpoint_every=checkpoint_every, max_steps=self.max_steps,
                           time_budget_s=self.time_budget * 60, decay_to_budget=self.decay_to_budget, seed=self.seed)


FINETUNE_FLAGS = ("lora", "lora_alpha", "train_layers", "recent_per_user", "valid_period", "precision")


@dataclass(frozen=True)
class FineTuneOptions:
    """What `prunerec train` trains and on which rows: the ways to trade quality for CPU time."""
    lora: int = flag(0, "Train LoRA adapters of this rank on every linear layer (q/k/v/o, gate/up/down) "
                        "instead of every weight, merged into a stock checkpoint at the end (0: full "
                        "fine-tuning).", low=0)
    lora_alpha: float | None = flag(None, "LoRA scale numerator (the update is alpha / rank * B A).", kind=float,
                                    low=0, open_low=True, default_text="2 x --lora")
    train_layers: int = flag(0, "Train only the top N decoder layers (with --lora: adapt only those); the "
                                "layers below and the embeddings stay frozen and run forward only (0: all).",
                             low=0)
    recent_per_user: int = flag(0, "Train on each user's N most recent training rows only (0: all rows); "
                                   "--train-limit then samples from those.", low=0)
    valid_period: bool = flag(False, "Also train on the validation period: each validation user's later items, "
                                     "one row per item, after that user's training rows (so --recent-per-user "
                                     "counts them as the most recent). The users whose rows measure the "
                                     "validation loss (--valid-limit) stay out of training. On a time split "
                                     "this is the period next to the test period, which test prompts already "
                                     "show as history; the popularity baseline of `evaluate` counts training "
                                     "rows only.")
    precision: str = flag("fp32", "Arithmetic of the training steps. bf16: matrix products under bf16 autocast "
                                  "(float32 master weights, optimizer and loss; the checkpoint is written as "
                                  "fp32 would be), 1.4x the steps per second of fp32 for SmolLM2 with LoRA on a "
                                  "2-core AVX512-BF16 CPU; for CPUs with AVX512-BF16 or AMX and for GPUs with "
                                  "bf16. Losses differ from fp32 by bf16 rounding.", choices=PRECISIONS)

    def check(self) -> FineTuneOptions:
        check_flags(self)
        if self.lora_alpha is not None and not self.lora:
            raise PrunerecError("--lora-alpha needs --lora RANK")
        return self

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora

    def identity(self) -> dict:
        """The options by CLI name, for a run's identity (a resume must match it)."""
        return {"--lora": self.lora, "--lora-alpha": self.alpha if self.lora else None,
                "--train-layers": self.train_layers, "--recent-per-user": self.recent_per_user,
                "--valid-period": self.valid_period, "--precision": self.precision}


PROMPT_FLAGS = ("template", "category", "max_history", "cutoff")


@dataclass(frozen=True)
class PromptOptions:
    """How `prunerec train` writes its prompts (the model keeps them: every later command reuses them)."""
    template: str | None = flag(None, "Prompt template. Default: alpaca for checkpoints, compact for scratch "
                                      "presets.", choices=tuple(TEMPLATES))
    category: str | None = flag(None, "Item category named in the prompt (default: from the data's stats.json or "
                                      "'catalog').", kind=str)
    max_history: int = flag(PromptSettings.max_history, "History items in a prompt (most recent kept).", low=0,
                            open_low=True, cli_range=False)
    cutoff: int = flag(PromptSettings.cutoff_tokens, "Tokens per example, cut from the left.", low=0, open_low=True,
                       cli_range=False)
