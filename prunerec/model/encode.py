"""Token ids of prompts, responses and training examples; with prunerec.model.prompt (the token
ids of a response, which model-folder validation needs too), the only place that tokenizes."""
from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from prunerec.data.catalog import Catalog, Sample
from prunerec.model.prompt import PromptSettings, format_prompt, response_ids, token_ids


@dataclass(frozen=True)
class Example:
    input_ids: Sequence[int]  # stored as a 4-byte array: a list costs ~9x the memory per token
    n_response: int  # the last n_response tokens are the response (loss is taken only there)

    def __post_init__(self):
        if not isinstance(self.input_ids, array):
            object.__setattr__(self, "input_ids", array("i", self.input_ids))


def prompt_ids(tokenizer, histories: Sequence[Sequence[str]], settings: PromptSettings) -> list[list[int]]:
    """Prompts cut from the left to leave room for a response within the cutoff."""
    prompts = token_ids(tokenizer, [format_prompt(h, settings) for h in histories])
    return [p[-settings.cutoff_tokens:] for p in prompts]


def history_titles(sample: Sample, catalog: Catalog) -> list[str]:
    return [catalog.title(i) for i in sample.history]


def build_examples(tokenizer, samples: Sequence[Sample], catalog: Catalog, settings: PromptSettings,
                   chunk: int = 4096) -> list[Example]:
    """One Example per sample, tokenized `chunk` samples at a time (the tokenizer's own output
    for all of a large training set at once would take gigabytes)."""
    examples = []
    for start in range(0, len(samples), chunk):
        part = samples[start:start + chunk]
        prompts = prompt_ids(tokenizer, [history_titles(s, catalog) for s in part], settings)
        responses = response_ids(tokenizer, [catalog.title(s.target) for s in part])
        for prompt, response in zip(prompts, responses):
            ids = (prompt + response)[-settings.cutoff_tokens:]
            examples.append(Example(ids, min(len(response), len(ids))))
    return examples
