"""`prunerec serve --engine vllm` (vllm-cpu here): the same titles in the same order as
transformers (evaluate's TorchStepper ranking), the same greedy tokens as `generate`, for a
stock tiny model (vLLM's native Qwen2) and for a head-pruned one whose heads x head_dim !=
hidden (served with model_impl="transformers", engine core in its own process, which the last
test kills). One vLLM server per model (cold start ~30 s)."""
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import torch

from tests.serve.conftest import USERS, evaluate_rankings, ready_server

pytest.importorskip("vllm")

VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}


def _vllm_server(folder, log_dir):
    return ready_server(["--model", folder, "--engine", "vllm", "--enforce-eager", "--log-level", "warning"],
                        log_dir / "server.log", env=VLLM_ENV)


def _hf_greedy(folder, prompt, max_new_tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                             eos_token_id=model.config.eos_token_id, pad_token_id=model.config.eos_token_id)
    tokens = out[0, len(prompt):].tolist()
    return tokens[:tokens.index(model.config.eos_token_id)] if model.config.eos_token_id in tokens else tokens


def _check_same_as_transformers(srv, folder, data_dir):
    from prunerec.serve.model import load_serve_model

    reference = evaluate_rankings(folder, data_dir)
    for user, history in USERS:
        body = srv.post({"history": list(history), "k": 20, "free_generation": True}).json()
        assert body["engine"] == "vllm" and body["methods"]["trie"] == 20
        assert [i["title"] for i in body["items"]] == reference[user], f"user {user}"
    sm = load_serve_model(folder, "torch")
    for _, history in USERS[:3]:
        free = srv.post({"history": list(history), "k": 1, "free_generation": True}).json()["free_generation"]
        prompt = sm.prompt(list(history))
        assert free["token_ids"] == _hf_greedy(folder, prompt, sm.free_tokens)
    return reference


def test_vllm_native_qwen2_equals_torch(model_dir, data_dir, tmp_path_factory):
    srv = _vllm_server(model_dir, tmp_path_factory.mktemp("vllm-native"))
    try:
        ready = srv.get("/ready").json()
        assert ready["engine"]["model_impl"] == "auto" and ready["engine"]["dtype"] == "float32"
        reference = _check_same_as_transformers(srv, model_dir, data_dir)
        # concurrent requests: their beam steps share llm.generate calls, answers unchanged
        histories = [list(h) for _, h in USERS] * 2
        before = srv.get("/ready").json()["engine"]
        with ThreadPoolExecutor(len(histories)) as pool:
            bodies = list(pool.map(lambda h: srv.post({"history": h, "k": 10}).json(), histories))
        for (user, _), body in zip(USERS * 2, bodies):
            assert [i["title"] for i in body["items"]] == reference[user][:10]
        engine = srv.get("/ready").json()["engine"]
        # the searches' steps share engine steps: fewer engine steps than the steps they waited for
        search_steps = engine["totals"]["steps"] - before["totals"]["steps"]
        assert 0 < engine["engine_steps"] - before["engine_steps"] < search_steps
        assert engine["core"] == "in-process" and engine["per_recommendation"]["vllm_requests"] > 0
        assert 'prunerec_server_info{engine="vllm"' in srv.get("/metrics").text
    finally:
        code = srv.stop()
    assert code == 0, srv.output()[-3000:]


def _engine_core(srv) -> psutil.Process:
    children = psutil.Process(srv.proc.pid).children(recursive=True)
    cores = [c for c in children if "EngineCore" in c.name()]
    assert len(cores) == 1, [c.name() for c in children]
    return cores[0]


def test_vllm_pruned_odd_heads_equals_torch_then_core_dies(odd_dir, data_dir, tmp_path_factory):
    """The transformers backend runs vLLM's core in its own process; killing that process (as the
    OOM killer would) turns the server unready, answers 503 and ends it with a non-zero exit."""
    srv = _vllm_server(odd_dir, tmp_path_factory.mktemp("vllm-odd"))
    try:
        engine = srv.get("/ready").json()["engine"]
        assert engine["model_impl"] == "transformers" and engine["core"] == "process"
        _check_same_as_transformers(srv, odd_dir, data_dir)
        _engine_core(srv).kill()
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda h: srv.post({"history": h, "k": 5}, timeout=30),
                                    [list(h) for _, h in USERS[:3]]))
        assert [a.status_code for a in answers] == [503] * 3, [a.text for a in answers]
        assert "died" in answers[0].json()["detail"]
        ready = srv.get("/ready")
        assert ready.status_code == 503 and "died" in ready.json()["detail"]
        srv.proc.wait(timeout=60)
    finally:
        code = srv.stop()
    assert code != 0, srv.output()[-3000:]
    assert "engine died" in srv.output()
