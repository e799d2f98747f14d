"""Options declared once: the flags generated from a dataclass, and the same bounds for library callers."""
from dataclasses import dataclass, fields

import click
import pytest
from click.testing import CliRunner

from prunerec.compress.options import AnalyzeOptions, CompressOptions
from prunerec.data.options import DemoDataOptions, PrepareOptions
from prunerec.demo.options import DemoPlan
from prunerec.errors import PrunerecError
from prunerec.evaluate.options import EvalOptions
from prunerec.export.options import ExportOptions
from prunerec.loadtest.cli import SHARED_SERVE_OPTIONS, loadtest
from prunerec.loadtest.options import LoadtestOptions
from prunerec.options import FLAG, check_flags, click_options, flag
from prunerec.serve.cli import serve
from prunerec.serve.options import ServeOptions
from prunerec.train.options import TRAINING_FLAGS, FineTuneOptions, PromptOptions, TrainingOptions


def _params(command) -> dict[str, click.Parameter]:
    return {p.name: p for p in command.params}


@pytest.mark.parametrize("options, message", [
    (TrainingOptions(batch_size=0), "--batch-size must be >= 1, got 0"),
    (TrainingOptions(lr=0.0), "--lr must be > 0, got 0.0"),
    (TrainingOptions(train_limit=0), "--train-limit must be >= 1, got 0"),
    (ServeOptions(dtype="int4"), "--dtype must be one of auto, float32, bfloat16, float16, got 'int4'"),
    (ServeOptions(max_queue=-1), "--max-queue must be >= 0, got -1"),
])
def test_library_callers_get_the_command_line_bounds(options, message):
    with pytest.raises(PrunerecError, match=message):
        check_flags(options)


def test_valid_defaults_pass():
    check_flags(TrainingOptions())
    check_flags(ServeOptions())
    TrainingOptions(time_budget=1.0, decay_to_budget=True).check()
    with pytest.raises(PrunerecError, match="--decay-to-budget needs a --time-budget"):
        TrainingOptions(decay_to_budget=True).check()


def test_train_and_compress_share_one_declaration_with_their_own_defaults():
    from prunerec.compress.cli import compress
    from prunerec.train.cli import train

    train_params, compress_params = _params(train), _params(compress)
    for name in TRAINING_FLAGS:
        # one help text (train adds how its computed --lr default is chosen)
        assert train_params[name].help.startswith(compress_params[name].help), name
    assert train_params["lr"].default is None and compress_params["lr"].default == CompressOptions.lr
    assert train_params["valid_limit"].default == 1000 and compress_params["valid_limit"].default == 500
    assert compress_params["decay_to_budget"].is_flag   # compress gained it through the shared declaration


def test_serve_and_loadtest_share_the_serve_options():
    serve_params, loadtest_params = _params(serve), _params(loadtest)
    for name in SHARED_SERVE_OPTIONS:
        assert loadtest_params[name].default == serve_params[name].default == getattr(ServeOptions, name), name
        serve_help = serve_params[name].help.split(" [default: ")[0]  # a shown default follows the suffix
        assert loadtest_params[name].help.startswith(serve_help), name


def test_a_generated_option_refuses_out_of_range_values(tmp_path):
    result = CliRunner().invoke(serve, ["--model", str(tmp_path), "--max-concurrency", "0"])
    assert result.exit_code == 2 and "0 is not in the range x>=1" in result.output


@dataclass(frozen=True)
class _Example:
    """Every kind of flag `click_options` turns into an option."""
    distill: bool = flag(True, "Prune only.", cli="--no-distill", negate=True)
    lam: float = flag(0.2, "Weight.", cli="--lambda", low=0, cli_range=False)
    steps: tuple[int, ...] | None = flag(None, "Steps.", parse=lambda t: tuple(int(p) for p in t.split(",")),
                                         metavar="I,II")
    engines: tuple[str, ...] = flag(("a", "b"), "Engines.", cli="--engine", choices=("a", "b"), multiple=True)
    key: str | None = flag(None, "Key.", kind=str, envvar="PRUNEREC_TEST_KEY")
    folder: str | None = flag(None, "Folder.", path="dir", exists=True)
    delay: float = flag(0.0, "Hidden.", hidden=True, low=0)


