"""`prunerec serve` (registered by prunerec.cli through COMMANDS; also runs as
`python -m prunerec.serve.cli`)."""
from __future__ import annotations

import logging
import signal
import sys

import click

from prunerec.errors import PrunerecError, friendly_errors
from prunerec.options import click_options
from prunerec.serve.options import ServeOptions, check_exposure, is_loopback

__all__ = ["COMMANDS", "check_exposure", "is_loopback", "serve"]

SERVE_FLAGS = ("engine", "host", "port", "api_key", "allow_unauthenticated", "max_concurrency", "max_queue",
               "max_body_bytes", "request_timeout", "queue_timeout", "beams", "tensor_parallel_size", "dtype",
               "enforce_eager", "vllm_core", "max_batch", "processes", "log_level", "step_delay")


@click.command(context_settings={"max_content_width": 100, "help_option_names": ["-h", "--help"]})
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Recommender folder (train/compress output with catalog.jsonl), or an export folder OUT "
                   "(OUT/hf for vllm/torch, OUT/onnx for onnx).")
@click_options(ServeOptions, SERVE_FLAGS)
@friendly_errors
def serve(model_dir, **options):
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

    options = ServeOptions(**options).check()
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("prunerec.serve")
    if not is_loopback(options.host) and not options.api_key:
        log.warning("serving %s without an API key (--allow-unauthenticated): anyone who reaches this port can "
                    "use the model", options.host)

    keep_freed_memory()  # also when started as `python -m prunerec.serve.cli`
    sm = load_serve_model(model_dir, options.engine)
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(sm, options, on_fatal=on_fatal)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level=options.log_level, lifespan="on",
                            timeout_graceful_shutdown=max(5, int(options.request_timeout) + 5), server_header=False)
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
        raise PrunerecError(f"the {options.engine} engine {fatal[0]}")
    if not server.started:
        sys.exit(1)


COMMANDS = [serve]

if __name__ == "__main__":
    serve()
