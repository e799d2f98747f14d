"""In-process checks of the service: the L2 fallback, input errors, token counting, and the
arrival order of the batching (torch) engine."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from prunerec.serve import vllm_settings
from prunerec.serve.engines import Deadline, TorchEngine
from prunerec.serve.model import InputError, load_serve_model
from prunerec.serve.service import RecommendService
from tests.serve.conftest import CATALOG_TITLES, FewerResults


@pytest.fixture(scope="module")
def sm(model_dir):
    return load_serve_model(model_dir, "torch")


@pytest.fixture(scope="module")
def torch_engine(sm):
    engine = TorchEngine(sm)
    yield engine
    engine.close()


def test_l2_fallback_fills_the_list(sm, torch_engine):
    full = RecommendService(sm, torch_engine).recommend([1, 2], 8)
    short = RecommendService(sm, FewerResults(torch_engine, 3)).recommend([1, 2], 8)
    items = short["items"]
    assert [i["title"] for i in items[:3]] == [i["title"] for i in full["items"][:3]]
    assert [i["method"] for i in items] == ["trie"] * 3 + ["l2"] * 5 and short["methods"] == {"trie": 3, "l2": 5}
    assert short["fallback"] == "l2" and short["free_generation"]["token_ids"]
    assert len({i["id"] for i in items}) == 8 and all(CATALOG_TITLES[i["id"]] == i["title"] for i in items)
    l2_scores = [i["score"] for i in items[3:]]
    assert l2_scores == sorted(l2_scores, reverse=True) and all(s <= 0 for s in l2_scores)
    assert all(i["generation"] == short["free_generation"]["text"] for i in items[3:])
    # the L2 order is BIGRec's: nearest titles to the free generation's embedding
    from prunerec.search.grounding import embed_texts, l2_rank

    model = torch_engine.torch_model()
    query = embed_texts(model, sm.tokenizer, [short["free_generation"]["title"] or " "])
    order = [sm.titles[i] for i in l2_rank(query, embed_texts(model, sm.tokenizer, sm.titles), len(sm.titles))[0]]
    assert [i["title"] for i in items[3:]] == [t for t in order if t not in {i["title"] for i in items[:3]}][:5]


def test_no_fallback_without_weights(sm, torch_engine):
    from prunerec.serve.engines import L2Grounder

    service = RecommendService(sm, FewerResults(torch_engine, 2), grounder=L2Grounder(sm, None))
    body = service.recommend([1], 5)
    assert len(body["items"]) == 2 and body["fallback"].startswith("unavailable")


def test_input_errors(sm, torch_engine):
    service = RecommendService(sm, torch_engine)
    with pytest.raises(InputError, match="unknown"):
        service.recommend([1, "nope"], 3)
    with pytest.raises(InputError, match="empty"):
        service.recommend([], 3)
    with pytest.raises(InputError, match="between 1 and 50"):
        service.recommend([1], 0)


def test_engine_tokens_are_counted(sm, torch_engine):
    counted = []
    service = RecommendService(sm, torch_engine, beams=4, count_tokens=counted.append)
    body = service.recommend([1, 2], 3, free_generation=True)
    beam_tokens = sum(len(sm.responses[sm.titles.index(i["title"])]) for i in body["items"])
    assert counted[1] == len(body["free_generation"]["token_ids"]) and counted[0] >= beam_tokens > 0


# ----------------------------------------------------------------------------- arrival order
def test_batching_engine_serves_jobs_in_arrival_order(sm):
    """Jobs queued behind a busy worker start in the order they arrived: a later job that could
    share a batch with an earlier one never overtakes a job of another kind in between."""
    engine = TorchEngine(sm, max_batch=8, step_delay=0.05, processes=1)
    prompt = sm.prompt([1, 2])
    finished: list[int] = []
    lock = threading.Lock()

    def job(n: int):
        if n % 3 == 1:
            engine.generate(prompt, 3, Deadline(60))
        else:
            engine.rank(prompt, 4, Deadline(60))
        with lock:
            finished.append(n)

    try:
        with ThreadPoolExecutor(10) as pool:
            first = pool.submit(job, 0)  # keeps the worker busy while the others queue
            time.sleep(0.05)
            rest = []
            for n in range(1, 10):
                rest.append(pool.submit(job, n))
                time.sleep(0.01)
            for future in [first, *rest]:
                future.result()
    finally:
        engine.close()
    # jobs of different kinds never share a batch: each such pair must finish in arrival order
    assert finished[0] == 0, finished
    kinds = {n: n % 3 == 1 for n in range(10)}
    late = [(a, b) for a in range(10) for b in range(a + 1, 10)
            if kinds[a] != kinds[b] and finished.index(a) > finished.index(b)]
    assert not late, f"served out of arrival order: {late} ({finished})"


def test_vllm_settings_for_odd_heads(odd_dir):
    odd = load_serve_model(odd_dir, "vllm")
    assert vllm_settings.needs_transformers_impl(odd.config)


@pytest.mark.parametrize("damage, message", [
    ({"catalog.jsonl": '{"id": 0, "title": "A"}\nnot json\n'}, "the model's catalog is broken"),
    ({"prunerec.json": "{not json"}, "prunerec.json: "),
    ({"prunerec.json": '{"prompt": {"template": "nope"}}'}, "unknown prompt template 'nope'"),
])
def test_broken_model_files_are_reported_by_both_loaders(model_dir, tmp_path, damage, message):
    import shutil

    from prunerec.errors import PrunerecError
    from prunerec.model.checkpoint import load_rec_model

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    for name, text in damage.items():
        (broken / name).write_text(text)
    with pytest.raises(PrunerecError, match=message):
        load_serve_model(broken, "torch")
    with pytest.raises(PrunerecError, match=message):
        load_rec_model(str(broken))
