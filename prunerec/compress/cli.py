"""`prunerec compress` and `prunerec analyze` (registered by prunerec.cli through COMMANDS)."""
from __future__ import annotations

import json

import click

from prunerec.compress.options import AnalyzeOptions, CompressOptions
from prunerec.errors import friendly_errors
from prunerec.options import check_flags, click_options
from prunerec.train.options import TRAINING_FLAGS

__all__ = ["COMMANDS", "compress", "analyze"]

TARGET_FLAGS = ("method", "layer_method", "heads", "kv_heads", "hidden", "mlp", "layers", "target_file")
RUN_FLAGS = ("distill", "one_shot", "calib_samples", "calib_batch_size", "alpha", "mask_mode", "stability", "lam",
             "tau", "hidden_distill", "teacher_cache", "precision", *TRAINING_FLAGS, "stage_steps", "eval_users",
             "eval_batch_size", "beams")


@click.command(context_settings={"max_content_width": 100})
@click.option("--model", "model_ref", required=True,
              help="Base recommender: a checkpoint folder written by `prunerec train` (with catalog.jsonl).")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Prepared data folder the base was trained on (calibration, distillation, validation).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: stage1/ stage2/ stage3/ final/ checkpoints, report.json/.md, plots.")
@click_options(CompressOptions, TARGET_FLAGS)
@click.option("--dry-run", is_flag=True, help="Check the inputs, print the target shape and parameter counts, exit.")
@click_options(CompressOptions, RUN_FLAGS)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last finished stage "
                                             "or distillation checkpoint (same options required).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier compress run's results in --out "
                                                "(without it, or --resume, they are refused).")
@click.option("--stop-after", type=click.Choice(["base", "stage1", "stage2"]), default=None,
              help="Stop once this step is saved; continue later with --resume.")
@friendly_errors
def compress(model_ref, data_dir, out, dry_run, resume, overwrite, stop_after, **options):
    """Compress a fine-tuned recommender with PruneRec, in one command.

    Stage I prunes attention heads, then the hidden dimension; Stage II MLP channels; Stage III
    whole layers. After each stage the student is distilled from the original model
    (lambda*CE + (1-lambda)*KL on response tokens) and saved as a stock Hugging Face Qwen2
    checkpoint (OUT/stage1..3, OUT/final = stage3) with its tokenizer and catalog.
    OUT/report.md, report.json and PNG plots give per stage the shape, parameter counts,
    validation HR/NDCG@{5,10,20}, distillation loss curves and wall time.

    \b
    Example:
      prunerec compress --model runs/base --data data/Games --out runs/pruned
      prunerec compress ... --heads 0.5 --mlp 256 --layers 4 --method wanda-sp
    """
    from prunerec.compress.pipeline import run_compress

    options = CompressOptions(**options)
    if dry_run:
        from prunerec.compress.pipeline import plan_only

        click.echo(json.dumps(plan_only(model_ref, data_dir, options), indent=2))
        return
    report = run_compress(model_ref, data_dir, out, options, resume=resume, stop_after=stop_after,
                          overwrite=overwrite)
    if stop_after:
        click.echo(f"stopped after {stop_after} as asked; continue with the same command and --resume")
        return
    final = report["final"]
    kept = final.get("quality_kept", {}).get("mean")
    click.echo(f"final model: {final['path']}\nnon-embedding parameters: "
               f"{report['base']['parameters']['non_embedding']:,} -> {final['parameters']['non_embedding']:,} "
               f"({final['non_embedding_removed_share']:.2%} removed)"
               + (f"\nbase quality kept (mean over HR/NDCG@5,10,20 on validation): {kept:.1%}" if kept is not None
                  else "") + f"\nreport: {out}/report.md")


@click.command(context_settings={"max_content_width": 100})
@click.option("--model", "model_ref", required=True, help="Checkpoint folder (e.g. the base recommender).")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False), help="Prepared data folder.")
@click.option("--out", default="long_tail.png", show_default=True, type=click.Path(dir_okay=False),
              help="PNG to write; the numbers go to the same name with .json.")
@click_options(AnalyzeOptions, ("samples", "batch_size", "pooled", "seed"))
@friendly_errors
def analyze(model_ref, data_dir, out, **options):
    """The MLP long-tail plot: per layer, the share of |up_proj activation| held by the top
    1/5/10/20/50% channels (why Stage II can keep few channels)."""
    from prunerec.compress.analyze import run_analyze

    options = AnalyzeOptions(**options)
    check_flags(options)
    result = run_analyze(model_ref, data_dir, out, samples=options.samples, batch_size=options.batch_size,
                         per_token=not options.pooled, seed=options.seed)
    click.echo(json.dumps(result["mean_share"]) + f"\nplot: {result['png']}\nnumbers: {result['json']}")


COMMANDS = [compress, analyze]
