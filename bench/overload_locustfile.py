"""Locust users for bench/overload.py: prunerec's load-test workload and answer check
(prunerec/loadtest/locustfile.py: same environment variables), with every answer sorted into
one of three request names, so that locust's CSV files count them apart:

  ACCEPTED       every answer but a 503: a 200 whose body passes the answer check succeeds;
                 anything else (another status, a wrong answer, a connection error) fails
  OVERLOAD       503 with a Retry-After header: the server's overload answer (a success)
  OVERLOAD_BARE  503 without Retry-After (a failure)

After an overload answer a user waits Retry-After seconds (at most 10), as a well-behaved
client does, unless PRUNEREC_OVERLOAD_IGNORE_RETRY_AFTER=1 (users then retry at once).
"""
from __future__ import annotations

import os

import gevent
from locust import FastHttpUser, constant, task
from overload import ACCEPTED, OVERLOAD, OVERLOAD_BARE  # locust puts this file's folder on sys.path

from prunerec.loadtest import locustfile as workload  # bodies, headers, CSV catch-up at the end
from prunerec.loadtest.workload import check_answer

MAX_BACKOFF_S = 10.0
IGNORE_RETRY_AFTER = os.environ.get("PRUNEREC_OVERLOAD_IGNORE_RETRY_AFTER") == "1"


def retry_after_seconds(value: str | None) -> float | None:
    try:
        return min(MAX_BACKOFF_S, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None


class OverloadUser(FastHttpUser):
    wait_time = constant(0)
    connection_timeout = 10.0
    network_timeout = 300.0  # the server answers 504 after its own --request-timeout

    @task
    def recommend(self):
        body = next(workload.NEXT_BODY)
        backoff = None
        with self.client.post("/v1/recommend", json=body, headers=workload.HEADERS, name=ACCEPTED,
                              catch_response=True) as response:
            if response.status_code == 503:
                backoff = retry_after_seconds(response.headers.get("Retry-After"))
                response.request_meta["name"] = OVERLOAD if backoff is not None else OVERLOAD_BARE
                if backoff is None:
                    response.failure("503 without a valid Retry-After header")
                else:
                    response.success()
            elif response.status_code != 200:
                response.failure(f"HTTP {response.status_code}" if response.status_code else
                                 f"connection error: {type(response.error).__name__}")
            else:
                try:
                    answer = response.json()
                except ValueError:
                    answer = None
                problem = check_answer(answer, body["k"], workload.TITLES)
                if problem:
                    response.failure(problem)
                else:
                    response.success()
        if backoff and not IGNORE_RETRY_AFTER:
            gevent.sleep(backoff)
