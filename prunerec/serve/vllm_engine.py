"""The vLLM engine: prunerec.search.beam's constrained search with the trie inside vLLM and
requests that live across beam steps.

- The trie runs in the engine: prunerec.serve.vllm_trie's logits processor turns each
  constrained request's row into log_softmax(row) at its trie node's children (-inf elsewhere),
  so its greedy token is the best allowed child. The search gets those children's exact
  full-softmax log-probabilities from the processor through vllm_trie.SINK when the core runs
  in this process, else as vLLM logprobs (`logprobs_mode="processed_logits"`, `logprobs = 2 x
  beams`).
- A beam is a position in a vLLM request. When the search extends a beam by the token its
  request already decoded there, the new beam keeps the request (and its KV cache); any other
  child starts a new request (prompt + beam + child); requests no beam needs are aborted.
  `LiveStepper` does this behind the `Stepper` interface, so the ranking is beam.py's own
  (Hugging Face beam semantics, length_penalty 0: the same titles, order and scores as
  `prunerec evaluate`).
- One engine thread drives `LLMEngine` step by step (`add_request` / `step` / `abort_request`).
  Each search runs in its HTTP request's thread and hands the engine a `StepJob` (requests to
  add and abort, outputs it waits for); before each step the engine waits briefly until every
  active search has handed in, so concurrent searches share engine steps. (One pool of all
  searches in lockstep was tried: faster on tiny models, but on a Qwen2-0.5B shape every search
  then waited for the slowest one's prefills; docs/results.md, session 12.)

The engine core runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0; faster on CPUs, and adds and
aborts take effect at the next step) unless `core="process"`, or `"auto"` with a model that needs
vLLM's transformers backend (see `vllm_settings.core_runs_in_process`); then vLLM's core keeps its own process
and its requests may decode ahead of the search (buffered, see vllm_live).
Either way an exception from the core (a killed core process, out of memory) kills the engine:
see prunerec.serve.worker.
"""
from __future__ import annotations

import functools
import itertools
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from prunerec.errors import PrunerecError
from prunerec.model.dtypes import vllm_dtype
from prunerec.model.vocab import generation_ids
from prunerec.options import BEAMS
from prunerec.search.beam import constrained_beam_search
from prunerec.serve.model import ServeModel
from prunerec.serve.service import MAX_K
from prunerec.serve.vllm_live import LiveRequest, LiveStepper, SearchStats, StepJob
from prunerec.serve.vllm_settings import core_runs_in_process, needs_transformers_impl
from prunerec.serve.worker import Cancelled, EngineDead, WorkerEngine, cut_at_eos

log = logging.getLogger("prunerec.serve")

PROCESSOR = "prunerec.serve.vllm_trie:TrieLogitsProcessor"
GATHER_SECONDS = 0.02   # longest wait for the other active searches before a step
_request_ids = itertools.count()  # process-wide: engines in one process share vllm_trie.SINK


