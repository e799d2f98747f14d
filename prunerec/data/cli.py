"""`prunerec data`: prepare, download and demo data sets (registered by prunerec.cli through COMMANDS)."""
from __future__ import annotations

import json
from dataclasses import asdict

import click

from prunerec.data.options import DemoDataOptions, PrepareOptions
from prunerec.errors import friendly_errors
from prunerec.options import click_options

PREPARED_FILES = ("items.jsonl", "train.jsonl", "valid.jsonl", "test.jsonl", "stats.json")


def _fresh_data_folder(out, overwrite: bool) -> None:
    from prunerec.io import check_fresh_output, sweep_temps

    check_fresh_output(out, PREPARED_FILES, False, overwrite, "a prepared data set", resumable=False)
    sweep_temps(out)


_overwrite_data = click.option("--overwrite", is_flag=True,
                               help="Replace the data set already in --out (without it, it is refused).")
@click.group()
def data():
    """Prepare data sets in the uniform form (items.jsonl, train/valid/test.jsonl)."""


@data.group("prepare")
def data_prepare():
    """Turn raw data into the uniform prepared form."""


@data_prepare.command("amazon")
@click.option("--reviews", required=True, type=click.Path(dir_okay=False),
              help="Raw reviews file (e.g. Video_Games.json.gz).")
@click.option("--meta", required=True, type=click.Path(dir_okay=False),
              help="Raw metadata file (e.g. meta_Video_Games.json.gz).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click_options(PrepareOptions, ("window_end", "min_items", "core", "max_history"))
@_overwrite_data
@friendly_errors
def data_prepare_amazon(reviews, meta, out, overwrite, **options):
    """Amazon Reviews 2018 (gzipped JSON lines, as published) with the BIGRec protocol:
    time window, title cleaning, 5-core, history <= 10, global 8:1:1 time split."""
    from pathlib import Path

    from prunerec.data.amazon import prepare_amazon
    from prunerec.errors import PrunerecError

    written = {(Path(out) / name).resolve() for name in PREPARED_FILES}
    for flag, path in (("--reviews", reviews), ("--meta", meta)):
        if Path(path).resolve() in written:
            raise PrunerecError(f"{flag} {path} is a file that prepare writes into --out {out}: pick another --out")
    options = PrepareOptions(**options).check()
    _fresh_data_folder(out, overwrite)
    stats = prepare_amazon(reviews, meta, out, **asdict(options))
    click.echo(json.dumps(stats, indent=2))


@data.group("download")
def data_download():
    """Fetch raw public data (resumable)."""


@data_download.command("amazon")
@click.option("--category", default="Video_Games", show_default=True, help="Amazon 2018 category file name.")
@click.option("--out", default="raw", show_default=True, type=click.Path(file_okay=False))
@click.option("--base-url", default=None, help="A mirror of the McAuley lab's amazon_v2 folder.")
@friendly_errors
def data_download_amazon(category, out, base_url):
    """Download the raw reviews and metadata files of an Amazon 2018 category (resumable)."""
    from prunerec.data.amazon import DEFAULT_BASE_URL, download_amazon

    reviews, meta = download_amazon(category, out, base_url=base_url or DEFAULT_BASE_URL)
    click.echo(f"reviews: {reviews}\nmeta:    {meta}\nnext: prunerec data prepare amazon "
               f"--reviews {reviews} --meta {meta} --out data/{category}")


@data.command("demo")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click_options(DemoDataOptions, ("seed", "n_items", "n_users"))
@_overwrite_data
@friendly_errors
def data_demo(out, overwrite, **options):
    """Write the built-in synthetic game-store data set (no download)."""
    from prunerec.data.demo import write_demo

    options = DemoDataOptions(**options).check()
    _fresh_data_folder(out, overwrite)
    write_demo(out, **asdict(options))
    click.echo(f"demo data written to {out}")


COMMANDS = [data]
