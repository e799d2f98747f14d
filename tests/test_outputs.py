"""What `train` may write where: outputs over the inputs and earlier runs are refused unless
asked for, a resume must match the run (data and model by content, every option that shapes the
result), leftovers of killed writes are swept, files are readable per the umask, and bad input
or a full disk ends with a message and a non-zero exit."""
import errno
import json
import os
import shutil
import stat

import pytest
from click.testing import CliRunner

from prunerec.cli import main
from prunerec.io import atomic_dir, share_per_umask, write_json

FAST = ["--model", "tiny", "--max-steps", "2", "--eval-every", "2", "--batch-size", "8", "--train-limit", "16",
        "--valid-limit", "8", "--warmup", "1"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def refused(result, *fragments):
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.fixture
def data(demo_data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(demo_data, copy)
    return copy


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_data):
    out = tmp_path_factory.mktemp("trained") / "model"
    ok("train", "--data", demo_data, "--out", out, *FAST)
    return out


def test_train_refuses_an_output_over_its_inputs(data):
    refused(run("train", "--data", data, "--out", data, *FAST), "is the input --data")
    refused(run("train", "--data", data, "--out", data.parent, *FAST), "contains the input --data")
    assert sorted(p.name for p in data.iterdir()) == ["items.jsonl", "stats.json", "test.jsonl", "train.jsonl",
                                                       "valid.jsonl"]


def test_train_refuses_an_earlier_run_unless_asked(data, tmp_path):
    out = tmp_path / "model"
    ok("train", "--data", data, "--out", out, *FAST)
    (out / "notes.txt").write_text("mine")
    refused(run("train", "--data", data, "--out", out, *FAST), "already holds a training run", "--overwrite")
    refused(run("train", "--data", data, "--out", out, *FAST, "--resume", "--overwrite"), "exclude each other")
    (out / ".train-state" / ".weights.prunerec-tmp.x1").mkdir()  # as a killed write leaves it
    ok("train", "--data", data, "--out", out, *FAST, "--overwrite")
    assert (out / "notes.txt").read_text() == "mine"  # what train did not write stays
    assert not (out / ".train-state" / ".weights.prunerec-tmp.x1").exists()


def test_train_resume_refuses_changed_data_model_and_options(data, tmp_path):
    out = tmp_path / "model"
    ok("train", "--data", data, "--out", out, *FAST)
    refused(run("train", "--data", data, "--out", out, *FAST, "--resume", "--max-history", "5"),
            "different --max-history")
    refused(run("train", "--data", data, "--out", out, *FAST, "--resume", "--lr", "0.01", "--seed", "1"),
            "--lr", "--seed")
    lines = (data / "valid.jsonl").read_text().splitlines(keepends=True)
    (data / "valid.jsonl").write_text("".join(lines[:-1]))  # the same path, re-prepared
    refused(run("train", "--data", data, "--out", out, *FAST, "--resume"), "--data (its content changed)")
    (data / "valid.jsonl").write_text("".join(lines))
    ok("train", "--data", data, "--out", out, *FAST, "--resume", "--time-budget", "5")  # may change on resume


def test_train_resume_refuses_a_retrained_base(data, trained, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(trained, base)
    out = tmp_path / "finetuned"
    args = ["train", "--data", data, "--out", out, *FAST[2:], "--model", base]
    ok(*args)
    write_json(base / "prunerec.json", {**json.loads((base / "prunerec.json").read_text()), "note": "retrained"})
    refused(run(*args, "--resume"), "--model (its content changed)")


@pytest.mark.parametrize("split", ["train", "valid"])
def test_train_with_an_empty_split_is_refused(data, tmp_path, split):
    (data / f"{split}.jsonl").write_text("")
    refused(run("train", "--data", data, "--out", tmp_path / "m", *FAST), f"{split}.jsonl has no rows")


def test_non_utf8_data_is_reported_with_file_and_line(data, trained, tmp_path):
    with open(data / "items.jsonl", "ab") as items:
        items.write(b'{"item_id": 400, "title": "caf\xe9"}\n')
    where = f"items.jsonl:{len((data / 'items.jsonl').read_bytes().splitlines())}: not UTF-8 text"
    refused(run("train", "--data", data, "--out", tmp_path / "m", *FAST), where)
    refused(run("evaluate", "--model", trained, "--data", data, "--limit", "2"), where)


def test_a_full_disk_ends_with_a_message_and_the_resume_hint(data, tmp_path, monkeypatch):
    def full_disk(tensors, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr("prunerec.train.checkpoints.save_file", full_disk)
    refused(run("train", "--data", data, "--out", tmp_path / "m", *FAST),
            "weights.safetensors: No space left on device", "--resume")


def test_outputs_are_readable_per_the_umask(tmp_path):
    before = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "private.bin").write_bytes(b"x")
            os.chmod(tmp / "private.bin", 0o600)  # as libraries writing through mkstemp leave files
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
        assert stat.S_IMODE((tmp_path / "folder" / "private.bin").stat().st_mode) == 0o644
        os.umask(0o077)
        (tmp_path / "open.txt").write_text("x")
        os.chmod(tmp_path / "open.txt", 0o666)
        share_per_umask(tmp_path)
        assert stat.S_IMODE((tmp_path / "open.txt").stat().st_mode) == 0o600
    finally:
        os.umask(before)


def test_trained_model_is_readable_by_other_users(trained):
    mask = os.umask(0o022)
    os.umask(mask)
    if mask & 0o044:
        pytest.skip("this session's umask keeps files from other users")
    for path in [trained, *trained.iterdir()]:
        if not path.name.startswith("."):
            assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path


def test_data_commands_refuse_to_replace_a_data_set_unless_asked(tmp_path):
    out = tmp_path / "data"
    ok("data", "demo", "--out", out, "--items", "300", "--users", "200")
    before = (out / "train.jsonl").read_bytes()
    refused(run("data", "demo", "--out", out, "--items", "300", "--users", "200", "--seed", "1"),
            "already holds a prepared data set", "--overwrite")
    assert (out / "train.jsonl").read_bytes() == before
    (out / ".train.jsonl.prunerec-tmp.abc").write_text("half")  # a killed write's leftover
    ok("data", "demo", "--out", out, "--items", "300", "--users", "200", "--seed", "1", "--overwrite")
    assert (out / "train.jsonl").read_bytes() != before
    assert not (out / ".train.jsonl.prunerec-tmp.abc").exists()
    refused(run("data", "prepare", "amazon", "--reviews", out / "items.jsonl", "--meta", out / "items.jsonl",
                "--out", out), "--reviews", "is a file that prepare writes")


def test_export_refuses_to_replace_the_model_or_an_earlier_export(trained, tmp_path):
    model = tmp_path / "hf"
    shutil.copytree(trained, model)
    refused(run("export", "--model", model, "--out", tmp_path, "--format", "hf", "--no-verify"),
            "contains the input --model")
    assert (model / "model.safetensors").is_file()
    out = tmp_path / "export"
    ok("export", "--model", model, "--out", out, "--format", "hf", "--no-verify")
    refused(run("export", "--model", model, "--out", out, "--format", "hf", "--no-verify"), "already holds an export")
    ok("export", "--model", model, "--out", out, "--format", "hf", "--no-verify", "--overwrite")