@functools.cache
def _vllm_names():
    """vLLM's SamplingParams and DELTA output kind, and vllm_trie.trie_args: imported once (a
    search builds tens of thousands of params)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from prunerec.serve.vllm_trie import trie_args

    return SamplingParams, RequestOutputKind.DELTA, trie_args


class VllmEngine(WorkerEngine):
    name = "vllm"

    def __init__(self, sm: ServeModel, tensor_parallel_size: int = 1, dtype: str = "auto",
                 enforce_eager: bool = False, step_delay: float = 0.0, beams: int = BEAMS,
                 gather_seconds: float = GATHER_SECONDS, core: str = "auto"):
        super().__init__(sm, step_delay)
        self.tensor_parallel_size, self.enforce_eager = int(tensor_parallel_size), bool(enforce_eager)
        self.dtype = vllm_dtype(dtype)  # float32 for auto: the torch reference's dtype
        self.model_impl = "transformers" if needs_transformers_impl(sm.config) else "auto"
        self.gather_seconds = float(gather_seconds)
        self.multiprocess = core_runs_in_process(core, self.model_impl)
        self.max_logprobs = 2 * max(int(beams), MAX_K)  # a search asks 2 x num_beams, num_beams = max(k, beams)
        self.max_model_len = int(min(getattr(sm.config, "max_position_embeddings", 1 << 20),
                                     sm.settings.cutoff_tokens + sm.trie.max_len + 8))
        self._tmp = tempfile.TemporaryDirectory(prefix="prunerec-trie-")
        self.trie_path = str(sm.index.arrays.save(Path(self._tmp.name) / "trie.npz"))
        self._active = 0                         # searches and generations in progress
        self._waiting: list[StepJob] = []        # jobs whose outputs are not all there yet
        self._live: dict[str, LiveRequest] = {}  # unfinished vLLM requests by id
        self._aborts: list[str] = []
        self._eos_id = int(sm.eos_id)
        self.totals = SearchStats()
        self.steps = 0
        self.searches = 0
        self.gather_timeouts = 0   # steps that went ahead without every active search
        self._llm = None
        self._load_error: BaseException | None = None
        self.start_worker()
        self._loaded_wait()

    # ------------------------------------------------------------------ public interface
    def rank(self, prompt, num_beams, deadline):
        stepper = LiveStepper(self, deadline, self.sm.index.arrays, self.trie_path, int(num_beams))
        with self._session():
            try:
                ranked = constrained_beam_search(stepper, [list(prompt)], self.sm.trie, num_beams)
            finally:
                self.release(stepper.requests())
        with self._cv:
            self.searches += 1
            self.totals.add(stepper.stats)
        return ranked[0]

    def generate(self, prompt, max_new_tokens, deadline):
        request = LiveRequest(self.new_id(), list(prompt), self._generate_params(int(max_new_tokens)))
        job = StepJob(deadline, adds=[request], needs=[(request, None)])
        with self._session():
            try:
                self.submit(job)
            finally:
                self.release([request])
        return cut_at_eos(request.tokens(), self.sm.eos_id)

    def held(self) -> dict:
        """What the engine holds between requests: unfinished vLLM requests, jobs waiting for
        outputs, and the sink's requests and positions (all 0 when it is idle; growth under a
        steady load would be a leak)."""
        from prunerec.serve.vllm_trie import SINK

        with self._cv:
            return {"tracked_requests": len(self._live), "waiting_jobs": len(self._waiting),
                    "sink_requests": len(SINK), "sink_positions": SINK.positions()}

    def describe(self):
        held = self.held()
        with self._cv:
            per = self.totals.per(self.searches)
            return {"held": held, "engine": self.name, "dtype": self.dtype, "model_impl": self.model_impl,
                    "tensor_parallel_size": self.tensor_parallel_size, "max_model_len": self.max_model_len,
                    "core": "process" if self.multiprocess else "in-process", "engine_steps": self.steps,
                    "logprobs_from": "vllm logprobs" if self.multiprocess else "sink",
                    "gather_timeouts": self.gather_timeouts,
                    "searches": self.searches, "totals": self.totals.as_dict(), "per_recommendation": per}

    def close(self):
        super().close()
        with self._cv:
            waiting, self._waiting = self._waiting, []
        self._fail(waiting, Cancelled("the engine is shutting down"))
        self._tmp.cleanup()

    # ------------------------------------------------------------------ search side
    def new_id(self) -> str:
        return f"r{next(_request_ids)}"

    def trie_params(self, node: int, max_tokens: int, logprobs: int, request_id: str):
        """A core in this process hands the children's log-probabilities over through
        vllm_trie.SINK (no vLLM logprobs); a core process returns them as vLLM logprobs.
        skip_clone: each params object belongs to one request, and vLLM's deep copy of it was
        40% of add_request's time."""
        sampling_params, delta, trie_args = _vllm_names()
        sink = None if self.multiprocess else request_id
        return sampling_params(max_tokens=max_tokens, temperature=0.0, detokenize=False,
                               logprobs=logprobs if sink is None else None,
                               stop_token_ids=[self._eos_id], output_kind=delta,
                               extra_args=trie_args(self.trie_path, node, sink), skip_clone=True)

    def _generate_params(self, max_tokens: int):
        sampling_params, delta, _ = _vllm_names()
        return sampling_params(max_tokens=max_tokens, temperature=0.0, detokenize=False,
                               stop_token_ids=[self._eos_id], output_kind=delta,
                               allowed_token_ids=generation_ids(self.sm.tokenizer, self.sm.config.vocab_size),
                               skip_clone=True)

    class _Session:
        def __init__(self, engine):
            self.engine = engine

        def __enter__(self):
            with self.engine._cv:
                self.engine._refuse_if_stopped()
                self.engine._active += 1

        def __exit__(self, *exc):
            with self.engine._cv:
                self.engine._active -= 1
                self.engine._cv.notify_all()

    def _session(self):
        return VllmEngine._Session(self)

    def submit(self, job: StepJob):
        """Hand a step to the engine thread and wait for the outputs it needs."""
        if self.step_delay:
            time.sleep(self.step_delay)
        job.deadline.check()
        return self._submit(job)

    def release(self, requests) -> None:
        """Abort the unfinished ones of `requests` at the next step (nothing waits for them)."""
        with self._cv:
            self._aborts.extend(r.id for r in requests if not r.finished)
            self._cv.notify_all()

    # ------------------------------------------------------------------ engine thread
    def _loaded_wait(self):
        with self._cv:
            while self._llm is None and self._load_error is None and self.dead is None:
                self._cv.wait(timeout=0.5)
        if self._load_error is not None:
            self.close()
            raise PrunerecError(f"vLLM could not load {self.sm.folder}: {self._load_error}") from self._load_error

    def _check_cpu_head_size(self):
        """vLLM's CPU attention kernels support some head sizes only; an unsupported one would
        load and then kill the engine at the first request."""
        try:
            from vllm.platforms import current_platform
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            if not current_platform.is_cpu():
                return
            supported = CPUAttentionBackend.get_supported_head_sizes()
        except (ImportError, AttributeError):
            return
        head_dim = self.sm.describe()["shape"]["head_dim"]
        if head_dim not in supported:
            raise PrunerecError(f"vLLM on CPU supports head_dim {', '.join(map(str, supported))}; this model's is "
                                f"{head_dim}: serve it with --engine torch or --engine onnx")

    def _load(self):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if self.multiprocess else "0"
        self._check_cpu_head_size()
        import vllm.envs
        from vllm import LLM

        # an in-process core caches vLLM's environment variables; a later engine reads them afresh
        getattr(vllm.envs, "disable_envs_cache", lambda: None)()

        kwargs = {"model": str(self.sm.folder), "tokenizer": str(self.sm.folder), "dtype": self.dtype,
                  "tensor_parallel_size": self.tensor_parallel_size, "enable_prefix_caching": True, "block_size": 32,
                  "max_logprobs": self.max_logprobs, "logprobs_mode": "processed_logits",
                  "logits_processors": [PROCESSOR], "max_model_len": self.max_model_len, "seed": 0,
                  "enforce_eager": self.enforce_eager}
        if self.model_impl != "auto":
            kwargs["model_impl"] = self.model_impl
        log.info("starting vLLM on %s (%s)", self.sm.folder, ", ".join(
            f"{k}={v}" for k, v in kwargs.items() if k not in ("model", "tokenizer")))
        return LLM(**kwargs)

    def _work(self, slot: int):
        try:
            llm = self._load()
        except BaseException as err:  # noqa: BLE001 - reported by the constructor
            with self._cv:
                self._load_error = err
                self._cv.notify_all()
            return
        with self._cv:
            self._llm = llm
            self._cv.notify_all()
        if self.multiprocess:
            threading.Thread(target=self._watch_core, args=(llm.llm_engine,), name="vllm-core-watch",
                             daemon=True).start()
        try:
            self._drive(llm.llm_engine)
        finally:
            self._shutdown(llm)

    def _gather(self) -> tuple[list[StepJob], list[str]] | None:
        """New jobs and aborts, after waiting (briefly) for every active search to hand in."""
        with self._cv:
            until = time.monotonic() + self.gather_seconds
            while not self._closed:
                handed_in = len(self._jobs) + len(self._waiting)
                idle = not self._jobs and not self._waiting
                if handed_in >= self._active and not idle:
                    break
                if idle and self._aborts:  # the last search's releases: free them now, not at the next request
                    break
                left = until - time.monotonic()
                if not idle and left <= 0:
                    self.gather_timeouts += 1
                    break
                self._cv.wait(timeout=max(left, 0.0) if not idle else 0.5)
            if self._closed:
                return None
            jobs, aborts = list(self._jobs), self._aborts
            self._jobs.clear()
            self._aborts = []
        return jobs, aborts

    def _drive(self, core):
        while True:
            taken = self._gather()
            if taken is None:
                return
            jobs, aborts = taken
            self._apply_aborts(core, aborts)
            for job in jobs:
                if job.deadline.expired():
                    job.future.set_exception(Cancelled("request deadline passed"))
                    self._apply_aborts(core, [r.id for r in job.adds])
                    continue
                with self._cv:
                    self._waiting.append(job)  # before the core sees it: a dying core fails it too
                try:
                    for request in job.adds:
                        core.add_request(request.id, request.prompt_input(), request.params)
                        self._live[request.id] = request
                except ValueError as err:  # vLLM refused this request (validation): fail it alone
                    with self._cv:
                        self._waiting.remove(job)
                    self._apply_aborts(core, [r.id for r in job.adds])
                    job.future.set_exception(PrunerecError(f"vLLM refused a request: {err}"))
            self._resolve()
            if self._waiting and core.has_unfinished_requests():
                outputs = core.step()
                self.steps += 1
                for output in outputs:
                    self._record(output)
                self._resolve()

    def _forget(self, request_id: str) -> LiveRequest | None:
        """Stop tracking a request (finished, aborted or unknown); the sink keeps nothing of it."""
        from prunerec.serve.vllm_trie import SINK

        SINK.drop(request_id)
        return self._live.pop(request_id, None)

    def _apply_aborts(self, core, ids):
        ids = [i for i in ids if self._forget(i) is not None]
        if ids:
            core.abort_request(ids)

    def _record(self, output):
        request = self._live.get(output.request_id)
        if request is None:
            self._forget(output.request_id)
            return
        request.record(output)
        if output.finished:
            self._forget(output.request_id)

    def _resolve(self):
        still = []
        for job in self._waiting:
            if job.deadline.expired():
                job.future.set_exception(Cancelled("request deadline passed"))
            elif job.satisfied():
                job.future.set_result(None)
            elif any(not r.finished and r.id not in self._live for r, _ in job.needs):
                job.future.set_exception(PrunerecError("a step waits for a vLLM request that was aborted"))
            else:
                still.append(job)
        with self._cv:
            self._waiting = still

    def _watch_core(self, core, every: float = 0.25):
        """A separate core process that dies leaves `step()` waiting forever for its outputs:
        vLLM's client marks the core dead; this turns that mark into the engine's death and
        wakes the engine thread."""
        client = getattr(core, "engine_core", None)
        resources = getattr(client, "resources", None)
        while not self._closed and self.dead is None:
            if getattr(resources, "engine_dead", False):
                outputs = getattr(client, "outputs_queue", None)
                if outputs is not None:
                    from vllm.v1.engine.exceptions import EngineDeadError

                    outputs.put_nowait(EngineDeadError())
                self._die("vLLM's engine core process died")
                return
            time.sleep(every)

    def _die(self, reason, err=None):
        with self._cv:
            if self.dead is not None:
                return
            waiting, self._waiting = self._waiting, []
        super()._die(reason, err)
        self._fail(waiting, self._dead_error())

    def _dead_error(self):
        return EngineDead(self.dead or "the vLLM engine died")

    def _shutdown(self, llm):
        try:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        except Exception:
            log.exception("vLLM shutdown failed")
