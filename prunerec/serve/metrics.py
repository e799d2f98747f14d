"""Prometheus metrics of the service (one registry per app; GET /metrics)."""
from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # no *_created series: they double the output and nobody graphs them

ROUTES = ("/v1/recommend", "/health", "/ready", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc",
          "/openapi.json")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def route_label(path: str) -> str:
    """Known routes by name, everything else as "other" (unbounded label values would leak memory)."""
    return path if path in ROUTES else "other"


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("prunerec_http_requests", "HTTP requests by route, method and status code",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("prunerec_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("prunerec_http_requests_in_flight", "HTTP requests being handled", registry=r)
        self.errors = Counter("prunerec_errors", "Responses with status >= 500 and unhandled exceptions, by kind",
                              ["route", "kind"], registry=r)
        self.unauthorized = Counter("prunerec_unauthorized_requests",
                                    "Requests refused for a missing or wrong bearer token", registry=r)
        self.rejected = Counter("prunerec_rejected_requests",
                                "Requests refused before reaching the engine, by reason", ["reason"], registry=r)
        self.items = Counter("prunerec_recommended_items", "Items returned, by the method that produced them",
                             ["method"], registry=r)
        self.recommend_queue = Gauge("prunerec_recommend_waiting", "Recommend requests waiting for a slot",
                                     registry=r)
        self.engine_seconds = Histogram("prunerec_engine_seconds",
                                        "Engine time of a recommendation (search + fallback)",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.engine_tokens = Counter("prunerec_engine_tokens",
                                     "Tokens the engine generated: every token of each beam the constrained search "
                                     "returned, plus free-generation tokens", registry=r)
        self.ready = Gauge("prunerec_ready", "1 once the engine has loaded and answered a warm-up request",
                           registry=r)
        self.info = Info("prunerec_server", "Engine and model served", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
