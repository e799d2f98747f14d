"""The FastAPI application of `prunerec serve`.

Routes: POST /v1/recommend, GET /health, GET /ready, GET /metrics, and FastAPI's /docs and
/openapi.json. A pure ASGI middleware in front of every route checks the bearer token (all
routes but /health, when an API key is set), bounds request bodies, and records the metrics.
The engine loads in a background thread after the server starts listening; /ready turns 200
once it has answered one real warm-up request.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer

from prunerec.errors import PrunerecError
from prunerec.serve.engine_factory import engine_from_options
from prunerec.serve.engines import Cancelled, Deadline, Engine
from prunerec.serve.metrics import Metrics, route_label
from prunerec.serve.model import InputError, ServeModel
from prunerec.serve.options import ServeOptions
from prunerec.serve.schema import (
    ERRORS,
    ErrorBody,
    RecommendRequest,
    RecommendResponse,
    error_response,
    parse_request,
    validation_message,
)
from prunerec.serve.service import RecommendService
from prunerec.serve.worker import EngineDead

log = logging.getLogger("prunerec.serve")

BODY_METHODS = {"POST", "PUT", "PATCH"}
FATAL_GRACE_SECONDS = 1.0   # between an engine's death and the server's exit


# ----------------------------------------------------------------------------- runtime
class Runtime:
    """The engine, its loading, admission control and the metrics of one server."""

    def __init__(self, sm: ServeModel, options: ServeOptions, on_fatal: Callable[[str], None] | None = None,
                 engine_factory: Callable[[ServeModel, ServeOptions], Engine] | None = None):
        self.sm, self.options, self.on_fatal = sm, options, on_fatal
        self.engine_factory = engine_factory or engine_from_options
        self.metrics = Metrics()
        self.engine: Engine | None = None
        self.service: RecommendService | None = None
        self.ready = False
        self.failed: str | None = None
        self.closing = False
        self.warmup_ms: float | None = None
        self.load_seconds: float | None = None
        self.waiting = 0
        self.semaphore: asyncio.Semaphore | None = None
        self.executor = ThreadPoolExecutor(max_workers=options.max_concurrency + 4, thread_name_prefix="recommend")
        self._loader: threading.Thread | None = None
        self.metrics.ready.set(0)
        self.metrics.info.info({"engine": options.engine, "model": str(sm.folder)})

    def start(self) -> None:
        self.semaphore = asyncio.Semaphore(self.options.max_concurrency)
        self._loader = threading.Thread(target=self._load, name="engine-loader", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            engine = self.engine_factory(self.sm, self.options)
            engine.on_dead = self._engine_died
            self.engine = engine
            if self.closing:
                return
            self.service = RecommendService(self.sm, engine, beams=self.options.beams,
                                            count_tokens=self.metrics.engine_tokens.inc)
            self.load_seconds = time.perf_counter() - t0
            t1 = time.perf_counter()
            self.service.warm_up()
            self.warmup_ms = round((time.perf_counter() - t1) * 1000, 1)
        except BaseException as err:
            if self.closing:
                return
            self.failed = str(err) if isinstance(err, PrunerecError) else f"{type(err).__name__}: {err}"
            log.error("the %s engine failed to start: %s", self.options.engine, self.failed,
                      exc_info=None if isinstance(err, PrunerecError) else err)
            if self.on_fatal:
                self.on_fatal(f"failed to start: {self.failed}")
            return
        if self.failed:  # died during the warm-up
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: %s engine loaded in %.1f s, warm-up request %.0f ms", self.options.engine,
                 self.load_seconds, self.warmup_ms)

    def _engine_died(self, reason: str) -> None:
        """The engine failed after it started: every request gets 503 from now on and the
        server exits non-zero (a supervisor restarts it)."""
        self.ready = False
        self.failed = f"died: {reason}"
        self.metrics.ready.set(0)
        if self.on_fatal and not self.closing:
            # a moment of 503s (/ready included) before the exit, so that waiting clients and
            # health checks see why
            timer = threading.Timer(FATAL_GRACE_SECONDS, self.on_fatal, args=(self.failed,))
            timer.daemon = True
            timer.start()

    def close(self) -> None:
        self.closing = True
        self.ready = False
        self.metrics.ready.set(0)
        if self._loader is not None and self._loader.is_alive():
            self._loader.join(timeout=120)
        if self.engine is not None:
            self.engine.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("engine closed")


# ----------------------------------------------------------------------------- middleware
_error = error_response


class GuardMiddleware:
    """Bearer token, body size limit and metrics around every HTTP request."""

    def __init__(self, app, runtime: Runtime):
        self.app, self.rt = app, runtime
        key = runtime.options.api_key
        self.key = key.encode() if key else None

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        m, limit = self.rt.metrics, self.rt.options.max_body_bytes
        path, method = scope["path"], scope["method"]
        route = route_label(path)
        status = [500]
        started = time.perf_counter()

        async def record_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        m.in_flight.inc()
        try:
            if self.key is not None and path != "/health" and not self._authorized(scope):
                m.unauthorized.inc()
                response = _error(401, "missing or wrong bearer token: send 'Authorization: Bearer <api key>'",
                                  headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, record_send)
            if method in BODY_METHODS:
                declared = dict(scope.get("headers", ())).get(b"content-length")
                if declared is not None and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
                    m.rejected.labels("too_large").inc()
                    return await _error(413, f"request body over {limit} bytes")(scope, receive, record_send)
                chunks, size, more = [], 0, True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        status[0] = 499  # the client went away before sending its body
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        m.rejected.labels("too_large").inc()
                        return await _error(413, f"request body over {limit} bytes")(scope, receive, record_send)
                    chunks.append(chunk)
                    more = message.get("more_body", False)
                body, replayed = b"".join(chunks), False

                async def replay():
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                return await self.app(scope, replay, record_send)
            return await self.app(scope, receive, record_send)
        except Exception:
            m.errors.labels(route, "exception").inc()
            raise
        finally:
            m.in_flight.dec()
            m.requests.labels(route, method, str(status[0])).inc()
            m.latency.labels(route).observe(time.perf_counter() - started)
            if status[0] >= 500:
                m.errors.labels(route, str(status[0])).inc()


# ----------------------------------------------------------------------------- app
def _engine_failed(runtime: Runtime) -> JSONResponse:
    return _error(503, f"the {runtime.options.engine} engine {runtime.failed or 'died'}; the server is restarting",
                  headers={"Retry-After": "5"})


def _lifespan(runtime: Runtime):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, runtime.close)
    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        status, message = validation_message(exc.errors())
        return _error(status, message)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError):
        return _error(exc.status, str(exc), **exc.extra)


def _add_probes(app: FastAPI, runtime: Runtime, security: list) -> None:
    options = runtime.options

    @app.get("/health", summary="Liveness: 200 whenever the process is up")
    async def health():
        return {"status": "ok", "ready": runtime.ready, "engine": options.engine}

    @app.get("/ready", summary="Readiness: 200 once the engine answered a warm-up request, else 503",
             dependencies=security, responses={503: {"model": ErrorBody}})
    async def ready():
        if not runtime.ready:
            state = f"engine failed: {runtime.failed}" if runtime.failed else "loading the engine"
            return JSONResponse({"ready": False, "detail": state}, status_code=503, headers={"Retry-After": "5"})
        return {"ready": True, "engine": runtime.engine.describe(), "model": runtime.sm.describe(),
                "beams": options.beams, "load_seconds": round(runtime.load_seconds or 0.0, 2),
                "warmup_ms": runtime.warmup_ms}

    @app.get("/metrics", summary="Prometheus metrics (text format)", dependencies=security)
    async def metrics():
        return Response(runtime.metrics.render(), media_type=runtime.metrics.content_type)


async def _wait_for_slot(runtime: Runtime, deadline: Deadline) -> JSONResponse | None:
    """Admission: a slot of --max-concurrency within --queue-timeout, or a 503 (None: admitted)."""
    options, m, sem = runtime.options, runtime.metrics, runtime.semaphore
    if sem.locked() and runtime.waiting >= options.max_queue:
        m.rejected.labels("busy").inc()
        return _error(503, f"server busy: {options.max_concurrency} requests running and {runtime.waiting} "
                           f"waiting; retry shortly", headers={"Retry-After": "1"})
    runtime.waiting += 1
    m.recommend_queue.inc()
    try:
        await asyncio.wait_for(sem.acquire(), timeout=min(options.queue_wait, deadline.remaining()))
    except (TimeoutError, asyncio.TimeoutError):
        m.rejected.labels("queue_timeout").inc()
        return _error(503, f"server busy: no free slot within {options.queue_wait:g} s (--queue-timeout); "
                           f"retry shortly", headers={"Retry-After": "1"})
    finally:
        runtime.waiting -= 1
        m.recommend_queue.dec()
    return None


async def _search(runtime: Runtime, body, deadline: Deadline) -> dict | JSONResponse:
    """The admitted request's search in the executor, within its deadline; frees its slot."""
    m = runtime.metrics
    try:
        work = asyncio.get_running_loop().run_in_executor(
            runtime.executor, partial(runtime.service.recommend, body.history, body.k, body.free_generation,
                                      deadline))
        try:
            return await asyncio.wait_for(work, timeout=deadline.remaining())
        except (TimeoutError, asyncio.TimeoutError, Cancelled):
            deadline.cancel()
            m.rejected.labels("timeout").inc()
            return _error(504, f"not answered within --request-timeout {runtime.options.request_timeout:g} s")
        except EngineDead:
            m.rejected.labels("engine_failed").inc()
            return _engine_failed(runtime)
    finally:
        runtime.semaphore.release()


