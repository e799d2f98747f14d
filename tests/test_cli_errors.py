"""Bad input gets a clear message and a non-zero exit, never a traceback."""

import pytest
from click.testing import CliRunner

from prunerec.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def _assert_clean_failure(result, *fragments):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_help_explains_commands(runner):
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "evaluate", "demo", "data"):
        assert command in result.output
    assert "BIGRec supervised fine-tuning" in runner.invoke(main, ["train", "--help"]).output


def test_missing_or_bad_model(runner, demo_data, tmp_path):
    result = runner.invoke(main, ["evaluate", "--model", str(tmp_path / "nope"), "--data", str(demo_data)])
    _assert_clean_failure(result, "model folder not found")
    (tmp_path / "empty").mkdir()
    result = runner.invoke(main, ["train", "--data", str(demo_data), "--model", str(tmp_path / "empty"),
                                  "--out", str(tmp_path / "out")])
    _assert_clean_failure(result, "not a Hugging Face checkpoint")


def test_malformed_data_is_reported_with_line(runner, demo_data, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("items.jsonl", "valid.jsonl", "test.jsonl"):
        (bad / name).write_text((demo_data / name).read_text())
    (bad / "train.jsonl").write_text('{"user": 1, "history": [0], "target": 1}\n{"user": 1, "history": []}\n')
    result = runner.invoke(main, ["train", "--data", str(bad), "--model", "tiny", "--out", str(tmp_path / "m")])
    _assert_clean_failure(result, "train.jsonl:2: empty history")


def test_bad_numbers_are_refused(runner, demo_data, tmp_path):
    result = runner.invoke(main, ["train", "--data", str(demo_data), "--model", "tiny", "--out", str(tmp_path / "m"),
                                  "--batch-size", "0"])
    _assert_clean_failure(result, "--batch-size", "0 is not in the range x>=1")
    result = runner.invoke(main, ["train", "--data", str(demo_data), "--model", "tiny", "--out", str(tmp_path / "m"),
                                  "--decay-to-budget"])
    _assert_clean_failure(result, "--decay-to-budget needs a --time-budget")
    result = runner.invoke(main, ["evaluate", "--model", str(tmp_path / "m"), "--data", str(demo_data),
                                  "--workers", "-1"])
    _assert_clean_failure(result, "--workers must be >= 0")


def test_download_offline_gives_a_clear_message(runner, tmp_path):
    result = runner.invoke(main, ["data", "download", "amazon", "--category", "Video_Games", "--out", str(tmp_path),
                                  "--base-url", "http://127.0.0.1:9"])
    _assert_clean_failure(result, "could not reach")
