"""compress never deletes what it did not write: an OUT over its inputs or over an earlier run
is refused unless asked for, and a resume must match the inputs by content."""
import shutil

from click.testing import CliRunner

from prunerec.cli import main

FAST = ["--max-steps", "2", "--eval-every", "2", "--batch-size", "8", "--train-limit", "16", "--valid-limit", "8",
        "--eval-users", "2", "--beams", "2", "--calib-samples", "8", "--calib-batch-size", "4", "--warmup", "1"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result, *fragments):
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_an_output_that_holds_the_model_is_refused_and_the_model_kept(tiny_base):
    data, base = tiny_base
    before = sorted(p.name for p in base.iterdir())
    refused(run("compress", "--model", base, "--data", data, "--out", base.parent, *FAST),
            "contains the input --model")
    refused(run("compress", "--model", base, "--data", data, "--out", base, *FAST), "is the input --model")
    assert sorted(p.name for p in base.iterdir()) == before


def test_an_earlier_run_needs_resume_or_overwrite_and_a_resume_matching_content(tiny_base, tmp_path):
    source, base = tiny_base
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(source, data)
    result = run("compress", "--model", base, "--data", data, "--out", out, *FAST, "--stop-after", "base")
    assert result.exit_code == 0, result.output
    refused(run("compress", "--model", base, "--data", data, "--out", out, *FAST),
            "already holds a compress run", "--resume", "--overwrite")
    lines = (data / "train.jsonl").read_text().splitlines(keepends=True)
    (data / "train.jsonl").write_text("".join(lines[:-1]))
    refused(run("compress", "--model", base, "--data", data, "--out", out, *FAST, "--resume"),
            "--data (its content changed)")
    (out / ".state" / ".stage1.prunerec-tmp.x").mkdir()
    result = run("compress", "--model", base, "--data", data, "--out", out, *FAST, "--overwrite",
                 "--stop-after", "base")
    assert result.exit_code == 0, result.output
    assert not (out / ".state" / ".stage1.prunerec-tmp.x").exists()
