"""BIGRec prompts: an instruction, the history titles in quotes (oldest first), the target title.

The response is the quoted target title and a newline; the tokenizer's EOS follows it. Prompt
and response are tokenized separately and concatenated, so that the token ids of a response
are the same in training, in the catalog trie and at serving time.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

TEMPLATES = {
    # Alpaca style, as BIGRec / D3 / PruneRec use with pretrained Qwen2 models.
    "alpaca": (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nGiven a list of {category} items the user has interacted with, "
        "write one new {category} item the user will like.\n\n"
        "### Input:\n{history}\n\n### Response:\n"
    ),
    # The same fields without the preamble: a model trained from scratch gains nothing from
    # natural-language instructions, and every prompt token costs compute on a CPU.
    "compact": "### Instruction: recommend the next {category} item.\n### Input: {history}\n### Response:\n",
}


@dataclass(frozen=True)
class PromptSettings:
    template: str = "alpaca"
    category: str = "catalog"
    max_history: int = 10
    cutoff_tokens: int = 512

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict) -> PromptSettings:
        known = {k: row[k] for k in cls.__dataclass_fields__ if k in row}
        settings = cls(**known)
        if settings.template not in TEMPLATES:
            raise ValueError(f"unknown prompt template '{settings.template}' (known: {', '.join(TEMPLATES)})")
        return settings


def quote(title: str) -> str:
    return f'"{title}"'


def format_prompt(history_titles, settings: PromptSettings) -> str:
    recent = list(history_titles)[-settings.max_history:]
    history = ", ".join(quote(t) for t in recent)
    return TEMPLATES[settings.template].format(category=settings.category, history=history)


def format_response(title: str) -> str:
    """The text the model writes for an item; the EOS token id follows it."""
    return quote(title) + "\n"


def token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []


def response_ids(tokenizer, titles: Sequence[str]) -> list[list[int]]:
    """Quoted title, newline, then EOS: the sequence a model writes for each title."""
    return [ids + [tokenizer.eos_token_id] for ids in token_ids(tokenizer, [format_response(t) for t in titles])]


def parse_response(text: str) -> str:
    """Turn a free generation back into a title: strip quotes and anything after the first line."""
    line = text.strip().split("\n", 1)[0].strip()
    if len(line) >= 2 and line.startswith('"') and line.endswith('"'):
        return line[1:-1]
    return line.strip('"')
