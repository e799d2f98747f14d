"""The real `prunerec serve --engine torch` process over HTTP: answers equal `prunerec evaluate`'s
constrained ranking, every item is a catalog item, bad input gets its 4xx, 32 concurrent
requests succeed, metrics count it all, SIGTERM exits 0."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serve.conftest import (
    CATALOG_TITLES,
    DUPLICATE_ID,
    DUPLICATE_OF,
    SETTINGS,
    USERS,
    Server,
    evaluate_rankings,
)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    srv = Server(["--model", model_dir, "--engine", "torch", "--max-concurrency", "4", "--max-body-bytes", "4096"],
                 tmp_path_factory.mktemp("torch-server") / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def reference(model_dir, data_dir):
    return evaluate_rankings(model_dir, data_dir)


def _titles(response):
    assert response.status_code == 200, response.text
    return [item["title"] for item in response.json()["items"]]


def test_health_ready_docs(server):
    assert server.get("/health").json()["status"] == "ok"
    ready = server.get("/ready").json()
    assert ready["ready"] and ready["engine"]["engine"] == "torch" and ready["model"]["catalog_titles"] == 32
    assert ready["warmup_ms"] > 0
    spec = server.get("/openapi.json").json()
    assert "/v1/recommend" in spec["paths"] and "history" in str(spec["paths"]["/v1/recommend"]["post"])
    assert server.get("/docs").status_code == 200


def test_answers_equal_evaluate_ranking(server, reference):
    for user, history in USERS:
        response = server.post({"history": list(history), "k": 20})
        body = response.json()
        assert _titles(response) == reference[user], f"user {user}"
        assert body["methods"] == {"trie": 20, "l2": 0} and body["fallback"] is None and body["num_beams"] == 20
        assert body["history_used"] == list(history[-SETTINGS.max_history:])
        assert body["history_truncated"] == (len(history) > SETTINGS.max_history)
        scores = [item["score"] for item in body["items"]]
        assert scores == sorted(scores, reverse=True)
        for item in body["items"]:  # real catalog items, the first id of their title, the model's raw text
            assert CATALOG_TITLES[item["id"]] == item["title"] and CATALOG_TITLES.index(item["title"]) == item["id"]
            assert item["generation"] == f'"{item["title"]}"\n' and item["method"] == "trie"
        assert set(body["timing"]) >= {"queue_ms", "search_ms", "total_ms"}
    # a smaller k is the head of the same ranking; titles in the history work like their ids
    user, history = USERS[3]
    assert _titles(server.post({"history": [CATALOG_TITLES[i] for i in history], "k": 3})) == reference[user][:3]


def test_duplicate_titles_and_long_history(server, reference):
    by_id = server.post({"history": [DUPLICATE_ID, 12], "k": 5}).json()
    by_title = server.post({"history": ["Zelda", CATALOG_TITLES[12]], "k": 5}).json()
    assert by_title["history_used"] == [DUPLICATE_OF, 12]  # a title maps to its first id
    assert [i["title"] for i in by_id["items"]] == reference[1][:5] == [i["title"] for i in by_title["items"]]
    many = server.post({"history": list(range(25)), "k": 4}).json()
    assert many["history_truncated"] and many["history_used"] == list(range(20, 25))
    assert [i["title"] for i in many["items"]] == [i["title"] for i in server.post({"history": list(range(20, 25)),
                                                                                    "k": 4}).json()["items"]]


def test_free_generation_on_request(server):
    body = server.post({"history": [1, 2], "k": 2, "free_generation": True}).json()
    free = body["free_generation"]
    assert free["token_ids"] and isinstance(free["text"], str) and body["methods"]["trie"] == 2


@pytest.mark.parametrize("body, status, needle", [
    ({"history": [0, 999, "No Such Game", 3]}, 422, '999, "No Such Game"'),
    ({"history": []}, 422, "history is empty"),
    ({"history": [1], "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ({"history": [1], "k": 51}, 422, "k: Input should be less than or equal to 50"),
    ({"history": [1], "k": 33}, 422, "32 distinct titles"),
    ({"history": [1], "k": "5"}, 422, "k: Input should be a valid integer"),
    ({"history": [1, True]}, 422, "history[1]: must be an item id"),
    ({"history": [1], "x": 2}, 422, "x: Extra inputs are not permitted"),
    ({"k": 3}, 422, "history: Field required"),
    ([1, 2], 422, "JSON object"),
    ('{"history": [1, 2', 400, "malformed JSON"),
    ("", 400, "body is missing"),
    ('{"history": [1], "k": 3, "pad": "' + "a" * 5000 + '"}', 413, "over 4096 bytes"),
])
def test_bad_input(server, body, status, needle):
    response = server.post(body)
    assert response.status_code == status, response.text
    assert needle in response.json()["detail"]
    if status == 422 and "999" in needle:
        assert response.json()["unknown"] == [999, "No Such Game"]


def test_chunked_oversized_body_and_unknown_route(server):
    chunks = (b'{"history": [1], "pad": "' + b"a" * 1000 for _ in range(6))  # no Content-Length: chunked
    assert server.post(chunks).status_code == 413
    assert server.get("/v2/nothing").status_code == 404


def test_32_concurrent_requests(server, reference):
    histories = [list(h) for _, h in USERS] * 5 + [[1], [2]]
    expected = {tuple(h): _titles(server.post({"history": h, "k": 10}))
                for h in map(list, {tuple(h) for h in histories})}
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda h: server.post({"history": h, "k": 10}), histories))
    assert len(responses) == 32
    for history, response in zip(histories, responses):
        assert _titles(response) == expected[tuple(history)]


def test_metrics(server):
    server.post({"history": [1], "k": 2})
    server.post({"history": []})
    server.get("/v2/nothing")
    text = server.get("/metrics").text
    assert 'prunerec_http_requests_total{method="POST",route="/v1/recommend",status="200"}' in text
    assert 'prunerec_http_requests_total{method="POST",route="/v1/recommend",status="422"}' in text
    assert 'prunerec_http_requests_total{method="GET",route="other",status="404"}' in text
    assert 'prunerec_http_request_duration_seconds_bucket{le="0.5",route="/v1/recommend"}' in text
    assert "prunerec_http_requests_in_flight 1.0" in text  # this very request
    assert 'prunerec_recommended_items_total{method="trie"}' in text and "prunerec_ready 1.0" in text
    assert "prunerec_unauthorized_requests_total 0.0" in text
    assert float(text.split("\nprunerec_engine_tokens_total ")[1].split()[0]) > 0  # beam + free tokens


def test_sigterm_exits_cleanly(server):
    assert server.stop() == 0
    assert "engine closed" in server.output() and "Traceback" not in server.output()
