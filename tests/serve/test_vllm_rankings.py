"""The vLLM engine (trie inside vLLM, long-lived requests) ranks exactly like `prunerec
evaluate` (Recommender.rank_trie on transformers): the same titles in the same order, scores
within float32 rounding (1e-4, or 5e-6 relative for long titles), over the whole Games catalog
(16,862 titles; trie nodes far wider than 128 children), searches running concurrently.

- 200 Games test users for a stock model (in-process core) and a head-pruned one
  (prunerec.model.surgery; vLLM's transformers backend, core in its own process), with a
  4,096-token BPE tokenizer trained on the titles;
- the real Qwen2 tokenizer (151,936-token vocabulary) on 16 users: its transformers
  reference costs ~0.7 s a user on one busy core (200 users would add minutes).
One vLLM engine per model."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serve import vllm_models

pytest.importorskip("vllm")
pytestmark = pytest.mark.skipif(not vllm_models.available(), reason="needs the shared Games data and tokenizer")

QWEN2_USERS = 16


@pytest.fixture(scope="module")
def games_users():
    from prunerec.data.catalog import load_dataset
    from prunerec.evaluate.pipeline import pick_users

    test = load_dataset(vllm_models.GAMES, splits=("test",))["test"]
    return pick_users(test, 200, seed=0)


@pytest.fixture(scope="module")
def small_tokenizer():
    return vllm_models.games_tokenizer(4096)


def _engine(folder):
    from prunerec.serve.model import load_serve_model
    from prunerec.serve.vllm_engine import VllmEngine

    return VllmEngine(load_serve_model(folder, "vllm"), enforce_eager=True)


def _reference(folder, samples, beams=20):
    """Prompts and `prunerec evaluate`'s constrained rankings [(title, score)] of `samples`."""
    from prunerec.evaluate.pipeline import Recommender
    from prunerec.model.checkpoint import load_rec_model

    rec = load_rec_model(str(folder))
    recommender = Recommender(rec, rec.catalog)
    prompts = recommender.prompts(samples)
    ranked = []
    for start in range(0, len(prompts), 8):
        ranked += recommender.rank_trie(prompts[start:start + 8], beams)
    return prompts, ranked


def _held_when_settled(engine, seconds: float = 10.0) -> dict:
    """What the engine holds once nothing is left to apply (the last aborts reach the core a moment after the
    searches return), or what it still holds after `seconds`."""
    import time

    until = time.monotonic() + seconds
    held = engine.held()
    while any(held.values()) and time.monotonic() < until:
        time.sleep(0.05)
        held = engine.held()
    return held


def _check_same_ranking(engine, prompts, reference):
    from prunerec.serve.worker import Deadline

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: engine.rank(p, 20, Deadline(300)), prompts))
    titles = engine.sm.titles
    for user, (want, have) in enumerate(zip(reference, got)):
        assert [titles[i] for i, _ in have] == [t for t, _ in want], f"user {user}"
        # summed float32 log-probs of ~30-token titles from two attention implementations: 1e-4
        # absolute, or 5e-6 relative for the long, unlikely titles (scores near -100)
        assert [s for _, s in have] == pytest.approx([s for _, s in want], rel=5e-6, abs=1e-4), f"user {user}"
    per = engine.describe()["per_recommendation"]
    # a continuing beam keeps its request: far fewer requests than beam rows over the search
    assert 0 < per["vllm_requests"] < 20 * per["steps"]
    return per


@pytest.mark.parametrize("pruned", [False, True], ids=["stock", "head-pruned"])
def test_games_catalog_200_users(tmp_path_factory, small_tokenizer, games_users, pruned):
    folder = vllm_models.build_model(tmp_path_factory.mktemp("vllm-games") / "model", small_tokenizer, pruned)
    engine = _engine(folder)
    try:
        assert engine.sm.index.widest_node() > 128
        assert engine.model_impl == ("transformers" if pruned else "auto")
        prompts, reference = _reference(folder, games_users)
        _check_same_ranking(engine, prompts, reference)
        assert engine.describe()["searches"] == len(games_users)
        # in-process core: log-probs come through the sink, and nothing is left in it afterwards
        from prunerec.serve.vllm_trie import SINK

        assert engine.describe()["logprobs_from"] == ("vllm logprobs" if pruned else "sink")
        assert len(SINK) == 0
        # 200 searches done: the engine holds nothing of them (no request, job or sink entry) once
        # the engine thread has applied the last search's aborts (it does so while idle)
        assert _held_when_settled(engine) == {"tracked_requests": 0, "waiting_jobs": 0, "sink_requests": 0,
                                              "sink_positions": 0}
    finally:
        engine.close()


def test_qwen2_tokenizer_over_games_titles(tmp_path_factory, games_users):
    tokenizer = vllm_models.qwen2_tokenizer()
    folder = vllm_models.build_model(tmp_path_factory.mktemp("vllm-qwen2") / "model", tokenizer, pruned=False,
                                      vocab_size=vllm_models.QWEN2_VOCAB)
    engine = _engine(folder)
    try:
        assert engine.sm.config.vocab_size == vllm_models.QWEN2_VOCAB and engine.sm.index.widest_node() > 1000
        prompts, reference = _reference(folder, games_users[:QWEN2_USERS])
        _check_same_ranking(engine, prompts, reference)
    finally:
        engine.close()
