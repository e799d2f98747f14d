"""API key (from PRUNEREC_API_KEY), concurrency limit (503), request timeout (504) and a graceful
SIGTERM with a request in flight, on the real torch server slowed down by a hidden testing
option (--debug-step-delay: a sleep before each engine step)."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.serve.conftest import Server

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    srv = Server(["--model", model_dir, "--engine", "torch", "--max-concurrency", "1", "--max-queue", "4",
                  "--request-timeout", "2", "--debug-step-delay", "0.05"],
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


def test_busy_and_timeout(server):
    """1 running + 4 waiting: a burst of 6 gets 503 for the sixth; those still waiting or
    running after 2 s get 504; their searches are abandoned and the server serves again."""
    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(lambda _: server.post({"history": [3, 4], "k": 5}, headers=AUTH).status_code,
                                   range(6)))
    assert set(statuses) <= {200, 503, 504} and {200, 503, 504} <= set(statuses), statuses
    t0 = time.monotonic()
    again = server.post({"history": [3, 4], "k": 5}, headers=AUTH)
    assert again.status_code == 200 and time.monotonic() - t0 < 2
    text = server.get("/metrics", headers=AUTH).text
    assert 'prunerec_rejected_requests_total{reason="busy"}' in text
    assert 'prunerec_rejected_requests_total{reason="timeout"}' in text
    assert 'prunerec_errors_total{kind="504",route="/v1/recommend"}' in text


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
