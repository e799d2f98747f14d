import json
from pathlib import Path

import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from prunerec.cli import main
from prunerec.data.catalog import Dataset, Sample, load_dataset
from prunerec.model.batching import collate, response_ce
from prunerec.train.lora import LoraLinear, add_lora, freeze_below, merge_lora, top_layers
from prunerec.train.options import FineTuneOptions
from prunerec.train.sft import most_recent, period_rows, subsample, training_rows
from prunerec.train.trainer import TrainConfig, Trainer
from tests.helpers import one_thread, tiny_model
from tests.train.test_trainer import _examples, interrupt_at_step


def _batch():
    return collate(_examples(8, 3), pad_id=0)


def test_fresh_adapters_change_nothing_and_train_only_themselves():
    model = tiny_model(64, 0, seed=1, num_hidden_layers=3)
    ids = torch.tensor([[5, 9, 12, 7, 3]])
    before = model(ids).logits
    trainable = add_lora(model, rank=4, alpha=8, layers=top_layers(model, 2))
    assert torch.equal(model(ids).logits, before)  # B starts at zero
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.endswith(("lora_a", "lora_b")) for n in names)
    assert not any(n.startswith("model.layers.0.") for n in names)  # only the top two layers adapted
    adapted = sum(isinstance(m, LoraLinear) for m in model.modules())
    assert adapted == 2 * 7
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in names)


def test_merged_model_is_stock_and_computes_what_the_adapted_one_did():
    model = tiny_model(64, 0, seed=1)
    stock_keys = set(model.state_dict())
    add_lora(model, rank=4, alpha=8, layers=top_layers(model, 0))
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, LoraLinear):
            torch.nn.init.normal_(m.lora_b, std=0.05)
    ids = torch.tensor([[5, 9, 12, 7, 3, 30, 31]])
    adapted = model(ids).logits
    assert merge_lora(model) == 2 * 7
    assert set(model.state_dict()) == stock_keys
    assert torch.allclose(model(ids).logits, adapted, atol=1e-5)
    assert not torch.allclose(tiny_model(64, 0, seed=1)(ids).logits, adapted, atol=1e-3)


def test_frozen_layers_get_no_gradient():
    model = tiny_model(64, 0, seed=1, num_hidden_layers=3)
    freeze_below(model, top_layers(model, 1))
    response_ce(model, _batch()).backward()
    grads = {n: p.grad is not None for n, p in model.named_parameters()}
    assert all(grads[n] for n in grads if n.startswith(("model.layers.2.", "model.norm")))
    assert not any(grads[n] for n in grads if n.startswith(("model.layers.0.", "model.layers.1.", "model.embed")))


def test_lora_training_lowers_the_loss(tmp_path):
    with one_thread():
        model = tiny_model(64, 0, seed=1)
        add_lora(model, rank=8, alpha=16, layers=top_layers(model, 0))
        config = TrainConfig(epochs=3, batch_size=8, lr=1e-2, warmup_steps=2, seed=5, patience=5)
        state = Trainer(model, _examples(48, 0), _examples(16, 1), config, tmp_path, response_ce, pad_id=0).run()
    losses = [r["valid_loss"] for r in state.log]
    assert losses[-1] < losses[0]


def test_most_recent_keeps_each_users_last_rows_in_file_order():
    rows = [Sample(u, (i,), i + 1) for u, i in [(1, 0), (1, 1), (2, 5), (1, 2), (2, 6), (3, 9)]]
    assert [(s.user, s.target) for s in most_recent(rows, 1)] == [(1, 3), (2, 7), (3, 10)]
    assert [(s.user, s.target) for s in most_recent(rows, 2)] == [(1, 2), (2, 6), (1, 3), (2, 7), (3, 10)]
    assert most_recent(rows, 0) == rows


