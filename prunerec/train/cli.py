"""`prunerec train` (registered by prunerec.cli through COMMANDS)."""
from __future__ import annotations

import click

from prunerec.errors import friendly_errors
from prunerec.options import click_options
from prunerec.train.options import (
    FINETUNE_FLAGS,
    PROMPT_FLAGS,
    TRAINING_FLAGS,
    FineTuneOptions,
    PromptOptions,
    TrainingOptions,
)

_resume_train = click.option("--resume", is_flag=True,
                             help="Continue the interrupted run in --out (refused if the data, the model or an "
                                  "option that shapes the result changed).")
_overwrite_train = click.option("--overwrite", is_flag=True,
                                help="Replace an earlier run's results in --out (without it they are refused).")


@click.command(context_settings={"max_content_width": 100, "help_option_names": ["-h", "--help"]})
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Prepared data folder.")
@click.option("--model", "model_ref", required=True,
              help="A scratch preset (tiny, small, deep) or a Hugging Face Qwen2 checkpoint: local folder or hub id.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint folder.")
@click_options(PromptOptions, PROMPT_FLAGS)
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
    from prunerec.train.pipeline import run_train

    summary = run_train(data_dir, model_ref, out, template=template, category=category,
                        max_history=max_history, cutoff=cutoff, say=lambda m: click.echo(m, err=True),
                        **train_kwargs)
    click.echo(f"best validation loss {summary['best_valid_loss']:.4f} at step {summary['best_step']} "
               f"({summary['stop_reason']}); {summary['train_seconds']:.0f}s of training; model in {out}")


COMMANDS = [train]
