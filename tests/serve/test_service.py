"""In-process checks of the pieces no HTTP test reaches on CPU alone: the L2 fallback, and the
vLLM search driver (sparse log-probabilities, split trie nodes, step batching across
concurrent requests) run against a stand-in for `vllm.LLM` computed with transformers."""
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

from prunerec.serve import vllm_engine
from prunerec.serve.engines import Deadline, TorchEngine
from prunerec.serve.model import InputError, load_serve_model
from prunerec.serve.service import RecommendService
from tests.serve.conftest import CATALOG_TITLES, USERS, FewerResults


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
    from prunerec.rec.grounding import embed_texts, l2_rank

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


# ----------------------------------------------------------------------------- vLLM driver
class FakeLLM:
    """`llm.generate(prompts, params)` answered by a transformers model, one prompt at a time
    (prefill of the whole sequence: no KV cache, unlike TorchStepper)."""

    def __init__(self, model):
        self.model, self.calls = model, []

    @torch.no_grad()
    def _logprobs(self, seq):
        return torch.log_softmax(self.model(input_ids=torch.tensor([seq])).logits[0, -1].float(), -1)

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(len(prompts))
        outputs = []
        for prompt, param in zip(prompts, params):
            seq = list(prompt["prompt_token_ids"])
            if param.kind == "score":
                values = self._logprobs(seq)
                ids = list(param.ids) + [int(values.argmax())]  # vLLM adds the sampled token
                out = SimpleNamespace(logprobs=[{t: SimpleNamespace(logprob=float(values[t])) for t in ids}])
            else:
                tokens = []
                for _ in range(param.max_new):
                    tokens.append(int(self._logprobs(seq + tokens).argmax()))
                    if tokens[-1] == param.eos:
                        break
                out = SimpleNamespace(token_ids=tokens)
            outputs.append(SimpleNamespace(outputs=[out]))
        return outputs


class FakeVllmEngine(vllm_engine.VllmEngine):
    def __init__(self, sm, model, **kwargs):
        self.fake = FakeLLM(model)
        super().__init__(sm, **kwargs)

    def _load(self):
        self.searches_per_call = []
        return self.fake

    def _generate(self, llm, batches):
        self.searches_per_call.append(len(batches))
        return super()._generate(llm, batches)

    def _request(self, kind, item):
        seq, arg = item
        if kind == "score":
            return {"prompt_token_ids": seq}, SimpleNamespace(kind=kind, ids=list(arg))
        return {"prompt_token_ids": seq}, SimpleNamespace(kind=kind, max_new=arg, eos=self.sm.eos_id)


def test_vllm_driver_equals_torch_stepper(sm, torch_engine, monkeypatch):
    """The search over sparse log-probabilities (trie nodes split into requests of at most 3 ids
    here, 128 in vLLM) ranks like TorchStepper; concurrent searches share generate calls."""
    monkeypatch.setattr(vllm_engine, "MAX_IDS_PER_REQUEST", 3)
    assert len(sm.trie.root) > 3  # the root node is split over several requests
    engine = FakeVllmEngine(sm, torch_engine.torch_model(), gather_seconds=0.05)
    try:
        prompts = [sm.prompt(list(history)) for _, history in USERS]
        expected = [torch_engine.rank(p, 20, Deadline()) for p in prompts]
        with ThreadPoolExecutor(len(prompts)) as pool:
            got = list(pool.map(lambda p: engine.rank(p, 20, Deadline()), prompts))
        for want, have in zip(expected, got):
            assert [i for i, _ in have] == [i for i, _ in want]
            assert [s for _, s in have] == pytest.approx([s for _, s in want], abs=1e-4)
        assert max(engine.searches_per_call) >= 4  # steps of concurrent searches shared generate calls
        want = torch_engine.generate(prompts[0], sm.free_tokens, Deadline())
        assert engine.generate(prompts[0], sm.free_tokens, Deadline()) == want
        assert engine.describe()["model_impl"] == "auto"
    finally:
        engine.close()


def test_vllm_settings_for_odd_heads(odd_dir):
    odd = load_serve_model(odd_dir, "vllm")
    assert vllm_engine.needs_transformers_impl(odd.config)
    assert vllm_engine.checkpoint_dtype(odd.config) == "float32"


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
