"""`prunerec demo` (registered by prunerec.cli through COMMANDS)."""
from __future__ import annotations

import click

from prunerec.demo.pipeline import DEMO_ENGINES, DemoPlan
from prunerec.errors import friendly_errors


@click.command(context_settings={"max_content_width": 100, "help_option_names": ["-h", "--help"]})
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--minutes", default=DemoPlan.minutes, show_default=True, help="Training budget in minutes.")
@click.option("--users", "eval_users", default=DemoPlan.eval_users, show_default=True, help="Test users evaluated.")
@click.option("--distill-steps", default=DemoPlan.distill_steps, show_default=True,
              help="Distillation steps after each pruning stage.")
@click.option("--engine", "engines", type=click.Choice(DEMO_ENGINES), multiple=True,
              default=DemoPlan.engines, show_default=True,
              help="Serving engine of the load test; repeat it for several (each gets its rows in the table).")
@click.option("--load-users", default=",".join(map(str, DemoPlan.load_users)), show_default=True,
              help="Concurrent users of the load test, one level after another.")
@click.option("--load-seconds", default=DemoPlan.load_seconds, show_default=True,
              help="Seconds of load per level, model and engine.")
@click.option("--resume", is_flag=True, help="Reuse finished steps in --out.")
@click.option("--overwrite", is_flag=True, help="Run every step again over an earlier demo in --out.")
@friendly_errors
def demo(out, minutes, eval_users, distill_steps, engines, load_users, load_seconds, resume, overwrite):
    """End to end on built-in data, base against pruned.

    Makes the demo data, trains the tiny preset, evaluates it, compresses it with PruneRec,
    evaluates the pruned model, exports it (Hugging Face + ONNX, verified), serves each model
    in turn and load-tests them, then prints one table: quality, size and speed, base vs pruned.
    Everything lands in --out (summary.md at the end); --resume skips the finished steps.
    """
    from prunerec.demo.pipeline import run_demo
    from prunerec.loadtest.report import parse_users

    plan = DemoPlan(minutes=minutes, eval_users=eval_users, distill_steps=distill_steps, engines=tuple(engines),
                    load_users=tuple(parse_users(load_users, flag="--load-users")), load_seconds=load_seconds)
    click.echo(run_demo(out, plan, resume=resume, overwrite=overwrite))


COMMANDS = [demo]
