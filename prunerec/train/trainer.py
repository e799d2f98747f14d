"""A small resumable training recipe: AdamW, warmup + linear decay, periodic validation,
early stopping on validation loss, best weights kept; used by SFT and by distillation.

The run lasts `epochs` epochs, or exactly `max_steps` steps when that is set (it then overrides
the epochs, as in Hugging Face's Trainer, running past the last epoch if it must); the learning
rate decays linearly to zero at the run's last step. With
`decay_to_budget` it also reaches zero when the time budget ends (whichever comes first), and
the run validates and stops there: a run stopped by a budget of hours would otherwise end at its
peak rate, where the weights are noisiest. Resuming with a larger budget lowers the rate to where
the new budget puts it.

State lives in `state_dir` as one checkpoint folder (weights, best weights, optimizer,
scheduler, position in the epoch, RNG, log; see train/checkpoints.py) written as one unit, so a
run killed at any moment (inside a save too) resumes from its last checkpoint and ends where an
unbroken run would.

Device: the model trains on `prunerec.distributed.device()` (a GPU when there is one, else the
CPU; `PRUNEREC_DEVICE` overrides) and is moved back to where it came from when `run` returns.

Data parallel: under `torchrun --nproc_per_node N` (WORLD_SIZE > 1) the model is wrapped in
DistributedDataParallel and every global batch of `batch_size` examples is split over the N
ranks. A loss function returns the mean over its batch's `targets` tokens; each rank's mean is
weighted by its share of the global batch's tokens, so the averaged gradient, and so every
step, equals a single process's with the same batch size (up to float rounding). Rank 0
alone validates, writes the state and shows the progress bar; it sends its state (best loss,
stop decision) to the others after each validation, so all ranks stop together. Resume reads
the same files on every rank.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prunerec import distributed
from prunerec.errors import PrunerecError
from prunerec.model import dtypes
from prunerec.model.batching import collate, length_batches
from prunerec.model.encode import Example
from prunerec.train import checkpoints

LossFn = Callable[[torch.nn.Module, dict], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    patience: int = 1
    eval_every: int = 0  # steps between validations; 0 = once per epoch
    checkpoint_every: int = 200
    max_steps: int = 0  # 0 = the epochs decide; else exactly this many steps
    time_budget_s: float = 0.0  # 0 = no limit; stops at the next validation after the budget
    decay_to_budget: bool = False  # the learning rate reaches zero when the time budget ends
    seed: int = 0
    precision: str = "fp32"  # "bf16": each forward (the loss) under bf16 autocast, see model/dtypes.py


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_loss: float = math.inf
    best_step: int = -1
    bad_evals: int = 0
    elapsed_s: float = 0.0
    finished: bool = False
    stop_reason: str = ""
    log: list = field(default_factory=list)


def lr_factor(step: int, warmup: int, total: int, elapsed_s: float = 0.0, budget_s: float = 0.0) -> float:
    if step < warmup:
        return (step + 1) / warmup
    by_steps = 1.0 if total <= warmup else (total - step) / (total - warmup)
    by_time = (budget_s - elapsed_s) / budget_s if budget_s else 1.0
    return max(0.0, min(by_steps, by_time))


def fused_adamw(device: torch.device, params) -> bool | None:
    """AdamW's fused kernel where torch has one: on CPU the default is a loop of a dozen
    elementwise passes over every tensor, an update many times slower (5-9% of a compressed
    SmolLM2's distillation step: bench/teacher_cache_speed.py); the same update to float rounding."""
    floats = all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
    return True if floats and device.type in ("cpu", "cuda") else None


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def n_targets(example: Example) -> int:
    """Tokens of `example` that `collate` turns into targets (response tokens after position 0)."""
    length = len(example.input_ids)
    return length - max(length - example.n_response, 1)


class _WithLoss(torch.nn.Module):
    """model + loss function as one module, so that DDP's forward (and its gradient hooks)
    wraps whatever the loss function calls (e.g. `model.model` and `model.lm_head`)."""

    def __init__(self, model, loss_fn: LossFn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: dict) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


@torch.no_grad()
def validation_loss(model, examples: Sequence[Example], loss_fn: LossFn, pad_id: int, batch_size: int,
                    precision: str = "fp32") -> float:
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for batch_ids in length_batches([len(e.input_ids) for e in examples], batch_size, seed=0):
        batch = to_device(collate([examples[i] for i in batch_ids], pad_id), device)
        n = len(batch["targets"])
        with dtypes.autocast(precision, device):
            loss = loss_fn(model, batch)
        total += loss.item() * n
        count += n
    model.train()
    return total / max(count, 1)


class Trainer:
    def __init__(self, model, train: Sequence[Example], valid: Sequence[Example], config: TrainConfig,
                 state_dir: str | Path, loss_fn: LossFn, pad_id: int, desc: str = "train",
                 device: str | torch.device | None = None):
        if not train or not valid:
            raise ValueError(f"no {'training' if not train else 'validation'} examples")
        self.model, self.train, self.valid, self.config = model, train, valid, config
        self.state_dir, self.loss_fn, self.pad_id, self.desc = Path(state_dir), loss_fn, pad_id, desc
        distributed.init()
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.home = next(model.parameters()).device
        self.device = torch.device(device) if device is not None else distributed.device()
        model.to(self.device)
        self.lengths = [len(e.input_ids) for e in train]
        self.steps_per_epoch = math.ceil(len(train) / config.batch_size)
        self.total_steps = config.max_steps or self.steps_per_epoch * config.epochs
        self.state = TrainState()  # before the scheduler: the learning rate reads its clock
        trained = [p for p in model.parameters() if p.requires_grad]  # all but what LoRA or frozen layers keep
        decay = [p for p in trained if p.ndim >= 2]
        no_decay = [p for p in trained if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=(0.9, 0.95), fused=fused_adamw(self.device, trained))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, config.warmup_steps, self.total_steps,
                                                   self.state.elapsed_s, self._decay_budget_s()))
        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            # the constructor also copies rank 0's weights (and buffers) to every rank
            self.ddp = DistributedDataParallel(_WithLoss(model, loss_fn), device_ids=ids, forward_sync_buffers=False)

    # --- state on disk (one checkpoint folder, see train/checkpoints.py) -------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        # tied embeddings share storage: save_file refuses shared tensors, clone() separates them
        return {k: v.detach().contiguous().clone() for k, v in self.model.state_dict().items()}

    def save_state(self) -> None:
        if not self.is_main:
            return
        s = self.state
        trainer_state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                         "rng": torch.get_rng_state()}
        checkpoints.write(self.state_dir, self._weights(), trainer_state,
                          {"config": asdict(self.config), **asdict(s)},
                          best_is_current=s.best_step == s.step and s.best_step >= 0)

    def load_state(self) -> bool:
        folder = checkpoints.latest(self.state_dir)
        if folder is None:
            if (self.state_dir / "state.json").is_file():
                raise PrunerecError(f"{self.state_dir} holds a training state in an older layout, which cannot be "
                                    "resumed; rerun with --overwrite to start again")
            return False
        weights, blob, saved = checkpoints.read(folder)
        # the time budget and how the rate meets it only decide how the run ends, so a resumed run
        # may change them; settings added since the state was written take their defaults
        ending = ("time_budget_s", "decay_to_budget")
        now = {k: v for k, v in asdict(self.config).items() if k not in ending}
        written = {**asdict(TrainConfig()), **saved.pop("config")}
        changed = [k for k in now if written.get(k) != now[k]]
        if changed:
            raise ValueError(f"{self.state_dir} was written with different training settings "
                             f"({', '.join(changed)}); rerun with the same options or with --overwrite")
        self.state = TrainState(**saved)
        self.model.load_state_dict(weights, strict=False)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["rng"])
        return True

    def best_weights(self) -> dict[str, torch.Tensor]:
        best = checkpoints.best_weights(self.state_dir)
        return best if best is not None else self._weights()

    # --- the loop ------------------------------------------------------------------------
    def _evaluate(self) -> None:
        s = self.state
        loss = validation_loss(self.model, self.valid, self.loss_fn, self.pad_id, self.config.batch_size,
                               self.config.precision)
        s.log.append({"step": s.step, "epoch": s.epoch, "valid_loss": loss, "elapsed_s": round(s.elapsed_s, 1)})
        if loss < s.best_loss:
            s.best_loss, s.best_step, s.bad_evals = loss, s.step, 0  # saved by the save_state that follows
        else:
            s.bad_evals += 1
            if s.bad_evals > self.config.patience:
                s.finished, s.stop_reason = True, f"early stop: no improvement in {s.bad_evals} validations"
        if self.config.time_budget_s and s.elapsed_s >= self.config.time_budget_s and not s.finished:
            s.finished, s.stop_reason = True, f"time budget of {self.config.time_budget_s:.0f}s reached"

    def _budget_extended(self) -> bool:
        """A run stopped by its time budget, resumed with a larger one, goes on."""
        s, budget = self.state, self.config.time_budget_s
        return s.stop_reason.startswith("time budget") and (not budget or s.elapsed_s < budget)

    def _sync_state(self) -> None:
        """Every rank takes rank 0's state (its validation decides best step and stopping)."""
        if self.world > 1:
            self.state = TrainState(**distributed.broadcast_object(asdict(self.state)))

    def _decay_budget_s(self) -> float:
        return self.config.time_budget_s if self.config.decay_to_budget else 0.0

    def _due_for_eval(self, end_of_epoch: bool) -> bool:
        every, budget = self.config.eval_every, self._decay_budget_s()
        if budget and self.state.elapsed_s >= budget:
            return True  # the learning rate is now zero: validate, keep the best, stop
        return end_of_epoch if not every else (self.state.step % every == 0 or end_of_epoch)

    def run(self, resume: bool = False) -> TrainState:
        """Train (or resume) to the end; the model ends on the device it came from."""
        if self.is_main:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        torch.manual_seed(self.config.seed)
        if resume and self.load_state() and self._budget_extended():
            self.state.finished, self.state.stop_reason = False, ""
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.state.step, desc=self.desc, unit="step", dynamic_ncols=True,
                   disable=not self.is_main)
        try:
            return self._loop(bar)
        finally:
            bar.close()
            self.model.to(self.home)

    def _loop(self, bar) -> TrainState:
        s = self.state
        while not s.finished and (self.config.max_steps or s.epoch < self.config.epochs):
            batches = length_batches(self.lengths, self.config.batch_size, seed=self.config.seed * 1000 + s.epoch)
            while s.batch_in_epoch < len(batches) and not s.finished:
                started = time.perf_counter()
                loss = self._train_step(batches[s.batch_in_epoch])
                s.batch_in_epoch += 1
                s.step += 1
                s.elapsed_s += time.perf_counter() - started
                end_of_epoch = s.batch_in_epoch == len(batches)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", best=f"{s.best_loss:.3f}")
                if self.config.max_steps and s.step >= self.config.max_steps:
                    s.finished, s.stop_reason = True, f"max_steps {self.config.max_steps} reached"
                if self._due_for_eval(end_of_epoch) or s.finished:
                    if self.is_main:
                        started = time.perf_counter()
                        self._evaluate()
                        s.elapsed_s += time.perf_counter() - started  # the time budget is wall time
                    self._sync_state()
                    s = self.state
                    self.save_state()
                elif s.step % self.config.checkpoint_every == 0:
                    self.save_state()
            if s.batch_in_epoch == len(batches):
                s.epoch, s.batch_in_epoch = s.epoch + 1, 0
        if not s.stop_reason:
            s.stop_reason = f"{self.config.epochs} epochs done"
        s.finished = True
        self.save_state()
        distributed.barrier()  # the files are complete before any rank reads them
        return s

    def _train_step(self, indices: list[int]) -> float:
        """One optimizer step on the global batch `indices`; returns its mean loss. Under DDP this
        rank computes its share and DDP averages the gradients over the ranks."""
        if self.ddp is None:
            with dtypes.autocast(self.config.precision, self.device):
                loss = self.loss_fn(self.model, self._batch(indices))
            self._optimize(loss)
            return loss.item()
        mine = indices[self.rank::self.world]
        total = sum(n_targets(self.train[i]) for i in indices)
        share = sum(n_targets(self.train[i]) for i in mine) / max(total, 1)
        if not mine:  # fewer examples than ranks: take part in the gradient exchange with weight 0
            mine = indices[:1]
        with dtypes.autocast(self.config.precision, self.device):
            local = self.ddp(self._batch(mine))
        self._optimize(local * (share * self.world))
        return distributed.all_reduce_sum(local.item() * share)  # the global batch's mean loss

    def _batch(self, indices: list[int]) -> dict:
        return to_device(collate([self.train[i] for i in indices], self.pad_id), self.device)

    def _optimize(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
