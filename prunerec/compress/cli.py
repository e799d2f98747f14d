"""`prunerec compress` and `prunerec analyze` (registered by prunerec.cli through COMMANDS)."""
from __future__ import annotations

import json

import click

from prunerec.compress.criteria import LAYER, WIDTH
from prunerec.compress.pipeline import CompressOptions
from prunerec.errors import friendly_errors
from prunerec.options import click_options
from prunerec.train.options import TRAINING_FLAGS, TrainingOptions

__all__ = ["COMMANDS", "compress", "analyze"]


_AMOUNT = "count (e.g. 7) or ratio of the base (e.g. 0.5)"


def _stage_steps(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three step counts like 600,600,2400, got {value!r}") from None


@click.command(context_settings={"max_content_width": 100})
@click.option("--model", "model_ref", required=True,
              help="Base recommender: a checkpoint folder written by `prunerec train` (with catalog.jsonl).")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Prepared data folder the base was trained on (calibration, distillation, validation).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: stage1/ stage2/ stage3/ final/ checkpoints, report.json/.md, plots.")
@click.option("--method", type=click.Choice(list(WIDTH)), default=CompressOptions.method,
              show_default=True, help="Width criterion for heads, hidden dimensions and MLP channels.")
@click.option("--layer-method", type=click.Choice(["auto", *LAYER]), default="auto",
              show_default=True,
              help="Layer criterion. auto: greedy-ppl for prunerec, random for random, shortgpt otherwise.")
@click.option("--heads", default=None, help=f"Query heads kept per layer: {_AMOUNT}. Default: 7/14 of the base.")
@click.option("--kv-heads", default=None,
              help=f"KV heads kept per layer: {_AMOUNT}. Default: same share as the query heads, made to divide them.")
@click.option("--hidden", default=None,
              help=f"Hidden size kept: {_AMOUNT}. Default: heads x head_dim (448/896 for Qwen2-0.5B).")
@click.option("--mlp", default=None,
              help=f"MLP channels kept per layer: {_AMOUNT}. Default: 896/4864 of the base, to a multiple of 32/64.")
@click.option("--layers", default=None, help=f"Decoder layers kept: {_AMOUNT}. Default: 8/24 of the base.")
@click.option("--config", "target_file", type=click.Path(dir_okay=False), default=None,
              help="JSON/YAML file with any of heads, kv_heads, hidden, mlp, layers (flags override it).")
@click.option("--dry-run", is_flag=True, help="Check the inputs, print the target shape and parameter counts, exit.")
@click.option("--no-distill", is_flag=True, help="Ablation: prune only, no distillation.")
@click.option("--one-shot", is_flag=True, help="Ablation: all three stages, then a single distillation.")
@click.option("--calib-samples", default=CompressOptions.calib_samples, show_default=True,
              help="Training prompts used for scoring.")
@click.option("--calib-batch-size", default=CompressOptions.calib_batch_size, show_default=True)
@click.option("--alpha", default=CompressOptions.alpha, show_default=True, help="Depth recursion of head importance.")
@click.option("--mask-mode", type=click.Choice(["zero_o_proj", "scale_query"]), default=CompressOptions.mask_mode,
              show_default=True, help="How a head is removed while scoring.")
@click.option("--stability", is_flag=True,
              help="Also score on each half of the calibration set and report how much the choices overlap "
                   "(doubles scoring time).")
@click.option("--lambda", "lam", default=CompressOptions.lam, show_default=True,
              help="Weight of the ground-truth CE in distillation.")
@click.option("--tau", default=CompressOptions.tau, show_default=True, help="Distillation temperature.")
@click.option("--hidden-distill", default=CompressOptions.hidden_distill, show_default=True,
              help="Weight of a hidden-state term added to the distillation loss: the student's residual "
                   "stream after each layer but the last, against the teacher's after the layer it comes "
                   "from, on the kept hidden dimensions (normalized squared error). 0: logits only, as "
                   "in the paper.")
@click.option("--teacher-cache", type=click.Path(file_okay=False), default=None,
              help="Folder where the teacher's last hidden states at response positions are kept (float32, "
                   "hidden_size x 4 bytes per response token), so that no example goes through the teacher "
                   "twice: not in the three stages, not on --resume, not in other compressions of the same base. "
                   "Saves most of the teacher's share of distillation time on CPUs. Not with --hidden-distill.")
@click_options(TrainingOptions, TRAINING_FLAGS,
               defaults={name: getattr(CompressOptions, name) for name in TRAINING_FLAGS})
@click.option("--stage-steps", default=None, callback=_stage_steps, metavar="I,II,III",
              help="Distillation steps after stage I, II and III, in place of --max-steps. The last stage's "
                   "student is the one that ships; on 2 CPU cores 600,600,19200 --patience 200 with --lr 1e-3 "
                   "--eval-every 200 --valid-limit 300 --teacher-cache DIR (60 min for a 6-layer 8M model on "
                   "Amazon Games; the patience lets the last stage run to its end) kept 101% of NDCG@10 on "
                   "Amazon Games and 90% on Amazon Toys; 600,600,4800 --patience 3 98% and 80%.")
@click.option("--eval-users", default=CompressOptions.eval_users, show_default=True,
              help="Validation users for HR/NDCG after each stage (0: skip the evaluation).")
@click.option("--eval-batch-size", default=CompressOptions.eval_batch_size, show_default=True)
@click.option("--beams", default=CompressOptions.beams, show_default=True,
              help="Beams of the constrained search = ranked items.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last finished stage "
                                             "or distillation checkpoint (same options required).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier compress run's results in --out "
                                                "(without it, or --resume, they are refused).")
@click.option("--stop-after", type=click.Choice(["base", "stage1", "stage2"]), default=None,
              help="Stop once this step is saved; continue later with --resume.")
@friendly_errors
def compress(model_ref, data_dir, out, method, layer_method, heads, kv_heads, hidden, mlp, layers, target_file,
             dry_run, no_distill, one_shot, resume, overwrite, stop_after, **kwargs):
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

    options = CompressOptions(method=method, layer_method=None if layer_method == "auto" else layer_method,
                              heads=heads, kv_heads=kv_heads, hidden=hidden, mlp=mlp, layers=layers,
                              target_file=target_file, distill=not no_distill, one_shot=one_shot, **kwargs)
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
@click.option("--samples", default=64, show_default=True, help="Training prompts (with responses) measured.")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--pooled", is_flag=True, help="Sum |activation| per channel over all tokens first "
                                             "(default: shares per token, averaged).")
@click.option("--seed", default=0, show_default=True)
@friendly_errors
def analyze(model_ref, data_dir, out, samples, batch_size, pooled, seed):
    """The MLP long-tail plot: per layer, the share of |up_proj activation| held by the top
    1/5/10/20/50% channels (why Stage II can keep few channels)."""
    from prunerec.compress.analyze import run_analyze

    result = run_analyze(model_ref, data_dir, out, samples=samples, batch_size=batch_size, per_token=not pooled,
                         seed=seed)
    click.echo(json.dumps(result["mean_share"]) + f"\nplot: {result['png']}\nnumbers: {result['json']}")


COMMANDS = [compress, analyze]
