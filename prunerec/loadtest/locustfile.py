"""Locust load for `prunerec serve`: each simulated user POSTs /v1/recommend with real histories,
one request after another (no think time: users = requests in flight), and checks every answer
(200, k items, each a real catalog item with its catalog title); a wrong answer is a failure.

`prunerec loadtest` runs this file; it also works on its own:

    PRUNEREC_LOADTEST_DATA=data/Games locust -f prunerec/loadtest/locustfile.py \\
        --headless -u 4 -r 4 -t 60s --host http://127.0.0.1:8000 --csv runs/lt/games

Environment:
  PRUNEREC_LOADTEST_DATA      a prepared data folder: histories of its test split, catalog from items.jsonl
  PRUNEREC_LOADTEST_REQUESTS  instead: a JSONL file of request bodies {"history": [...], "k": 10}
  PRUNEREC_LOADTEST_CATALOG   with REQUESTS: items.jsonl (or a data folder) to check answers against
                              (without it only the status and the number of items are checked)
  PRUNEREC_LOADTEST_K         k of bodies that do not name one (default 10)
  PRUNEREC_LOADTEST_SPLIT     the data folder's split to take histories from (default test)
  PRUNEREC_LOADTEST_SEED      order of the histories (default 0; every user takes the next one)
  PRUNEREC_API_KEY            bearer token, for a server started with --api-key
"""
from __future__ import annotations

import itertools
import os
import sys

import gevent
from locust import FastHttpUser, constant, events, task
from locust.stats import CSV_STATS_INTERVAL_SEC

from prunerec.errors import PrunerecError
from prunerec.loadtest.workload import (
    DEFAULT_K,
    auth_headers,
    bodies_from_data,
    bodies_from_jsonl,
    catalog_titles,
    check_answer,
    shuffled,
)


def _workload_from_env(env) -> tuple[list[dict], tuple[str, ...] | None]:
    k = int(env.get("PRUNEREC_LOADTEST_K", DEFAULT_K))
    if env.get("PRUNEREC_LOADTEST_DATA"):
        return bodies_from_data(env["PRUNEREC_LOADTEST_DATA"], k, env.get("PRUNEREC_LOADTEST_SPLIT", "test"))
    if env.get("PRUNEREC_LOADTEST_REQUESTS"):
        catalog = env.get("PRUNEREC_LOADTEST_CATALOG")
        return bodies_from_jsonl(env["PRUNEREC_LOADTEST_REQUESTS"], k), catalog_titles(catalog) if catalog else None
    raise PrunerecError("set PRUNEREC_LOADTEST_DATA (a prepared data folder) or PRUNEREC_LOADTEST_REQUESTS "
                        "(a JSONL file of request bodies); see the top of this file")


try:
    BODIES, TITLES = _workload_from_env(os.environ)
except (PrunerecError, ValueError) as err:
    sys.exit(f"prunerec locustfile: {err}")
NEXT_BODY = itertools.cycle(shuffled(BODIES, int(os.environ.get("PRUNEREC_LOADTEST_SEED", "0"))))
HEADERS = auth_headers()


@events.test_stop.add_listener
def _let_csv_catch_up(environment, **_):
    """Locust rewrites its --csv files once a second and not again at exit, so the files would
    miss the last second's requests: wait (users have stopped) until they hold the final stats."""
    options = getattr(environment, "parsed_options", None)
    if options is not None and getattr(options, "csv_prefix", None):
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.5)


class RecommendUser(FastHttpUser):
    wait_time = constant(0)
    connection_timeout = 10.0
    network_timeout = 300.0  # the server answers 504 after its own --request-timeout

    @task
    def recommend(self):
        body = next(NEXT_BODY)
        with self.client.post("/v1/recommend", json=body, headers=HEADERS, name="/v1/recommend",
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}" if response.status_code else
                                 f"connection error: {type(response.error).__name__}")
                return
            try:
                answer = response.json()
            except ValueError:
                answer = None
            problem = check_answer(answer, body["k"], TITLES)
            if problem:
                response.failure(problem)
            else:
                response.success()
