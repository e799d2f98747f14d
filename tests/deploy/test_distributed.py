"""Data-parallel training and compression for real: `torchrun --nproc_per_node 2` (gloo, CPU)
against one process with the same global batch (about a minute on 2 busy cores).

Covers: the `-m prunerec` / `-m prunerec.cli` entry points under torchrun, SFT with a global
batch that leaves one rank without an example, a run stopped by its time budget and resumed
under torchrun, a whole `compress` run (rank 0 prunes and evaluates, both ranks distil), and
that the other rank neither prints the closing line nor writes files of its own.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from prunerec.cli import main

# 49 rows in batches of 8: the last global batch holds one example, so rank 1 gets none
TRAIN = ["--model", "tiny", "--epochs", "1", "--eval-every", "3", "--batch-size", "8", "--train-limit", "49",
         "--valid-limit", "16", "--warmup", "1", "--max-history", "5"]
COMPRESS = ["--max-steps", "3", "--eval-every", "2", "--batch-size", "8", "--train-limit", "48", "--valid-limit",
            "16", "--eval-users", "4", "--beams", "4", "--calib-samples", "8", "--calib-batch-size", "4", "--warmup",
            "1"]


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def torchrun(module, *args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", module,
           *[str(a) for a in args]]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done.stdout


def assert_close_weights(a, b, atol=1e-4):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].shape == wb[k].shape, k
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-4, msg=f"{k} differs")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from prunerec.data.demo import write_demo

    data = tmp_path_factory.mktemp("ddp") / "data"
    write_demo(data, n_items=300, n_users=200)
    return data


@pytest.fixture(scope="module")
def single_base(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "base"
    cli("train", "--data", tiny_data, "--out", out, *TRAIN)
    return out


def test_torchrun_training_matches_one_process_and_resumes(tiny_data, single_base, tmp_path):
    out = tmp_path / "ddp"
    # stopped by its time budget at the first validation (step 3), then resumed to the end
    stopped = torchrun("prunerec", "train", "--data", tiny_data, "--out", out, *TRAIN, "--time-budget", "1e-6",
                       cwd=tmp_path)
    assert stopped.count("best validation loss") == 1, stopped  # rank 1's stdout is silent
    assert json.loads((out / "training.json").read_text())["steps"] == 3
    resumed = torchrun("prunerec", "train", "--data", tiny_data, "--out", out, *TRAIN, "--resume", cwd=tmp_path)
    assert resumed.count("best validation loss") == 1, resumed

    single = json.loads((single_base / "training.json").read_text())
    ddp = json.loads((out / "training.json").read_text())
    assert single["steps"] == ddp["steps"] == 7 and single["best_step"] == ddp["best_step"]
    assert ddp["world_size"] == 2 and "world_size" not in single
    assert [r["step"] for r in ddp["log"]] == [r["step"] for r in single["log"]] == [3, 6, 7]
    for a, b in zip(single["log"], ddp["log"]):
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-5)
    assert_close_weights(single_base, out)
    assert (single_base / "tokenizer.json").read_text() == (out / "tokenizer.json").read_text()


def assert_same_choices(one, two):
    """Indices exactly; scores and perplexities to float tolerance (thread counts may differ)."""
    if isinstance(one, dict):
        assert one.keys() == two.keys()
        for key in one:
            assert_same_choices(one[key], two[key])
    elif isinstance(one, list):
        assert len(one) == len(two)
        for a, b in zip(one, two):
            assert_same_choices(a, b)
    elif isinstance(one, float):
        assert one == pytest.approx(two, rel=1e-4, abs=1e-6)
    else:
        assert one == two


def test_torchrun_compress_matches_one_process(tiny_data, single_base, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    cli("compress", "--model", single_base, "--data", tiny_data, "--out", one, *COMPRESS)
    printed = torchrun("prunerec.cli", "compress", "--model", single_base, "--data", tiny_data, "--out", two,
                       *COMPRESS, cwd=tmp_path)
    assert printed.count("final model:") == 1, printed
    for stage in ("stage1", "stage2", "stage3", "final"):
        assert (json.loads((one / stage / "config.json").read_text())
                == json.loads((two / stage / "config.json").read_text()))
        assert_close_weights(one / stage, two / stage)
    r1, r2 = (json.loads((d / "report.json").read_text()) for d in (one, two))
    for s1, s2 in zip(r1["stages"], r2["stages"]):
        assert_same_choices(s1["pruning"]["kept"], s2["pruning"]["kept"])
        assert s1["distill"]["steps"] == s2["distill"]["steps"] == 3
        assert s2["distill"]["world_size"] == 2
        assert s1["distill"]["best_valid_loss"] == pytest.approx(s2["distill"]["best_valid_loss"], rel=1e-4)
    assert sorted(p.name for p in (two / ".state").iterdir()) == ["base_eval.json", "run.json"]
