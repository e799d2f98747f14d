"""`train --precision bf16`: bf16 autocast on the training path only, float32 everywhere else."""
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from prunerec.cli import main
from prunerec.model import dtypes
from prunerec.model.batching import collate, response_ce
from prunerec.train.trainer import TrainConfig, validation_loss
from tests.train.test_trainer import _examples, _trainer

CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {extra}\nbogomips\t: 4800\n"


def _first_lm_head_dtypes(model, batch, precision):
    seen = []
    handle = model.lm_head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        with dtypes.autocast(precision, torch.device("cpu")):
            loss = response_ce(model, batch)
    finally:
        handle.remove()
    return seen, loss


def test_bf16_runs_matrix_products_in_bf16_and_keeps_the_loss_close(tmp_path):
    model, _ = _trainer(tmp_path)
    batch = collate(_examples(8, 3), pad_id=0)
    fp32_dtypes, fp32_loss = _first_lm_head_dtypes(model, batch, "fp32")
    bf16_dtypes, bf16_loss = _first_lm_head_dtypes(model, batch, "bf16")
    assert fp32_dtypes == [torch.float32] and bf16_dtypes == [torch.bfloat16]
    assert bf16_loss.dtype == torch.float32  # the loss itself is float32
    assert abs(bf16_loss.item() - fp32_loss.item()) < 0.02 * fp32_loss.item()
    assert abs(bf16_loss.item() - fp32_loss.item()) > 0  # bf16 rounding did happen


def test_bf16_training_learns_as_fp32_does_and_keeps_float32_weights(tmp_path):
    model, trainer = _trainer(tmp_path / "bf16", precision="bf16")
    before = validation_loss(model, trainer.valid, response_ce, 0, 8)
    bf16 = trainer.run()
    fp32 = _trainer(tmp_path / "fp32")[1].run()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert bf16.best_loss < 0.95 * before
    assert abs(bf16.best_loss - fp32.best_loss) < 0.02 * fp32.best_loss
    assert bf16.best_loss != fp32.best_loss


def test_precision_is_part_of_the_resume_check(tmp_path):
    _, trainer = _trainer(tmp_path, max_steps=2, epochs=1)
    trainer.run()
    _, other = _trainer(tmp_path, max_steps=2, epochs=1, precision="bf16")
    with pytest.raises(ValueError, match=r"different training settings \(precision\)"):
        other.run(resume=True)
    assert TrainConfig().precision == "fp32"


def test_cpu_bf16_units_are_read_from_cpuinfo():
    assert dtypes.cpu_has_bf16_units(CPUINFO.format(extra="avx512f avx512_bf16")) is True
    assert dtypes.cpu_has_bf16_units(CPUINFO.format(extra="amx_tile amx_bf16")) is True
    assert dtypes.cpu_has_bf16_units(CPUINFO.format(extra="avx512f")) is False
    cpu = torch.device("cpu")
    assert "slower than fp32" in dtypes.precision_warning("bf16", cpu, CPUINFO.format(extra="avx512f"))
    assert dtypes.precision_warning("bf16", cpu, CPUINFO.format(extra="avx512_bf16")) is None
    assert dtypes.precision_warning("fp32", cpu, CPUINFO.format(extra="")) is None


def test_train_cli_records_bf16_and_refuses_an_unknown_precision(tmp_path, demo_data):
    runner = CliRunner()
    out = tmp_path / "m"
    args = ["train", "--data", str(demo_data), "--model", "tiny", "--out", str(out), "--max-steps", "2",
            "--batch-size", "4", "--train-limit", "16", "--valid-limit", "8"]
    bad = runner.invoke(main, args + ["--precision", "fp8"])
    assert bad.exit_code == 2 and "'fp8' is not one of 'fp32', 'bf16'" in bad.output
    result = runner.invoke(main, args + ["--precision", "bf16"])
    assert result.exit_code == 0, result.output
    training = json.loads((out / "training.json").read_text())
    assert training["config"]["precision"] == "bf16"
    assert json.loads((out / ".train-state" / "run.json").read_text())["--precision"] == "bf16"
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}
