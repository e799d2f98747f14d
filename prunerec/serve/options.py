"""The options of `prunerec serve` (and of the serve options `prunerec loadtest` passes on),
declared once, and the rule that some apply to one engine only."""
from __future__ import annotations

from dataclasses import dataclass

from prunerec.errors import PrunerecError
from prunerec.options import BEAMS, flag, option_name


@dataclass(frozen=True)
class ServeOptions:
    """The server's options: the single declaration of `prunerec serve`'s flags (and of the serve
    options `prunerec loadtest` passes on)."""
    engine: str = "vllm"
    api_key: str | None = None
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
    step_delay: float = 0.0
    vllm_core: str = flag("auto", "vLLM only: run vLLM's engine core in this process (inline: fastest on CPUs) or "
                                  "in its own process; auto: inline unless the model needs vLLM's transformers "
                                  "backend. Either way the server exits non-zero if the engine dies.",
                          choices=("auto", "inline", "process"))

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
