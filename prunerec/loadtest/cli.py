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
@click.option("--users", default=",".join(map(str, LoadtestOptions.users)), show_default=True,
              help="Concurrency levels: simulated users, each sending its next request when the previous is answered.")
@click.option("--duration", default=f"{LoadtestOptions.duration_s}s", show_default=True,
              help="Load per level and model: 90, 60s, 2m (at most 60m).")
@click.option("--spawn-rate", type=click.FloatRange(min=0.01), default=None,
              help="Users started per second. Default: all users of a level within 1 s.")
@click.option("--k", default=LoadtestOptions.k, show_default=True, type=click.IntRange(1, 50),
              help="Items asked for per request.")
@click_options(ServeOptions, SHARED_SERVE_OPTIONS, help_suffix=" (serve option, both models)")
@click.option("--port", default=LoadtestOptions.port, show_default=True, type=click.IntRange(0, 65535),
              help="Loopback port of the servers started (one at a time); 0: a free one.")
@click.option("--ready-timeout", default=LoadtestOptions.ready_timeout, show_default=True, type=click.FloatRange(1),
              help="Seconds a started server may take to answer GET /ready with 200.")
@click.option("--allow-remote", is_flag=True, help="Allow URLs that are not loopback addresses.")
@friendly_errors
def loadtest(baseline, candidate, data_dir, out_dir, engine, users, duration, spawn_rate, k, beams, max_concurrency,
             max_queue, max_batch, processes, request_timeout, enforce_eager, port, ready_timeout, allow_remote):
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
    from prunerec.loadtest.report import headline_table, parse_duration, parse_users
    from prunerec.loadtest.runner import run_loadtest

    check_engine_flags(engine, processes, enforce_eager=enforce_eager)
    serve = ServeOptions(engine=engine, beams=beams, max_concurrency=max_concurrency, max_queue=max_queue,
                         max_batch=max_batch, processes=processes, request_timeout=request_timeout,
                         enforce_eager=enforce_eager)
    options = LoadtestOptions(users=tuple(parse_users(users)), duration_s=parse_duration(duration),
                              spawn_rate=spawn_rate, k=k, serve=serve, port=port, ready_timeout=ready_timeout,
                              allow_remote=allow_remote)
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
