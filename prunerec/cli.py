"""The `prunerec` command line: each command parses, calls one function, prints."""
from __future__ import annotations

import json

import click

from prunerec.compress import cli as compress_cli
from prunerec.errors import friendly_errors
from prunerec.export import cli as export_cli
from prunerec.loadtest import cli as loadtest_cli
from prunerec.model import import_cli
from prunerec.options import BEAMS, EVAL_BATCH, click_options
from prunerec.recipes import DEMO_ENGINES, DemoPlan
from prunerec.serve import cli as serve_cli
from prunerec.train.options import FINETUNE_FLAGS, TRAINING_FLAGS, FineTuneOptions, TrainingOptions


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="prunerec")
def main():
    """Compress fine-tuned Qwen2 recommenders (BIGRec) with PruneRec.

    Typical flow: `data` -> `train` -> `evaluate`; `demo` runs it all on built-in data.
    """
    from prunerec.allocator import keep_freed_memory

    keep_freed_memory()


# --- data ---------------------------------------------------------------------------------
PREPARED_FILES = ("items.jsonl", "train.jsonl", "valid.jsonl", "test.jsonl", "stats.json")


def _fresh_data_folder(out, overwrite: bool) -> None:
    from prunerec.io import check_fresh_output, sweep_temps

    check_fresh_output(out, PREPARED_FILES, False, overwrite, "a prepared data set", resumable=False)
    sweep_temps(out)


_overwrite_data = click.option("--overwrite", is_flag=True,
                               help="Replace the data set already in --out (without it, it is refused).")
@main.group()
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
@click.option("--window-end", default="2018-11-01", show_default=True, help="End of the time window (exclusive).")
@click.option("--min-items", default=10_000, show_default=True,
              help="Widen the window a year at a time until this many items remain.")
@click.option("--core", default=5, show_default=True, help="Iterative k-core on users and items.")
@click.option("--max-history", default=10, show_default=True, help="History items kept per sample.")
@_overwrite_data
@friendly_errors
def data_prepare_amazon(reviews, meta, out, window_end, min_items, core, max_history, overwrite):
    """Amazon Reviews 2018 (gzipped JSON lines, as published) with the BIGRec protocol:
    time window, title cleaning, 5-core, history <= 10, global 8:1:1 time split."""
    from pathlib import Path

    from prunerec.data.amazon import prepare_amazon
    from prunerec.errors import PrunerecError

    written = {(Path(out) / name).resolve() for name in PREPARED_FILES}
    for flag, path in (("--reviews", reviews), ("--meta", meta)):
        if Path(path).resolve() in written:
            raise PrunerecError(f"{flag} {path} is a file that prepare writes into --out {out}: pick another --out")
    _fresh_data_folder(out, overwrite)

    stats = prepare_amazon(reviews, meta, out, window_end=window_end, min_items=min_items, core=core,
                           max_history=max_history)
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
@click.option("--seed", default=0, show_default=True)
@click.option("--items", "n_items", default=1200, show_default=True)
@click.option("--users", "n_users", default=1600, show_default=True)
@_overwrite_data
@friendly_errors
def data_demo(out, seed, n_items, n_users, overwrite):
    """Write the built-in synthetic game-store data set (no download)."""
    from prunerec.data.demo import write_demo

    _fresh_data_folder(out, overwrite)
    write_demo(out, seed=seed, n_items=n_items, n_users=n_users)
    click.echo(f"demo data written to {out}")


# --- train --------------------------------------------------------------------------------
_resume_train = click.option("--resume", is_flag=True,
                             help="Continue the interrupted run in --out (refused if the data, the model or an "
                                  "option that shapes the result changed).")
_overwrite_train = click.option("--overwrite", is_flag=True,
                                help="Replace an earlier run's results in --out (without it they are refused).")


