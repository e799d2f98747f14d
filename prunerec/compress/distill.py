"""Knowledge distillation of a pruned student from the original (unpruned) teacher.

loss = lambda * CE(student, ground truth) + (1 - lambda) * tau^2 * KL(teacher_tau || student_tau)

on the response tokens only, with the next-token shift (``batching.response_logits`` picks the
positions whose next token is a response token, for teacher and student alike; padding never
enters). With ``hidden_weight`` > 0 the loss adds that weight times a hidden-state term
(:func:`hidden_loss`): the student's residual stream after each of its layers but the last, against
the teacher's after the layer it descends from, on the hidden dimensions the student kept.

Training is :class:`prunerec.train.trainer.Trainer` (AdamW, warmup, early stopping on the
validation distillation loss, best weights kept, resumable), with a loss closure; so it runs
on the GPU when there is one and data parallel under torchrun like SFT. The teacher joins the
student on the training device for the distillation and goes back where it was afterwards.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from prunerec import distributed
from prunerec.compress.teacher_cache import TeacherCache, teacher_logits
from prunerec.errors import PrunerecError
from prunerec.io import write_json
from prunerec.model.batching import response_logits
from prunerec.model.encode import Example
from prunerec.train.trainer import TrainConfig, Trainer, validation_loss

__all__ = ["DistillSettings", "Lineage", "kd_loss", "hidden_loss", "make_loss_fn", "distill"]


@dataclass(frozen=True)
class DistillSettings:
    lam: float = 0.2  # weight of the ground-truth cross-entropy
    tau: float = 1.0  # softmax temperature of the KL term
    hidden_weight: float = 0.0  # weight of the hidden-state term (0: logits only, the paper's loss)

    def __post_init__(self):
        if not 0.0 <= self.lam <= 1.0:
            raise PrunerecError(f"--lambda must lie in [0, 1], got {self.lam}")
        if not self.tau > 0:
            raise PrunerecError(f"--tau must be > 0, got {self.tau}")
        if not self.hidden_weight >= 0:
            raise PrunerecError(f"--hidden-distill must be >= 0, got {self.hidden_weight}")


@dataclass(frozen=True)
class Lineage:
    """Where a pruned student's residual stream comes from in the teacher's.

    ``layers[i]``: the teacher layer that student layer i descends from; ``hidden``: the teacher's
    hidden dimensions the student kept, in the student's order (None: all of them).
    """
    layers: tuple[int, ...]
    hidden: tuple[int, ...] | None = None

    @classmethod
    def of(cls, kept_by_stage: Sequence[dict], teacher_layers: int) -> Lineage:
        """From the stages' ``kept`` records so far (stage I's hidden dims, stage III's layers)."""
        layers, hidden = tuple(range(teacher_layers)), None
        for kept in kept_by_stage:
            hidden = tuple(kept["hidden"]) if "hidden" in kept else hidden
            layers = tuple(kept["layers"]) if "layers" in kept else layers
        return cls(layers, hidden)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            lam: float = 0.2, tau: float = 1.0) -> torch.Tensor:
    """lambda * CE + (1 - lambda) * tau^2 * KL(teacher || student), each a mean over tokens [N,V]."""
    s = student_logits.float()
    loss = lam * F.cross_entropy(s, targets) if lam > 0 else s.new_zeros(())
    if lam < 1:
        t_logp = F.log_softmax(teacher_logits.float() / tau, dim=-1)
        s_logp = F.log_softmax(s / tau, dim=-1)
        kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean")
        loss = loss + (1 - lam) * tau * tau * kl
    return loss


