"""`prunerec demo` (registered by prunerec.cli through COMMANDS)."""
from __future__ import annotations

import click

from prunerec.demo.options import DemoPlan
from prunerec.errors import friendly_errors
from prunerec.options import click_options


@click.command(context_settings={"max_content_width": 100, "help_option_names": ["-h", "--help"]})
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click_options(DemoPlan, ("minutes", "eval_users", "distill_steps", "engines", "load_users", "load_seconds"))
@click.option("--resume", is_flag=True, help="Reuse finished steps in --out.")
@click.option("--overwrite", is_flag=True, help="Run every step again over an earlier demo in --out.")
@friendly_errors
def demo(out, resume, overwrite, **plan):
    """End to end on built-in data, base against pruned.

    Makes the demo data, trains the tiny preset, evaluates it, compresses it with PruneRec,
    evaluates the pruned model, exports it (Hugging Face + ONNX, verified), serves each model
    in turn and load-tests them, then prints one table: quality, size and speed, base vs pruned.
    Everything lands in --out (summary.md at the end); --resume skips the finished steps.
    """
    from prunerec.demo.pipeline import run_demo

    click.echo(run_demo(out, DemoPlan(**plan), resume=resume, overwrite=overwrite))


COMMANDS = [demo]
