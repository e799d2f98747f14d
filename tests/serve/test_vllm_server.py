"""`prunerec serve --engine vllm` (vllm-cpu here): the same titles in the same order as
transformers (evaluate's TorchStepper ranking), the same greedy tokens as `generate`, for a
stock tiny model (vLLM's native Qwen2) and for a head-pruned one whose heads x head_dim !=
hidden (served with model_impl="transformers"). One vLLM server per model (cold start ~30 s)."""
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.serve.conftest import USERS, Server, evaluate_rankings

pytest.importorskip("vllm")

VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}


def _vllm_server(folder, log_dir):
    srv = Server(["--model", folder, "--engine", "vllm", "--enforce-eager", "--log-level", "warning"],
                 log_dir / "server.log", env=VLLM_ENV)
    try:
        srv.wait_ready(timeout=400)
    except BaseException:
        srv.stop()
        raise
    return srv


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
        calls_before = srv.get("/ready").json()["engine"]["generate_calls"]
        with ThreadPoolExecutor(len(histories)) as pool:
            bodies = list(pool.map(lambda h: srv.post({"history": h, "k": 10}).json(), histories))
        for (user, _), body in zip(USERS * 2, bodies):
            assert [i["title"] for i in body["items"]] == reference[user][:10]
        engine = srv.get("/ready").json()["engine"]
        single_steps = sum(1 for _ in histories) * 3  # a search takes several steps on its own
        assert engine["generate_calls"] - calls_before < single_steps
        assert 'prunerec_server_info{engine="vllm"' in srv.get("/metrics").text
    finally:
        code = srv.stop()
    assert code == 0, srv.output()[-3000:]


def test_vllm_pruned_odd_heads_equals_torch(odd_dir, data_dir, tmp_path_factory):
    srv = _vllm_server(odd_dir, tmp_path_factory.mktemp("vllm-odd"))
    try:
        assert srv.get("/ready").json()["engine"]["model_impl"] == "transformers"
        _check_same_as_transformers(srv, odd_dir, data_dir)
    finally:
        code = srv.stop()
    assert code == 0, srv.output()[-3000:]
