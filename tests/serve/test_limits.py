"""API key (from PRUNEREC_API_KEY), no key on a public address only on purpose
(--allow-unauthenticated), overload answered with 503 + Retry-After and never with a failed
answer to an admitted request, request timeout (504) and a graceful SIGTERM with a request in
flight, on the real torch server slowed down by a hidden testing option (--debug-step-delay: a
sleep before each engine step)."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from click.testing import CliRunner

from prunerec.serve.cli import serve
from tests.serve.conftest import CATALOG_TITLES, Server

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    srv = Server(["--model", model_dir, "--engine", "torch", "--max-concurrency", "1", "--max-queue", "4",
                  "--request-timeout", "4", "--queue-timeout", "1", "--debug-step-delay", "0.05"],
                 tmp_path_factory.mktemp("limits-server") / "server.log", env={"PRUNEREC_API_KEY": KEY})
    try:
        srv.wait_ready(headers=AUTH)
        yield srv
    finally:
        srv.stop()


def test_api_key(server):
    assert server.get("/health").status_code == 200  # the only open route
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": KEY}):
        for path in ("/ready", "/metrics", "/docs", "/openapi.json"):
            response = server.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["WWW-Authenticate"] == "Bearer"
        response = server.post({"history": [1], "k": 2}, headers=headers)
        assert response.status_code == 401 and "bearer token" in response.json()["detail"]
    assert server.get("/ready", headers=AUTH).status_code == 200
    assert server.get("/openapi.json", headers=AUTH).json()["components"]["securitySchemes"]
    ok = server.post({"history": [1, 2], "k": 3}, headers=AUTH)
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3
    metrics = server.get("/metrics", headers=AUTH).text
    assert "prunerec_unauthorized_requests_total 20.0" in metrics
    assert 'prunerec_http_requests_total{method="POST",route="/v1/recommend",status="401"} 4.0' in metrics


def test_overload_gets_503_with_retry_after_and_admitted_requests_succeed(server):
    """1 running + 4 waiting (each request takes about 0.6 s): of a burst of 10, five get 503 at
    once (queue full), waiting ones not admitted within --queue-timeout 1 s get 503 too; every
    503 carries Retry-After and every request admitted is answered right (no 504: an admitted
    request has at least 4 - 1 s left)."""
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: server.post({"history": [3, 4], "k": 5}, headers=AUTH), range(10)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503} and statuses.count(503) >= 6, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1" and "server busy" in response.json()["detail"]
        else:
            items = response.json()["items"]
            assert len(items) == 5 and all(CATALOG_TITLES[i["id"]] == i["title"] for i in items)
    text = server.get("/metrics", headers=AUTH).text
    assert 'prunerec_rejected_requests_total{reason="busy"}' in text
    assert 'prunerec_rejected_requests_total{reason="queue_timeout"}' in text
    assert 'kind="504"' not in text


def test_request_timeout_504(model_dir, start_server):
    """An engine slower than --request-timeout: 504, and the slot is free for the next request."""
    srv = start_server(["--model", model_dir, "--engine", "torch", "--max-concurrency", "1", "--request-timeout",
                        "0.4", "--queue-timeout", "0.1", "--debug-step-delay", "0.05"])
    srv.wait_ready()
    slow = srv.post({"history": [3, 4], "k": 5})
    assert slow.status_code == 504 and "--request-timeout 0.4" in slow.json()["detail"]
    assert srv.post({"history": [3, 4], "k": 5}).status_code == 504  # admitted: no 503 for want of a slot
    assert 'prunerec_rejected_requests_total{reason="timeout"} 2.0' in srv.get("/metrics").text


def test_sigterm_finishes_the_request_in_flight(server):
    result = {}

    def call():
        result["response"] = server.post({"history": [5], "k": 4}, headers=AUTH)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)  # the request is in the engine (about 0.6 s with the step delay)
    assert server.stop() == 0
    thread.join()
    assert result["response"].status_code == 200 and len(result["response"].json()["items"]) == 4
    with pytest.raises(requests.ConnectionError):
        server.get("/health")


def _serve(args, env) -> str:
    result = CliRunner().invoke(serve, [str(a) for a in args], env=env)
    assert result.exit_code == 1, result.output
    return result.output


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.7", "example.org"])
def test_a_public_address_needs_a_key_or_the_explicit_flag(tmp_path, host):
    no_env = {"PRUNEREC_API_KEY": None, "PRUNEREC_ALLOW_UNAUTHENTICATED": None}
    refused = _serve(["--model", tmp_path, "--host", host], no_env)
    assert f"refusing to serve on --host {host} without an API key" in refused
    assert "--allow-unauthenticated" in refused and "PRUNEREC_ALLOW_UNAUTHENTICATED=1" in refused
    # with a key, with the flag, or with its variable, the check passes (the empty folder then fails to load)
    for args, env in ((["--allow-unauthenticated"], no_env),
                      ([], {**no_env, "PRUNEREC_ALLOW_UNAUTHENTICATED": "1"}),
                      ([], {**no_env, "PRUNEREC_API_KEY": KEY}),
                      (["--api-key", KEY], no_env)):
        output = _serve(["--model", tmp_path, "--host", host, *args], env)
        assert "is not a Hugging Face checkpoint" in output, (args, env, output)
    both = _serve(["--model", tmp_path, "--host", host, "--allow-unauthenticated"], {"PRUNEREC_API_KEY": KEY})
    assert "contradicts --api-key" in both


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_key(tmp_path, host):
    output = _serve(["--model", tmp_path, "--host", host], {"PRUNEREC_API_KEY": None})
    assert "is not a Hugging Face checkpoint" in output


def test_queue_timeout_must_leave_time_to_answer(tmp_path):
    output = _serve(["--model", tmp_path, "--request-timeout", "5", "--queue-timeout", "5"], {})
    assert "--queue-timeout 5 must be less than --request-timeout 5" in output


def test_engine_options_of_another_engine_are_refused(tmp_path):
    assert "--processes applies to --engine torch only" in _serve(["--model", tmp_path, "--engine", "vllm",
                                                                    "--processes", "2"], {})
    assert "apply to --engine vllm only" in _serve(["--model", tmp_path, "--engine", "torch", "--enforce-eager"], {})
