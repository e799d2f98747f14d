"""The options of one `prunerec compress` run: what to prune and how, the distillation after
each stage, and the evaluation; with the rules between them (`check`)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from prunerec.compress.distill import DistillSettings
from prunerec.compress.stages import STAGES, ScoringOptions, default_layer_method
from prunerec.errors import PrunerecError
from prunerec.options import BEAMS
from prunerec.train.options import TRAINING_FLAGS, TrainingOptions
from prunerec.train.trainer import TrainConfig


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
