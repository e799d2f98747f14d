"""Batched evaluation ranks exactly as one user at a time: the search bookkeeping (hand-made
log-probabilities), the shared-prompt stepper (against the stock-cache one), and the
length-sorted batches spread over worker processes."""
import random

import pytest
import torch

from prunerec.data.catalog import Catalog
from prunerec.evaluate.options import EvalOptions
from prunerec.evaluate.pipeline import Recommender, length_batches, rank_users
from prunerec.model.checkpoint import RecModel
from prunerec.model.encode import response_ids
from prunerec.model.prompt import PromptSettings
from prunerec.search.beam import TorchStepper, constrained_beam_search
from prunerec.search.shared_prompt import SharedPromptStepper, make_stepper, supports
from prunerec.search.trie import TitleTrie
from tests.helpers import TITLES, tiny_model, tiny_tokenizer

PROMPTS = ["### Input: \"Halo\", \"Zelda\"\n", "### Input: \"Portal 2\"\n", "x",
           "### Input: \"Mario Kart 8 - Nintendo Switch\", \"Super Mario Odyssey\", \"Minecraft - PC\"\n"]


class HandMadeStepper:
    """Log-probabilities that depend only on (prompt, tokens written so far): a fixed random
    table, so any difference between batched and single-user search is bookkeeping."""

    def __init__(self, vocab: int):
        self.vocab, self.rows = vocab, []

    def _logprobs(self, key) -> torch.Tensor:
        rng = random.Random(str(key))
        return torch.log_softmax(torch.tensor([rng.gauss(0, 2) for _ in range(self.vocab)]), dim=-1)

    def start(self, prompts):
        self.rows = [(tuple(p), ()) for p in prompts]
        return torch.stack([self._logprobs(r) for r in self.rows])

    def advance(self, parents, tokens):
        self.rows = [(self.rows[p][0], self.rows[p][1] + (t,)) for p, t in zip(parents, tokens)]
        return torch.stack([self._logprobs(r) for r in self.rows])


@pytest.fixture(scope="module")
def setup(one_thread):
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), tokenizer.eos_token_id, seed=1)
    trie = TitleTrie(response_ids(tokenizer, TITLES), tokenizer.eos_token_id)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    return tokenizer, model, trie, prompts


def test_hand_made_batched_equals_one_user_at_a_time(setup):
    tokenizer, _, trie, prompts = setup
    for num_beams in (2, 5, 12):
        batched = constrained_beam_search(HandMadeStepper(len(tokenizer)), prompts, trie, num_beams)
        single = [constrained_beam_search(HandMadeStepper(len(tokenizer)), [p], trie, num_beams)[0]
                  for p in prompts]
        assert batched == single  # titles, order and scores, exactly
        assert all(len(row) == num_beams for row in batched)


def test_shared_prompt_logprobs_equal_the_stock_cache(setup):
    tokenizer, model, trie, prompts = setup
    assert supports(model) and isinstance(make_stepper(model, 0), SharedPromptStepper)
    stock, shared = TorchStepper(model, tokenizer.pad_token_id), SharedPromptStepper(model, tokenizer.pad_token_id)
    torch.testing.assert_close(shared.start(prompts), stock.start(prompts))
    # uneven beams per user, reordered, then a user leaving (rows of a user stay contiguous)
    schedule = [([0, 0, 0, 1, 2, 2, 3], [5, 6, 7, 8, 9, 10, 11]),
                ([1, 0, 2, 3, 4, 6, 5, 6], [12, 13, 14, 15, 16, 17, 18, 19]),
                ([0, 2, 5, 6, 7], [20, 21, 22, 23, 24])]
    for parents, tokens in schedule:
        torch.testing.assert_close(shared.advance(parents, tokens), stock.advance(parents, tokens),
                                   atol=1e-5, rtol=1e-5)


def _same_rankings(a, b, atol=1e-5):
    assert [[i for i, _ in row] for row in a] == [[i for i, _ in row] for row in b]
    assert max(abs(x[1] - y[1]) for ra, rb in zip(a, b) for x, y in zip(ra, rb)) < atol


@pytest.mark.parametrize("seed, num_beams", [(1, 5), (2, 12)])
def test_shared_prompt_search_equals_stock_one_user_at_a_time(seed, num_beams):
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), tokenizer.eos_token_id, seed=seed)
    trie = TitleTrie(response_ids(tokenizer, TITLES), tokenizer.eos_token_id)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    batched = constrained_beam_search(SharedPromptStepper(model, tokenizer.pad_token_id), prompts, trie, num_beams)
    single = [constrained_beam_search(TorchStepper(model, tokenizer.pad_token_id), [p], trie, num_beams)[0]
              for p in prompts]
    _same_rankings(batched, single)


def test_length_batches_cover_every_prompt_once():
    prompts = [[0] * n for n in (5, 1, 9, 3, 3, 7, 2)]
    batches = length_batches(prompts, 3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [[len(prompts[i]) for i in b] for b in batches] == [[1, 2, 3], [3, 5, 7], [9]]


def test_rank_users_in_worker_processes_equals_one_at_a_time(setup):
    tokenizer, model, _, _ = setup
    rec = RecModel(model, tokenizer, Catalog.from_titles(TITLES), PromptSettings(template="compact"), {})
    recommender = Recommender(rec, rec.catalog)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS * 3]
    reference = [recommender.rank_trie([p], 6)[0] for p in prompts]
    ranked = rank_users(recommender, prompts, "trie", EvalOptions(beams=6, batch_size=4, workers=2))
    assert [[t for t, _ in row] for row in ranked] == [[t for t, _ in row] for row in reference]
    assert max(abs(x[1] - y[1]) for a, b in zip(ranked, reference) for x, y in zip(a, b)) < 1e-5
