"""Options declared once: the flags generated from a dataclass, and the same bounds for library callers."""
import click
import pytest
from click.testing import CliRunner

from prunerec.compress.pipeline import CompressOptions
from prunerec.errors import PrunerecError
from prunerec.loadtest.cli import SHARED_SERVE_OPTIONS, loadtest
from prunerec.options import check_flags
from prunerec.serve.cli import serve
from prunerec.serve.options import ServeOptions
from prunerec.train.options import TRAINING_FLAGS, TrainingOptions


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
