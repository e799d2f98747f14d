"""The options of one `prunerec compress` run: what to prune and how, the distillation after
each stage, and the evaluation; with the rules between them (`check`)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from prunerec.compress.distill import DistillSettings
from prunerec.compress.stages import LAYER_METHODS, MASK_MODES, METHODS, STAGES, ScoringOptions, default_layer_method
from prunerec.errors import PrunerecError
from prunerec.model.dtypes import PRECISIONS
from prunerec.options import BEAMS, check_flags, flag, flag_of
from prunerec.train.options import TRAINING_FLAGS, TrainingOptions
from prunerec.train.trainer import TrainConfig

_AMOUNT = "count (e.g. 7) or ratio of the base (e.g. 0.5)"


def parse_stage_steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected three step counts like 600,600,2400, got {text!r}") from None


def _auto_is_none(text: str) -> str | None:
    return None if text == "auto" else text


def _training(name: str, default=None):
    """A distillation flag as `prunerec train` declares it, with compress's own default."""
    return flag_of(TrainingOptions, name, getattr(TrainConfig, name, None) if default is None else default)


@dataclass(frozen=True)
class CompressOptions:
    """The single declaration of `prunerec compress`'s options (help, bounds, defaults)."""
    # what to prune and how
    method: str = flag("prunerec", "Width criterion for heads, hidden dimensions and MLP channels.",
                       choices=METHODS)
    layer_method: str | None = flag(None, "Layer criterion. auto: greedy-ppl for prunerec, random for random, "
                                          "shortgpt otherwise.", choices=("auto", *LAYER_METHODS),
                                    parse=_auto_is_none, default_text="auto")
    heads: int | float | str | None = flag(None, f"Query heads kept per layer: {_AMOUNT}. Default: 7/14 of the "
                                                 "base.", kind=str)
    kv_heads: int | float | str | None = flag(None, f"KV heads kept per layer: {_AMOUNT}. Default: same share as "
                                                    "the query heads, made to divide them.", kind=str)
    hidden: int | float | str | None = flag(None, f"Hidden size kept: {_AMOUNT}. Default: heads x head_dim (448/896 "
                                                  "for Qwen2-0.5B).", kind=str)
    mlp: int | float | str | None = flag(None, f"MLP channels kept per layer: {_AMOUNT}. Default: 896/4864 of the "
                                               "base, to a multiple of 32/64.", kind=str)
    layers: int | float | str | None = flag(None, f"Decoder layers kept: {_AMOUNT}. Default: 8/24 of the base.",
                                            kind=str)
    target_file: str | None = flag(None, "JSON/YAML file with any of heads, kv_heads, hidden, mlp, layers (flags "
                                         "override it).", cli="--config", path="file")
    calib_samples: int = flag(64, "Training prompts used for scoring.", low=1, cli_range=False)
    calib_batch_size: int = flag(16, low=1, cli_range=False)
    alpha: float = flag(0.7, "Depth recursion of head importance.")
    mask_mode: str = flag("zero_o_proj", "How a head is removed while scoring.", choices=MASK_MODES)
    stability: bool = flag(False, "Also score on each half of the calibration set and report how much the choices "
                                  "overlap (doubles scoring time).")
    # distillation
    distill: bool = flag(True, "Ablation: prune only, no distillation.", cli="--no-distill", negate=True)
    one_shot: bool = flag(False, "Ablation: all three stages, then a single distillation.")
    lam: float = flag(0.2, "Weight of the ground-truth CE in distillation.", cli="--lambda")
    tau: float = flag(1.0, "Distillation temperature.")
    hidden_distill: float = flag(0.0, "Weight of a hidden-state term added to the distillation loss: the student's "
                                      "residual stream after each layer but the last, against the teacher's after "
                                      "the layer it comes from, on the kept hidden dimensions (normalized squared "
                                      "error). 0: logits only, as in the paper.")
    teacher_cache: str | None = flag(None, "Folder where the teacher's last hidden states at response positions are "
                                           "kept (float32, hidden_size x 4 bytes per response token), so that no "
                                           "example goes through the teacher twice: not in the three stages, not on "
                                           "--resume, not in other compressions of the same base. Saves most of the "
                                           "teacher's share of distillation time on CPUs. Not with --hidden-distill.",
                                     path="dir")
    precision: str = flag("fp32", "Arithmetic of the distillation steps. bf16: matrix products under bf16 autocast "
                                  "(float32 weights, optimizer and loss; the teacher cache is always filled in "
                                  "fp32, so runs of either precision share it). For CPUs with AVX512-BF16 or AMX "
                                  "and GPUs with bf16; losses differ from fp32 by bf16 rounding.",
                          choices=PRECISIONS)
    epochs: int = _training("epochs")
    batch_size: int = _training("batch_size")
    lr: float = _training("lr")
    warmup: int = _training("warmup", TrainConfig.warmup_steps)
    weight_decay: float = _training("weight_decay")
    patience: int = _training("patience")
    eval_every: int = _training("eval_every")
    max_steps: int = _training("max_steps")
    time_budget: float = _training("time_budget", 0.0)  # minutes per distillation
    decay_to_budget: bool = _training("decay_to_budget")
    train_limit: int | None = flag_of(TrainingOptions, "train_limit")
    valid_limit: int | None = _training("valid_limit", 500)
    seed: int = _training("seed")
    stage_steps: tuple[int, ...] | None = flag(
        None, "Distillation steps after stage I, II and III, in place of --max-steps. The last stage's student is "
              "the one that ships; on 2 CPU cores 600,600,19200 --patience 200 with --lr 1e-3 --eval-every 200 "
              "--valid-limit 300 --teacher-cache DIR (60 min for a 6-layer 8M model on Amazon Games; the patience "
              "lets the last stage run to its end) kept 101% of NDCG@10 on Amazon Games and 90% on Amazon Toys; "
              "600,600,4800 --patience 3 98% and 80%.", parse=parse_stage_steps, metavar="I,II,III")
    # evaluation
    eval_users: int = flag(500, "Validation users for HR/NDCG after each stage (0: skip the evaluation).", low=0,
                           cli_range=False)
    eval_batch_size: int = flag(8, low=1, cli_range=False)
    beams: int = flag(BEAMS, "Beams of the constrained search = ranked items.", low=1, cli_range=False)

    def check(self) -> None:
        check_flags(self)
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
        config = replace(self.training().config(default_lr=self.lr, checkpoint_every=100), precision=self.precision)
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


@dataclass(frozen=True)
class AnalyzeOptions:
    """The options of `prunerec analyze` (the MLP long-tail plot)."""
    samples: int = flag(64, "Training prompts (with responses) measured.", low=1, cli_range=False)
    batch_size: int = flag(16, low=1, cli_range=False)
    pooled: bool = flag(False, "Sum |activation| per channel over all tokens first (default: shares per token, "
                               "averaged).")
    seed: int = flag(0)
