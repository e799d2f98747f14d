"""Locust users for bench/soak.py: prunerec's load-test workload and answer check
(prunerec/loadtest/locustfile.py: same environment variables), paced to a fixed request rate,
with every request's end time, latency and outcome appended to a CSV file so that the soak can
compute p50/p99 per minute exactly (locust's own CSV files hold only running totals).

Environment, besides the load test's:
  PRUNEREC_SOAK_RATE_PER_USER  requests per second each user aims at (locust's constant_throughput)
  PRUNEREC_SOAK_LATENCY_FILE   where to append "end_unix_s,latency_ms,ok" lines
"""
from __future__ import annotations

import os
import random
import time

import gevent
from locust import constant_throughput, events

from prunerec.loadtest import locustfile as workload  # bodies, headers, answer check, CSV catch-up

RATE_PER_USER = float(os.environ["PRUNEREC_SOAK_RATE_PER_USER"])
LATENCY_LOG = open(os.environ["PRUNEREC_SOAK_LATENCY_FILE"], "a", buffering=1)  # noqa: SIM115 (whole run)


@events.request.add_listener
def _record(response_time, exception, **_):
    LATENCY_LOG.write(f"{time.time():.3f},{response_time:.1f},{0 if exception else 1}\n")


@events.quitting.add_listener
def _close(**_):
    LATENCY_LOG.close()


class SoakUser(workload.RecommendUser):
    wait_time = constant_throughput(RATE_PER_USER)

    def on_start(self):
        # Users spawned together would otherwise send in waves: each wave is batched and answered
        # together, so every user waits the same time and sends together again, for minutes.
        gevent.sleep(random.uniform(0, 1 / RATE_PER_USER))