def test_the_validation_period_becomes_one_row_per_later_item_but_for_held_out_users():
    later = [Sample(1, (4, 5), 6, (6, 7, 8)), Sample(2, (9,), 3), Sample(3, (1,), 2, (2,))]
    assert [(s.user, s.history, s.target) for s in period_rows(later, held_out_users={3})] == [
        (1, (4, 5), 6), (1, (4, 5, 6), 7), (1, (4, 5, 6, 7), 8), (2, (9,), 3)]
    data = Dataset(Path("."), None, {"train": [Sample(1, (4,), 5), Sample(2, (8,), 9), Sample(3, (0,), 1)],
                                     "valid": later})
    rows = training_rows(data, [later[2]], FineTuneOptions(valid_period=True), train_limit=None, seed=0)
    assert [(s.user, s.target) for s in rows] == [(1, 5), (1, 6), (1, 7), (1, 8), (2, 9), (2, 3), (3, 1)]
    recent = training_rows(data, [later[2]], FineTuneOptions(valid_period=True, recent_per_user=1), None, 0)
    assert [(s.user, s.target) for s in recent] == [(1, 8), (2, 3), (3, 1)]  # the later period counts as recent
    assert training_rows(data, [], FineTuneOptions(), None, 0) == data["train"]


def test_train_with_lora_writes_a_stock_checkpoint(tmp_path, demo_data):
    out = tmp_path / "lora"
    args = ["train", "--data", str(demo_data), "--model", "tiny", "--out", str(out), "--max-steps", "4",
            "--batch-size", "8", "--valid-limit", "16", "--lora", "4", "--recent-per-user", "1"]
    with one_thread():
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    weights = load_file(out / "model.safetensors")
    assert not any("lora" in k or ".base." in k for k in weights)
    summary = json.loads((out / "training.json").read_text())
    assert summary["lora_rank"] == 4 and summary["lora_alpha"] == 8
    assert 0 < summary["trainable_parameters"] < summary["parameters"] / 2
    users = len({json.loads(line)["user"] for line in (demo_data / "train.jsonl").read_text().splitlines()})
    assert summary["train_rows"] == users
    resumed = CliRunner().invoke(main, args + ["--resume", "--lora", "8"])
    assert resumed.exit_code == 1 and "--lora" in resumed.output


def test_train_on_the_validation_period_keeps_the_loss_users_out(tmp_path, demo_data):
    out = tmp_path / "later"
    args = ["train", "--data", str(demo_data), "--model", "tiny", "--out", str(out), "--max-steps", "1",
            "--batch-size", "8", "--valid-limit", "16", "--valid-period"]
    with one_thread():
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    count = {split: len((demo_data / f"{split}.jsonl").read_text().splitlines()) for split in ("train", "valid")}
    valid = [json.loads(line) for line in (demo_data / "valid.jsonl").read_text().splitlines()]
    assert all("targets" not in row for row in valid)  # each validation row is one later item
    summary = json.loads((out / "training.json").read_text())
    held_out = {row.user for row in subsample(load_dataset(demo_data, splits=("valid",))["valid"], 16, 0)}
    later = sum(row["user"] not in held_out for row in valid)
    assert 0 < later < count["valid"]
    assert summary["train_rows"] == count["train"] + later and summary["valid_rows"] == 16


def test_lora_alpha_needs_a_rank():
    assert FineTuneOptions(lora=4).alpha == 8
    result = CliRunner().invoke(main, ["train", "--data", ".", "--model", "tiny", "--out", "x", "--lora-alpha", "4"])
    assert result.exit_code == 1 and "--lora-alpha needs --lora" in result.output


def _lora_trainer(state_dir):
    model = tiny_model(64, 0, seed=1)
    torch.manual_seed(2)
    add_lora(model, rank=4, alpha=8, layers=top_layers(model, 1))
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, warmup_steps=2, checkpoint_every=3, seed=5, patience=5)
    return model, Trainer(model, _examples(48, 0), _examples(16, 1), config, state_dir, response_ce, pad_id=0)


def test_interrupted_lora_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    with one_thread():
        model, trainer = _lora_trainer(tmp_path / "unbroken")
        trainer.run()
        broken_model, broken = _lora_trainer(tmp_path / "broken")
        interrupt_at_step(monkeypatch, broken, 5)
        resumed_model, resumed = _lora_trainer(tmp_path / "broken")
        resumed.run(resume=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], tensor), name
    merge_lora(resumed_model)
    merge_lora(model)
    ids = torch.tensor([[5, 9, 12, 7]])
    assert torch.equal(resumed_model(ids).logits, model(ids).logits)