def hidden_loss(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                lineage: Lineage, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the student's layers but the last of ||s - t||^2 / ||t||^2 on unpadded positions.

    ``*_states`` are Hugging Face ``hidden_states``: the embeddings, then each layer's output (the
    last one after the final norm, which is why the student's last layer is left to the logits).
    ``t`` is the teacher's output of the layer student layer i descends from, on the kept dimensions.
    """
    weights = mask.unsqueeze(-1).float()
    terms = []
    for i in range(len(student_states) - 2):
        student = student_states[i + 1].float()
        teacher = teacher_states[lineage.layers[i] + 1].float()
        if lineage.hidden is not None:
            teacher = teacher[..., list(lineage.hidden)]
        error = ((student - teacher) ** 2 * weights).sum()
        terms.append(error / ((teacher ** 2) * weights).sum().clamp_min(1e-12))
    return torch.stack(terms).mean() if terms else weights.new_zeros(())


def _on(model, batch: dict) -> dict:
    dev = next(model.parameters()).device
    return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _states_and_logits(model, batch: dict) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    out = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    picked = out.last_hidden_state[batch["predict_rows"], batch["predict_cols"]]
    return out.hidden_states, model.lm_head(picked)


def make_loss_fn(teacher, settings: DistillSettings, lineage: Lineage | None = None,
                 cache: TeacherCache | None = None):
    """A ``loss_fn(student, batch)`` for the Trainer; the teacher runs frozen, without gradients.

    ``lineage`` is needed when ``settings.hidden_weight`` > 0; ``cache`` (logits-only loss) keeps
    the teacher's hidden states for the next time an example comes round.
    """
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if settings.hidden_weight > 0 and lineage is None:
        raise ValueError("hidden-state distillation needs the student's lineage")
    if settings.hidden_weight > 0 and cache is not None:
        raise ValueError("the teacher cache keeps final hidden states only; the hidden-state term needs all")

    def logits_only(student, batch: dict) -> torch.Tensor:
        b = _on(student, batch)
        with torch.no_grad():
            on_teacher = _on(teacher, b)
            t_logits = response_logits(teacher, on_teacher) if cache is None else teacher_logits(
                teacher, on_teacher, cache)
        s_logits = response_logits(student, b)
        return kd_loss(s_logits, t_logits.to(s_logits.device), b["targets"], settings.lam, settings.tau)

    def with_hidden(student, batch: dict) -> torch.Tensor:
        b = _on(student, batch)
        with torch.no_grad():
            t_states, t_logits = _states_and_logits(teacher, _on(teacher, b))
        s_states, s_logits = _states_and_logits(student, b)
        t_states = [t.to(s_logits.device) for t in t_states]
        loss = kd_loss(s_logits, t_logits.to(s_logits.device), b["targets"], settings.lam, settings.tau)
        return loss + settings.hidden_weight * hidden_loss(s_states, t_states, lineage, b["attention_mask"])

    return with_hidden if settings.hidden_weight > 0 else logits_only


def distill(student, teacher, train: Sequence[Example], valid: Sequence[Example], config: TrainConfig,
            state_dir: str | Path, pad_id: int, settings: DistillSettings = DistillSettings(),
            resume: bool = False, desc: str = "distill", lineage: Lineage | None = None,
            cache: TeacherCache | None = None) -> dict:
    """Distil in place: the student ends with its best weights (lowest validation loss).

    Returns a summary with the validation loss curve (``log``), best step and loss, steps,
    stop reason and training seconds (accumulated over resumed runs).
    """
    loss_fn = make_loss_fn(teacher, settings, lineage, cache)
    hits_before, misses_before = (cache.hits, cache.misses) if cache is not None else (0, 0)
    trainer = Trainer(student, train, valid, config, state_dir, loss_fn, pad_id, desc=desc)
    teacher_home = next(teacher.parameters()).device
    teacher.to(trainer.device)
    started = time.perf_counter()
    initial_file = Path(state_dir) / "initial_loss.json"
    try:
        initial = None
        if distributed.is_main():
            if initial_file.is_file():
                initial = json.loads(initial_file.read_text())["valid_loss"]
            else:  # the damage pruning did, before any training: step 0 of the loss curve
                initial = validation_loss(student, valid, loss_fn, pad_id, config.batch_size)
                write_json(initial_file, {"valid_loss": initial})
        initial = distributed.broadcast_object(initial)
        state = trainer.run(resume=resume)
    except ValueError as err:  # e.g. resumed with different settings
        raise PrunerecError(str(err)) from None
    finally:
        teacher.to(teacher_home)
        student.to(trainer.home)
    student.load_state_dict(trainer.best_weights(), strict=False)
    student.eval()
    return {
        "settings": asdict(settings),
        "config": asdict(config),
        "train_examples": len(train),
        "valid_examples": len(valid),
        "steps": state.step,
        "epochs_done": state.epoch,
        "best_step": state.best_step,
        "best_valid_loss": state.best_loss,
        "stop_reason": state.stop_reason,
        "teacher_cache": None if cache is None else {"folder": str(cache.folder), "hits": cache.hits - hits_before,
                                                      "misses": cache.misses - misses_before},
        "initial_valid_loss": initial,
        "train_seconds": round(state.elapsed_s, 2),
        "wall_seconds_this_run": round(time.perf_counter() - started, 2),
        "log": [{"step": 0, "epoch": 0, "valid_loss": initial, "elapsed_s": 0.0}] + list(state.log),
    }
