"""`prunerec train`: its options checked, the prompt settings chosen, then one fine-tuning run."""
from __future__ import annotations

from dataclasses import replace

from prunerec import distributed
from prunerec.data.catalog import data_category
from prunerec.model.dtypes import precision_warning
from prunerec.model.presets import PRESETS
from prunerec.model.prompt import PromptSettings
from prunerec.options import check_flags
from prunerec.train.trainer import TrainConfig

SCRATCH_LR, CHECKPOINT_LR = 1e-3, TrainConfig.lr


def run_train(data_dir, model_ref, out, *, template=None, category=None, max_history=PromptSettings.max_history,
              cutoff=PromptSettings.cutoff_tokens, resume=False, overwrite=False, say=None, **training) -> dict:
    """`prunerec train`; `training` holds TrainingOptions and FineTuneOptions fields (epochs, lr,
    lora, ...); `say` gets warnings (e.g. bf16 on a device without bf16 arithmetic)."""
    from prunerec.model.checkpoint import check_checkpoint
    from prunerec.train.options import FINETUNE_FLAGS, FineTuneOptions, PromptOptions, TrainingOptions
    from prunerec.train.sft import train_recommender

    tuning = FineTuneOptions(**{name: training.pop(name) for name in FINETUNE_FLAGS if name in training}).check()
    check_flags(PromptOptions(template=template, category=category, max_history=max_history, cutoff=cutoff))
    options = TrainingOptions(**training).check()
    scratch = model_ref in PRESETS
    if not scratch:
        check_checkpoint(model_ref)
    settings = PromptSettings(template=template or ("compact" if scratch else "alpaca"),
                              category=category or data_category(data_dir), max_history=max_history,
                              cutoff_tokens=cutoff)
    config = replace(options.config(default_lr=SCRATCH_LR if scratch else CHECKPOINT_LR), precision=tuning.precision)
    warning = precision_warning(tuning.precision, distributed.device())
    if warning and say is not None:
        say(f"warning: {warning}")
    return train_recommender(data_dir, model_ref, out, settings=settings, config=config,
                             train_limit=options.train_limit, valid_limit=options.valid_limit, resume=resume,
                             overwrite=overwrite, tuning=tuning)
