"""`prunerec loadtest` (registered by prunerec.cli through COMMANDS)."""
from __future__ import annotations

import sys

import click

from prunerec.errors import friendly_errors
from prunerec.loadtest.options import SHARED_SERVE_OPTIONS, LoadtestOptions
from prunerec.options import ENGINES, click_options
from prunerec.serve.options import ServeOptions, check_engine_flags

__all__ = ["COMMANDS", "loadtest"]


@click.command(context_settings={"max_content_width": 100, "help_option_names": ["-h", "--help"]})
@click.option("--baseline", required=True,
              help="Model folder (served here) or http:// URL of a running `prunerec serve`.")
@click.option("--candidate", required=True,
              help="Model folder or URL, compared with the baseline (e.g. the pruned model).")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Prepared data folder: request histories from its test split, answers checked against items.jsonl.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Report folder: report.json, report.md, latency.png, throughput.png, locust/ CSVs, logs/.")
@click.option("--engine", type=click.Choice(ENGINES), default=ServeOptions.engine, show_default=True,
              help="Engine of the servers started for model folders.")
@click_options(LoadtestOptions, ("users", "duration_s", "spawn_rate", "k"))
@click_options(ServeOptions, SHARED_SERVE_OPTIONS, help_suffix=" (serve option, both models)")
@click_options(LoadtestOptions, ("port", "ready_timeout", "allow_remote"))
@friendly_errors
def loadtest(baseline, candidate, data_dir, out_dir, engine, **options):
    """Load-test two models in turn with the same real requests and compare them: requests/s,
    p50/p90/p99 latency, failures and engine tokens/s at each concurrency level, and the
    candidate/baseline ratios (printed at the end). Every answer is checked to hold only real
    catalog items. Servers started here use identical settings on loopback and are stopped at
    the end, on errors and on Ctrl-C.

    \b
    Examples:
      prunerec loadtest --baseline runs/base --candidate runs/pruned/final --data data/Games --out runs/loadtest
      prunerec loadtest --baseline http://127.0.0.1:8000 --candidate http://127.0.0.1:8001 \\
          --data data/Games --out runs/lt --users 1,8 --duration 2m
    """
    from prunerec.loadtest.report import headline_table
    from prunerec.loadtest.runner import run_loadtest

    serve = ServeOptions(engine=engine, **{name: options.pop(name) for name in SHARED_SERVE_OPTIONS})
    check_engine_flags(engine, serve.processes, enforce_eager=serve.enforce_eager)
    options = LoadtestOptions(serve=serve, **options)
    try:
        report = run_loadtest(baseline, candidate, data_dir, out_dir, options, say=lambda m: click.echo(m, err=True))
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: every server and locust run started was stopped; finished levels (if any) are in "
                   f"{out_dir}/report.json", err=True)
        sys.exit(130)
    click.echo("candidate / baseline (throughput, tokens/s: above 1 is better; latency: below 1 is better)")
    click.echo(headline_table(report["ratios"]))
    click.echo(f"report: {out_dir}/report.md")


COMMANDS = [loadtest]

if __name__ == "__main__":
    loadtest()