def _run_example(args, env=None):
    seen = {}

    @click.command()
    @click_options(_Example, [f.name for f in fields(_Example)])
    def command(**options):
        seen["options"] = _Example(**options)
        check_flags(seen["options"])

    result = CliRunner().invoke(command, args, env=env)
    return result, seen.get("options")


def test_every_kind_of_flag_parses_from_the_command_line(tmp_path):
    result, options = _run_example([])
    assert result.exit_code == 0 and options == _Example()
    result, options = _run_example(["--no-distill", "--lambda", "0.5", "--steps", "3,4", "--engine", "b",
                                    "--folder", str(tmp_path), "--delay", "1.5"], env={"PRUNEREC_TEST_KEY": "k"})
    assert result.exit_code == 0, result.output
    assert options == _Example(distill=False, lam=0.5, steps=(3, 4), engines=("b",), key="k", folder=str(tmp_path),
                               delay=1.5)
    help_text = _run_example(["--help"])[0].output
    assert "--no-distill" in help_text and "I,II" in help_text and "PRUNEREC_TEST_KEY" in help_text
    assert "--delay" not in help_text


@pytest.mark.parametrize("args, message", [
    (["--steps", "3,x"], "Invalid value for '--steps'"),             # a parse error is a usage error
    (["--engine", "c"], "'c' is not one of 'a', 'b'"),
    (["--folder", "/nonexistent/prunerec"], "does not exist"),
    (["--lambda", "-1"], "--lambda must be >= 0, got -1.0"),          # cli_range=False: check_flags says it
])
def test_every_kind_of_flag_refuses_bad_values_cleanly(args, message):
    result, _ = _run_example(args)
    assert result.exit_code != 0 and message in (result.output + str(result.exception))
    assert not isinstance(result.exception, (ValueError, TypeError))


def test_check_flags_names_the_option_a_user_types():
    with pytest.raises(PrunerecError, match="--users must be > 0, got 0"):
        check_flags(DemoPlan(eval_users=0))
    with pytest.raises(PrunerecError, match="--engine must be one of vllm, torch"):
        check_flags(DemoPlan(engines=("onnx",)))


OPTION_CLASSES = {  # each command and the options classes it declares its options with
    "compress": [CompressOptions], "analyze": [AnalyzeOptions], "evaluate": [EvalOptions], "export": [ExportOptions],
    "serve": [ServeOptions], "loadtest": [LoadtestOptions, ServeOptions], "demo": [DemoPlan],
    "train": [PromptOptions, TrainingOptions, FineTuneOptions],
    "data prepare amazon": [PrepareOptions], "data demo": [DemoDataOptions],
}
RUN_ARGUMENTS = {"model_ref", "model_dir", "data_dir", "out", "out_dir", "baseline", "candidate", "reviews", "meta",
                 "resume", "overwrite", "dry_run", "stop_after", "help", "engine"}


def _command(path: str):
    from prunerec.cli import main

    command = main
    for name in path.split():
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", sorted(OPTION_CLASSES))
def test_every_option_of_a_command_comes_from_its_options_class(path):
    """Each option is a flag() field of the command's options class (or names an input/output or
    how the run goes): nothing hand-written that a library caller could not check the same way."""
    declared = {f.name: f for cls in OPTION_CLASSES[path] for f in fields(cls)}
    for param in _command(path).params:
        if param.name in RUN_ARGUMENTS:
            continue
        assert param.name in declared and FLAG in declared[param.name].metadata, (path, param.name)
        assert param.help == declared[param.name].metadata[FLAG].help or param.help.startswith(
            declared[param.name].metadata[FLAG].help), (path, param.name)
