import json
import random

import pytest
import torch

from prunerec.errors import PrunerecError
from prunerec.model.batching import collate, response_ce
from prunerec.model.encode import Example
from prunerec.train import checkpoints
from prunerec.train.trainer import TrainConfig, Trainer, lr_factor
from tests.helpers import tiny_model


def _examples(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(3, 40) for _ in range(rng.randrange(3, 9))]
        response = [prompt[-1] + 1, prompt[-1] + 2, 0]  # learnable: continue the count, then EOS
        out.append(Example(prompt + response, len(response)))
    return out


def _trainer(state_dir, **config):
    model = tiny_model(64, 0, seed=1).train()
    settings = dict(epochs=3, batch_size=8, lr=3e-3, warmup_steps=2, checkpoint_every=3, seed=5, patience=5)
    settings.update(config)
    return model, Trainer(model, _examples(48, 0), _examples(16, 1), TrainConfig(**settings), state_dir,
                          response_ce, pad_id=0)


def interrupt_at_step(monkeypatch, trainer: Trainer, step: int) -> None:
    """Run `trainer` until Ctrl-C arrives at its `step`-th step (counted in this run)."""
    original_step, calls = Trainer._train_step, {"n": 0}

    def dying_step(self, indices):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return original_step(self, indices)

    monkeypatch.setattr(Trainer, "_train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    monkeypatch.setattr(Trainer, "_train_step", original_step)


def test_collate_shifts_targets_onto_response_tokens():
    batch = collate([Example([5, 6, 7, 8], 2), Example([9, 10, 11], 1)], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["predict_rows"].tolist() == [0, 0, 1]
    assert batch["predict_cols"].tolist() == [1, 2, 1]  # position p-1 predicts token p
    assert batch["targets"].tolist() == [7, 8, 11]


def test_training_lowers_validation_loss_and_keeps_best(tmp_path):
    model, trainer = _trainer(tmp_path)
    state = trainer.run()
    losses = [r["valid_loss"] for r in state.log]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert state.best_loss == min(losses)
    best = trainer.best_weights()
    assert set(best) == set(model.state_dict())


def test_resume_after_interruption_ends_where_an_unbroken_run_ends(tmp_path, monkeypatch):
    model, trainer = _trainer(tmp_path / "unbroken")
    trainer.run()
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    broken_model, broken = _trainer(tmp_path / "broken")
    interrupt_at_step(monkeypatch, broken, 8)
    resumed_model, resumed = _trainer(tmp_path / "broken")
    state = resumed.run(resume=True)
    assert state.step == trainer.state.step
    for name, tensor in resumed_model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_resume_refuses_changed_settings(tmp_path):
    _, trainer = _trainer(tmp_path, max_steps=2)
    trainer.run()
    _, changed = _trainer(tmp_path, max_steps=2, lr=1e-2)
    with pytest.raises(ValueError, match="different training settings"):
        changed.run(resume=True)


def test_max_steps_overrides_the_epochs_as_in_hugging_face(tmp_path):
    _, trainer = _trainer(tmp_path, epochs=1, max_steps=15, eval_every=5)  # 48 examples / 8 = 6 steps an epoch
    assert trainer.total_steps == 15
    state = trainer.run()
    assert state.step == 15 and state.stop_reason == "max_steps 15 reached"
    assert state.epoch == 2 and state.batch_in_epoch == 3  # into its third epoch
    assert trainer.scheduler.get_last_lr()[0] == 0.0  # decayed to zero at step 15, not at the epochs' end


def test_early_stopping_and_schedule():
    assert lr_factor(0, 4, 100) == 0.25 and lr_factor(3, 4, 100) == 1.0
    assert lr_factor(52, 4, 100) == pytest.approx(0.5)
    assert lr_factor(100, 4, 100) == 0.0


def test_schedule_decays_to_zero_at_the_time_budget():
    assert lr_factor(10, 4, 100, elapsed_s=30.0, budget_s=60.0) == pytest.approx(0.5)
    assert lr_factor(90, 4, 100, elapsed_s=30.0, budget_s=60.0) == pytest.approx(10 / 96)  # steps end first
    assert lr_factor(10, 4, 100, elapsed_s=75.0, budget_s=60.0) == 0.0
    assert lr_factor(1, 4, 100, elapsed_s=75.0, budget_s=60.0) == 0.5  # warmup is by steps


def test_time_budget_run_validates_and_stops_when_its_rate_reaches_zero(tmp_path, monkeypatch):
    clock = iter(range(10_000))  # every perf_counter call is one second later: one step = 1 s
    monkeypatch.setattr("prunerec.train.trainer.time.perf_counter", lambda: float(next(clock)))
    rates = []
    original_step = Trainer._train_step

    def recording_step(self, indices):
        rates.append(self.optimizer.param_groups[0]["lr"])
        return original_step(self, indices)

    monkeypatch.setattr(Trainer, "_train_step", recording_step)
    _, trainer = _trainer(tmp_path, epochs=20, eval_every=1000, time_budget_s=12.0, decay_to_budget=True)
    state = trainer.run()
    assert state.stop_reason == "time budget of 12s reached"
    # 6 steps an epoch, validation at its end (1 s), then the budget ends after step 11 (12 s): validated
    # there, without waiting for eval_every
    assert state.step == 11 and [r["step"] for r in state.log] == [6, 11]
    assert rates[:2] == pytest.approx([1.5e-3, 3e-3])  # warmup, by steps
    # the rate set after step k uses the clock after step k-1: 3e-3 * (12 - elapsed) / 12
    assert rates[2:] == pytest.approx([3e-3 * (12 - e) / 12 for e in [1, 2, 3, 4, 5, 7, 8, 9, 10]])


def test_resume_reads_state_written_before_a_setting_existed(tmp_path):
    _, trainer = _trainer(tmp_path, max_steps=2)
    trainer.run()
    folder = checkpoints.latest(tmp_path)
    written = json.loads((folder / checkpoints.STATE).read_text())
    del written["config"]["decay_to_budget"]  # as an older version wrote it
    (folder / checkpoints.STATE).write_text(json.dumps(written))
    (folder / checkpoints.MANIFEST).write_text(json.dumps(checkpoints._manifest(folder)))
    _, resumed = _trainer(tmp_path, max_steps=4)
    with pytest.raises(ValueError, match="different training settings"):
        resumed.run(resume=True)  # max_steps changed: still refused
    _, resumed = _trainer(tmp_path, max_steps=2, time_budget_s=60.0, decay_to_budget=True)
    assert resumed.load_state() and resumed.state.step == 2  # how the run ends may change


def test_checkpoint_is_one_folder_and_a_damaged_one_is_refused(tmp_path):
    _, trainer = _trainer(tmp_path, max_steps=4, eval_every=2)
    trainer.run()
    (folder,) = checkpoints.checkpoints(tmp_path)  # older checkpoints are gone once a newer one is in place
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [checkpoints.WEIGHTS, checkpoints.BEST, checkpoints.OPTIMIZER, checkpoints.STATE, checkpoints.MANIFEST])
    # the optimizer state loads with weights_only=True (no pickled code)
    assert "optimizer" in torch.load(folder / checkpoints.OPTIMIZER, weights_only=True)
    with open(folder / checkpoints.WEIGHTS, "r+b") as weights:
        weights.seek(-4, 2)
        weights.write(b"\0\0\0\1")
    _, resumed = _trainer(tmp_path, max_steps=4, eval_every=2)
    with pytest.raises(PrunerecError, match="do not match manifest.json"):
        resumed.run(resume=True)


def test_trainer_refuses_an_empty_validation_set(tmp_path):
    with pytest.raises(ValueError, match="no validation examples"):
        Trainer(tiny_model(64, 0), _examples(8, 0), [], TrainConfig(), tmp_path, response_ce, pad_id=0)


def test_state_of_an_older_layout_is_refused_not_ignored(tmp_path):
    (tmp_path / "state.json").write_text("{}")  # last.safetensors / optimizer.pt / state.json beside each other
    _, trainer = _trainer(tmp_path, max_steps=2)
    with pytest.raises(PrunerecError, match="older layout"):
        trainer.run(resume=True)


def test_a_failed_checkpoint_write_is_named_and_leaves_no_checkpoint(tmp_path, monkeypatch):
    def failing_save(obj, path):  # what torch reports when the disk fills up mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr("prunerec.train.checkpoints.torch.save", failing_save)
    _, trainer = _trainer(tmp_path, max_steps=2, eval_every=2)
    with pytest.raises(PrunerecError, match="cannot write the checkpoint .* rerun with --resume"):
        trainer.run()
    assert checkpoints.checkpoints(tmp_path) == [] and not list(tmp_path.iterdir())
