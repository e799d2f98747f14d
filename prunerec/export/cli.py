"""`prunerec export` (registered by prunerec.cli through COMMANDS)."""
from __future__ import annotations

import click

from prunerec.errors import friendly_errors
from prunerec.export.options import DEFAULT_FORMATS, ExportOptions

__all__ = ["COMMANDS", "export"]


@click.command(context_settings={"max_content_width": 100})
@click.option("--model", "model_ref", required=True, type=click.Path(exists=True, file_okay=False),
              help="Recommender checkpoint folder (from train or compress, with catalog.jsonl).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--format", "formats", default=",".join(DEFAULT_FORMATS), show_default=True,
              help="Comma-separated: hf (safetensors + model card), onnx (decoder with KV cache), genai "
                   "(onnxruntime-genai's model builder; fp32 or bf16, head_dim a multiple of 16).")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default=ExportOptions.dtype,
              show_default=True,
              help="Weights dtype (auto: the checkpoint's; bf16: the ONNX graph stays fp32 over bf16-rounded weights).")
@click.option("--no-verify", is_flag=True, help="Skip comparing the exports with PyTorch.")
@click.option("--users", default=ExportOptions.users, show_default=True, help="Prompts used by the verification.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Prepared data folder: verify on its test users (default: prompts of random catalog titles).")
@click.option("--beams", default=ExportOptions.beams, show_default=True,
              help="Beams of the constrained search compared.")
@click.option("--seed", default=ExportOptions.seed, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an earlier export's folders in --out "
                                                "(without it they are refused).")
@friendly_errors
def export(model_ref, out, formats, dtype, no_verify, users, data_dir, beams, seed, overwrite):
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
    from prunerec.export.options import parse_formats
    from prunerec.export.pipeline import run_export
    from prunerec.export.verify import VerificationFailed

    options = ExportOptions(formats=parse_formats(formats), dtype=dtype, verify=not no_verify, users=users,
                            data_dir=data_dir, beams=beams, seed=seed, overwrite=overwrite)
    try:
        _, table = run_export(model_ref, out, options, say=lambda m: click.echo(m, err=True))
    except VerificationFailed as failed:
        click.echo(failed.table)
        raise
    click.echo(table)


COMMANDS = [export]