def _prompt_options(command):
    options = [
        click.option("--template", type=click.Choice(["alpaca", "compact"]), default=None,
                     help="Prompt template. Default: alpaca for checkpoints, compact for scratch presets."),
        click.option("--category", default=None,
                     help="Item category named in the prompt (default: from the data's stats.json or 'catalog')."),
        click.option("--max-history", default=10, show_default=True,
                     help="History items in a prompt (most recent kept)."),
        click.option("--cutoff", default=512, show_default=True, help="Tokens per example, cut from the left."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Prepared data folder.")
@click.option("--model", "model_ref", required=True,
              help="A scratch preset (tiny, small, deep) or a Hugging Face Qwen2 checkpoint: local folder or hub id.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint folder.")
@_prompt_options
@click_options(TrainingOptions, TRAINING_FLAGS)
@click_options(FineTuneOptions, FINETUNE_FLAGS)
@_resume_train
@_overwrite_train
@friendly_errors
def train(data_dir, model_ref, out, template, category, max_history, cutoff, **train_kwargs):
    """BIGRec supervised fine-tuning: learn to write the next item's title.

    Loss on response tokens only (the LM head runs only where a response token is predicted);
    validation loss each epoch (or --eval-every steps); early stopping; the best weights are
    kept. The result in --out is a stock Hugging Face checkpoint plus catalog.jsonl and
    prunerec.json.

    On a CPU, a pretrained checkpoint trains faster with --template compact, a shorter
    --max-history, --lora RANK (merged at the end) or --train-layers N, on fewer rows
    (--recent-per-user, --train-limit), within --time-budget minutes.

    \b
    Example (SmolLM2 imported with `prunerec import`, 2 CPU cores):
      prunerec train --data data/Toys --model runs/smollm2 --out runs/toys-base \\
        --template compact --max-history 5 --lora 16 --train-layers 15 --cutoff 160 \\
        --recent-per-user 2 --batch-size 8 --lr 1e-3 --epochs 1 --eval-every 250 \\
        --valid-limit 300 --patience 1000 --time-budget 80 --decay-to-budget
    """
    from prunerec.recipes import run_train

    summary = run_train(data_dir, model_ref, out, template=template, category=category,
                        max_history=max_history, cutoff=cutoff, **train_kwargs)
    click.echo(f"best validation loss {summary['best_valid_loss']:.4f} at step {summary['best_step']} "
               f"({summary['stop_reason']}); {summary['train_seconds']:.0f}s of training; model in {out}")


# --- evaluate -----------------------------------------------------------------------------
@main.command()
@click.option("--model", "model_ref", required=True,
              help="Checkpoint folder written by train/compress (or any Qwen2 recommender).")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True)
@click.option("--grounding", type=click.Choice(["trie", "l2", "both"]), default="both", show_default=True,
              help="trie: constrained beam search; l2: BIGRec's free generation + L2 matching.")
@click.option("--beams", default=BEAMS, show_default=True, help="Beams = ranked items returned by constrained search.")
@click.option("--batch-size", default=EVAL_BATCH, show_default=True, help="Users per batch.")
@click.option("--workers", default=0, show_default=True,
              help="Processes sharing the users (0: one per usable CPU core; 1 on a GPU).")
@click.option("--limit", type=int, default=None, help="Evaluate a seeded random subset of this many users.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the JSON report here.")
@click.option("--seed", default=0, show_default=True)
@friendly_errors
def evaluate(model_ref, data_dir, split, grounding, beams, batch_size, workers, limit, out, seed):
    """HR@K and NDCG@K (K = 1, 3, 5, 10, 20) with 95% bootstrap intervals, the out-of-catalog
    rate of free generation, and a popularity baseline, in one table."""
    from prunerec.recipes import run_evaluate

    report, table = run_evaluate(model_ref, data_dir, split=split, grounding=grounding, beams=beams,
                                 batch_size=batch_size, workers=workers, limit=limit, out=out, seed=seed)
    click.echo(table)


# --- demo ---------------------------------------------------------------------------------
@main.command()
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
    from prunerec.loadtest.report import parse_users
    from prunerec.recipes import run_demo

    plan = DemoPlan(minutes=minutes, eval_users=eval_users, distill_steps=distill_steps, engines=tuple(engines),
                    load_users=tuple(parse_users(load_users, flag="--load-users")), load_seconds=load_seconds)
    click.echo(run_demo(out, plan, resume=resume, overwrite=overwrite))


for command in (*import_cli.COMMANDS, *compress_cli.COMMANDS, *export_cli.COMMANDS, *serve_cli.COMMANDS,
                *loadtest_cli.COMMANDS):
    main.add_command(command)

if __name__ == "__main__":
    main()