def _record_answer(runtime: Runtime, result: dict, arrived: float, queued: float) -> None:
    result["timing"]["queue_ms"] = round(queued * 1000, 3)
    result["timing"]["total_ms"] = round((time.perf_counter() - arrived) * 1000, 3)
    m = runtime.metrics
    m.engine_seconds.observe((result["timing"]["search_ms"] + result["timing"]["fallback_ms"]) / 1000)
    for method, count in result["methods"].items():
        if count:
            m.items.labels(method).inc(count)


def _add_recommend(app: FastAPI, runtime: Runtime, security: list) -> None:
    @app.post("/v1/recommend", response_model=RecommendResponse, dependencies=security, responses=ERRORS,
              summary="Rank k catalog items for a history",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": RecommendRequest.model_json_schema()}}}})
    async def recommend(request: Request):
        arrived = time.perf_counter()
        body = parse_request(await request.body())
        if not runtime.ready:
            runtime.metrics.rejected.labels("not_ready").inc()
            if runtime.failed:
                return _engine_failed(runtime)
            return _error(503, "the engine is warming up; retry shortly (GET /ready)", headers={"Retry-After": "5"})
        runtime.service.check_k(body.k)
        deadline = Deadline(runtime.options.request_timeout)
        refused = await _wait_for_slot(runtime, deadline)
        if refused is not None:
            return refused
        queued = time.perf_counter() - arrived
        result = await _search(runtime, body, deadline)
        if isinstance(result, JSONResponse):
            return result
        _record_answer(runtime, result, arrived, queued)
        return result


def create_app(sm: ServeModel, options: ServeOptions, on_fatal: Callable[[str], None] | None = None,
               engine_factory=None) -> FastAPI:
    runtime = Runtime(sm, options, on_fatal, engine_factory)
    app = FastAPI(title="prunerec serve", version="1",
                  description="Next-item recommendations from a BIGRec-style Qwen2 recommender: every answer is a "
                              "ranked list of real catalog items (trie-constrained beam search; L2 grounding of a "
                              "free generation as fallback). See docs/serve.md.",
                  lifespan=_lifespan(runtime))
    app.state.runtime = runtime
    app.add_middleware(GuardMiddleware, runtime=runtime)
    security = [Depends(HTTPBearer(auto_error=False, description="The server's --api-key"))] if options.api_key else []
    _add_error_handlers(app)
    _add_probes(app, runtime, security)
    _add_recommend(app, runtime, security)
    return app
