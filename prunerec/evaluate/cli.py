"""`prunerec evaluate` (registered by prunerec.cli through COMMANDS)."""
from __future__ import annotations

import click

from prunerec.errors import friendly_errors
from prunerec.evaluate.options import EvalOptions
from prunerec.options import click_options

EVAL_FLAGS = ("split", "grounding", "beams", "batch_size", "workers", "limit", "seed")


@click.command(context_settings={"max_content_width": 100, "help_option_names": ["-h", "--help"]})
@click.option("--model", "model_ref", required=True,
              help="Checkpoint folder written by train/compress (or any Qwen2 recommender).")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click_options(EvalOptions, EVAL_FLAGS[:-1])
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the JSON report here.")
@click_options(EvalOptions, EVAL_FLAGS[-1:])
@friendly_errors
def evaluate(model_ref, data_dir, out, **options):
    """HR@K and NDCG@K (K = 1, 3, 5, 10, 20) with 95% bootstrap intervals, the out-of-catalog
    rate of free generation, and a popularity baseline, in one table."""
    from prunerec.evaluate.pipeline import run_evaluate

    report, table = run_evaluate(model_ref, data_dir, out=out, **options)
    click.echo(table)


COMMANDS = [evaluate]
