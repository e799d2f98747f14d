"""`prunerec evaluate` (registered by prunerec.cli through COMMANDS)."""
from __future__ import annotations

import click

from prunerec.errors import friendly_errors
from prunerec.options import BEAMS, EVAL_BATCH


@click.command(context_settings={"max_content_width": 100, "help_option_names": ["-h", "--help"]})
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
    from prunerec.evaluate.pipeline import run_evaluate

    report, table = run_evaluate(model_ref, data_dir, split=split, grounding=grounding, beams=beams,
                                 batch_size=batch_size, workers=workers, limit=limit, out=out, seed=seed)
    click.echo(table)


COMMANDS = [evaluate]
