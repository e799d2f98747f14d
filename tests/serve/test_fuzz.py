"""Fuzzing the real `prunerec serve --engine torch` process: 2,000 seeded malformed or hostile
requests (tests/serve/hostile.py) and a set of broken HTTP framings on raw sockets. None may
get a 5xx or leave a traceback in the server's log; every 200 must be a right answer; and
afterwards the server still ranks a valid request exactly as before."""
from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.serve.conftest import CATALOG_TITLES, Server
from tests.serve.hostile import HostileRequests

SEED = 20151
CASES = 2000
BODY_LIMIT = 65536  # the server's default --max-body-bytes
PROBES = [{"history": [0, 1, 2], "k": 10}, {"history": ["Zelda", 12], "k": 5}]
CLEAN_4XX = {400, 413, 422}


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    srv = Server(["--model", model_dir, "--engine", "torch", "--beams", "10"],
                 tmp_path_factory.mktemp("fuzz-server") / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _rankings(server) -> list[list[tuple[int, str]]]:
    out = []
    for body in PROBES:
        response = server.post(body)
        assert response.status_code == 200, response.text
        out.append([(item["id"], item["title"]) for item in response.json()["items"]])
    return out


def _check_answer(case, response) -> None:
    where = f"{case.describe()} -> {response.status_code} {response.text[:300]}"
    assert response.status_code < 500, where
    if response.status_code == 200:
        body = response.json()
        assert len(body["items"]) == body["k"], where
        assert all(CATALOG_TITLES[item["id"]] == item["title"] for item in body["items"]), where
    else:
        assert response.status_code in CLEAN_4XX, where
        if response.headers.get("content-type", "").startswith("text/plain"):  # refused by the HTTP layer
            assert response.status_code == 400 and response.text == "Invalid HTTP request received.", where
            return
        assert response.headers.get("content-type") == "application/json", where
        assert isinstance(response.json()["detail"], str) and response.json()["detail"], where


def _send(session: requests.Session, url: str, case) -> requests.Response:
    data = case.body
    if case.chunked:
        chunks = [case.body[i:i + 997] for i in range(0, len(case.body), 997)]
        data = iter(chunks)
    return session.post(url, data=data, headers=case.headers, timeout=60)


def test_hostile_bodies_get_clean_4xx_and_change_nothing(server):
    before = _rankings(server)
    cases = HostileRequests(SEED, CATALOG_TITLES, BODY_LIMIT).cases(CASES)
    assert len(cases) >= 1000 and len({case.kind for case in cases}) == 9
    statuses: dict[int, int] = {}
    session = requests.Session()
    started = time.monotonic()
    for case in cases:
        response = _send(session, server.url + "/v1/recommend", case)
        _check_answer(case, response)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    seconds = time.monotonic() - started
    # the generator reaches every outcome: refused as JSON, as a request, and answered
    assert statuses.get(400, 0) > 100 and statuses.get(422, 0) > 100 and statuses.get(200, 0) > 10, statuses
    assert _rankings(server) == before
    metrics = server.get("/metrics").text
    errors = [line for line in metrics.splitlines() if line.startswith("prunerec_errors_total{")]
    assert not [line for line in errors if "/v1/recommend" in line], errors
    log = server.output()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-4000:]
    print(f"{len(cases)} hostile requests in {seconds:.1f} s: {dict(sorted(statuses.items()))}")


RAW = [  # broken HTTP framing and headers, sent as bytes
    b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999999\r\n\r\n{}",
    b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n{}",
    b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
    b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"history\": [1]",  # short body
    b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n",
    b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n",
    b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n",
    b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
    b"POST /v1/recommend HTTP/9.9\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/rec\x00ommend HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\xff\xfe\x00garbage\r\n\r\n",
    b"POST /v1/recommend?k=" + b"%" * 3000 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n"
    b"{\"history\": [1], \"k\": 3}",
]


def _raw_status(port: int, payload: bytes) -> int | None:
    """The status of the server's answer, or None when it closed the connection (or kept
    waiting for the rest of a body) without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        data = b""
        try:
            sock.sendall(payload)
            while b"\r\n" not in data and (chunk := sock.recv(65536)):
                data += chunk
        except OSError:  # the server may close before reading everything, or wait for more
            pass
    if not data.startswith(b"HTTP/1."):
        return None
    return int(data.split(b" ", 2)[1])


def test_broken_http_framing_gets_no_5xx(server):
    before = _rankings(server)
    statuses = [_raw_status(server.port, payload) for payload in RAW]
    assert all(status is None or status < 500 for status in statuses), list(zip(statuses, RAW))
    assert statuses[-1] == 200  # the control: a well-formed request on a raw socket
    assert statuses.count(400) >= 5, statuses
    assert _rankings(server) == before
    log = server.output()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-4000:]
