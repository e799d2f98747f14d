"""`prunerec import` (registered by prunerec.cli through COMMANDS)."""
from __future__ import annotations

import click

from prunerec.errors import friendly_errors

__all__ = ["COMMANDS", "import_model"]


@click.command("import", context_settings={"max_content_width": 100})
@click.option("--model", "model_ref", required=True,
              help="Source: a Llama, Mistral (no sliding window) or Qwen2 checkpoint as a local Hugging Face "
                   "folder, a hub id, or a llama.cpp .gguf file (dequantized, stored as fp32).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: a stock Qwen2 checkpoint (written whole, atomically).")
@click.option("--adapter", default=None, type=click.Path(),
              help="A PEFT LoRA adapter folder to merge into the model first (how BIGRec ships its models).")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier import in --out (the whole folder); without it it is refused.")
@friendly_errors
def import_model(model_ref, out, adapter, overwrite):
    """Turn a Llama-family checkpoint into the stock Qwen2 folder every other command takes.

    A Llama is a Qwen2 with zero q/k/v biases and no sliding window, so the config maps field by
    field and the weights keep their values (zero o_proj/MLP biases are dropped). What cannot map
    exactly is refused, naming it: non-zero o_proj or MLP biases, a sliding window, a rope scaling
    type other than default/linear/dynamic/yarn/llama3, another architecture, unexpected weights.

    The folder (config.json, model.safetensors in the source's dtype, tokenizer files,
    generation_config.json, import.json) is checked on write: loaded back, its float32 logits on
    fixed prompts must be within 1e-4 of the source's (greedy tokens compared too), or nothing is
    written and the exit status is 1. A merged adapter is stored in fp32 (the merge is not
    representable in bf16/fp16). For a GGUF, BOS/EOS/pad are taken from the file's metadata.

    Tokenizer: transformers loads the tokenizer of any qwen2 folder with Qwen2's byte-level
    pre-tokenizer, so the folder holds the source's vocabulary under that pre-tokenizer. A
    tokenizer that would lose text there (sentencepiece, e.g. LLaMA-1/2) is refused; prompts it
    splits differently from the source (e.g. "\\n\\n" as one token) are counted in import.json.

    \b
    Example (SmolLM2-135M-Instruct from its GGUF, then BIGRec fine-tuning):
      prunerec import --model SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smollm2
      prunerec train --data data/Games --model runs/smollm2 --out runs/smollm2-games
    With a LoRA adapter:
      prunerec import --model meta-llama/Llama-3.2-1B --adapter bigrec-lora --out runs/bigrec
    """
    from prunerec.model.importing import import_checkpoint, report_table

    report = import_checkpoint(model_ref, out, adapter=adapter, overwrite=overwrite,
                               say=lambda message: click.echo(message, err=True))
    click.echo(report_table(report))


COMMANDS = [import_model]
