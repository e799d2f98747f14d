"""BIGRec's L2 grounding: generate freely, embed the generated title, rank titles by L2 distance."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from prunerec.model.batching import pad_rows
from prunerec.model.prompt import parse_response
from prunerec.model.vocab import padding_ids


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Final-norm hidden state of each text's last token (the text alone, no prompt)."""
    rows = []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[start:start + batch_size]), add_special_tokens=False)["input_ids"]
        ids = [x or [tokenizer.eos_token_id] for x in ids]
        batch, mask = pad_rows(ids, tokenizer.pad_token_id, left=False)
        hidden = model.model(input_ids=batch, attention_mask=mask).last_hidden_state
        last = mask.sum(1) - 1
        rows.append(hidden[torch.arange(len(ids)), last].float())
    return torch.cat(rows)


def l2_nearest(query: torch.Tensor, catalog_embeddings: torch.Tensor, k: int) -> tuple[list[list[int]],
                                                                                      list[list[float]]]:
    """Indices of the k nearest catalog embeddings to each query, nearest first, and their distances."""
    distances = torch.cdist(query.float(), catalog_embeddings.float())
    nearest = distances.topk(min(k, catalog_embeddings.shape[0]), largest=False)
    return nearest.indices.tolist(), nearest.values.tolist()


def l2_rank(query: torch.Tensor, catalog_embeddings: torch.Tensor, k: int) -> list[list[int]]:
    """Indices of the k nearest catalog embeddings to each query, nearest first."""
    return l2_nearest(query, catalog_embeddings, k)[0]


def free_token_budget(longest_response_tokens: int) -> int:
    """New tokens a free generation may write: the longest catalog response plus a little room,
    so a title a few tokens longer than any real one still ends (and can be grounded)."""
    return longest_response_tokens + 4


@torch.no_grad()
def free_generate(model, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                  num_beams: int = 4) -> list[str]:
    """Unconstrained beam search (best beam; never the embedding rows past the tokenizer),
    parsed back to a title string."""
    pad = tokenizer.pad_token_id
    ids, mask = pad_rows(prompts, pad, left=True)
    width = ids.shape[1]
    out = model.generate(ids, attention_mask=mask, num_beams=num_beams, do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                         suppress_tokens=padding_ids(tokenizer, model.config.vocab_size) or None)
    return [parse_response(tokenizer.decode(seq[width:], skip_special_tokens=True)) for seq in out]
