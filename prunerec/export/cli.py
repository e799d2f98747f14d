"""`prunerec export` (registered by prunerec.cli through COMMANDS)."""
from __future__ import annotations

import click

from prunerec.errors import friendly_errors
from prunerec.export.options import ExportOptions
from prunerec.options import click_options

__all__ = ["COMMANDS", "export"]

EXPORT_FLAGS = ("formats", "dtype", "verify", "users", "data_dir", "beams", "seed", "overwrite")


@click.command(context_settings={"max_content_width": 100})
@click.option("--model", "model_ref", required=True, type=click.Path(exists=True, file_okay=False),
              help="Recommender checkpoint folder (from train or compress, with catalog.jsonl).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click_options(ExportOptions, EXPORT_FLAGS)
@friendly_errors
def export(model_ref, out, **options):
    """Export a recommender for serving: OUT/hf (stock Qwen2 folder + model card; OUT/hf-llama too
    when heads x head_dim != hidden, for vLLM), OUT/onnx (onnxruntime decoder with KV cache) and,
    with --format ...,genai, OUT/genai (onnxruntime-genai's model builder, genai_config.json).

    By default the exports are then checked against PyTorch on real prompts (logits, 32 greedy
    tokens, constrained beam-search recommendations; onnxruntime-genai's greedy search); the table
    goes to stdout and OUT/export-report.json. A failed check exits with status 1 and names the check.

    \b
    Example:
      prunerec export --model runs/pruned/final --out runs/export
      prunerec export --model runs/base --out runs/base-onnx --format onnx --data data/Games
      prunerec export --model runs/pruned/final --out runs/export --format hf,onnx,genai
    """
    from prunerec.export.pipeline import run_export
    from prunerec.export.verify import VerificationFailed

    options = ExportOptions(**options)
    try:
        _, table = run_export(model_ref, out, options, say=lambda m: click.echo(m, err=True))
    except VerificationFailed as failed:
        click.echo(failed.table)
        raise
    click.echo(table)


COMMANDS = [export]
