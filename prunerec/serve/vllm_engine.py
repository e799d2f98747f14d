"""The vLLM engine: prunerec.rec.beam's constrained search, one token a step, on `llm.generate`.

vLLM 0.32 returns log-probabilities of the token ids a request names
(`SamplingParams.logprob_token_ids`, at most 128 a request), not the full vocabulary. So each
running beam becomes one request `TokensPrompt(prompt + beam)` (more when its trie node has over
128 children) that names exactly the children the trie allows, with `max_tokens=1`; prefix
caching keeps the repeated prompt cheap. `VllmStepper.start/advance` return a `SparseLogprobs`
that holds those values and answers `logprobs[row, allowed]` like the dense tensor the search
expects, so the ranking logic is prunerec.rec.beam's own, unchanged (the same titles in the
same order as TorchStepper; see STACK.md).

Continuous batching: each HTTP request runs its search in its own thread; a search's step is a
list of requests handed to the engine thread, which waits a moment for the steps of the other
active searches and sends them all in one `llm.generate` call. New requests join at the next
call. Only the engine thread touches the `LLM` object.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

import torch

from prunerec.errors import PrunerecError
from prunerec.model.dtypes import vllm_dtype
from prunerec.model.vocab import generation_ids
from prunerec.rec.beam import constrained_beam_search
from prunerec.serve.engines import Cancelled, Deadline, Engine, cut_at_eos, unexpired
from prunerec.serve.model import ServeModel

log = logging.getLogger("prunerec.serve")

MAX_IDS_PER_REQUEST = 128   # vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS
GATHER_SECONDS = 0.01       # how long a step waits for the other active searches' steps


def needs_transformers_impl(config) -> bool:
    """vLLM's native Qwen2 ignores config.head_dim (hidden_size // heads is assumed)."""
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.model_type == "qwen2" and heads * int(head_dim) != int(config.hidden_size)


def checkpoint_dtype(config) -> str:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(dtype).replace("torch.", "")


class SparseLogprobs:
    """Log-probabilities of some token ids per row; `x[row, ids]` gives a float tensor like a
    dense [rows, vocab] tensor would (-inf for ids that were not asked for)."""

    def __init__(self, rows: list[dict[int, float]]):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        row, ids = key
        values = self.rows[int(row)]
        return torch.tensor([values.get(int(t), float("-inf")) for t in ids], dtype=torch.float32)


class VllmStepper:
    """beam.Stepper over the engine thread: rows are token sequences, not KV caches (vLLM's
    prefix cache holds those). Asks only for the trie's allowed children of each row."""

    def __init__(self, engine: VllmEngine, deadline: Deadline):
        self.engine, self.deadline = engine, deadline
        self.seqs: list[list[int]] = []
        self.nodes: list[dict] = []

    def start(self, prompts):
        self.seqs = [list(p) for p in prompts]
        self.nodes = [self.engine.sm.trie.root for _ in prompts]
        return self._step()

    def advance(self, parents, tokens):
        self.seqs = [self.seqs[p] + [int(t)] for p, t in zip(parents, tokens)]
        self.nodes = [self.nodes[p].get(int(t), {}) for p, t in zip(parents, tokens)]
        return self._step()

    def _step(self) -> SparseLogprobs:
        requests, owners = [], []
        for row, (seq, node) in enumerate(zip(self.seqs, self.nodes)):
            allowed = sorted(node)
            for begin in range(0, len(allowed), MAX_IDS_PER_REQUEST):
                requests.append((seq, allowed[begin:begin + MAX_IDS_PER_REQUEST]))
                owners.append(row)
        rows: list[dict[int, float]] = [{} for _ in self.seqs]
        if requests:
            for row, (ids, values) in zip(owners, self.engine.score(requests, self.deadline)):
                wanted = rows[row]
                for token, value in zip(ids, values):
                    wanted[token] = value
        return SparseLogprobs(rows)


class _Batch:
    def __init__(self, kind: str, items: list, deadline: Deadline):
        self.kind, self.items, self.deadline, self.future = kind, items, deadline, Future()


class VllmEngine(Engine):
    name = "vllm"

    def __init__(self, sm: ServeModel, tensor_parallel_size: int = 1, dtype: str = "auto",
                 enforce_eager: bool = False, step_delay: float = 0.0, gather_seconds: float = GATHER_SECONDS):
        super().__init__(sm, step_delay)
        self.tensor_parallel_size, self.enforce_eager = int(tensor_parallel_size), bool(enforce_eager)
        self.dtype = vllm_dtype(dtype)  # float32 for auto: the torch reference's dtype
        self.model_impl = "transformers" if needs_transformers_impl(sm.config) else "auto"
        self.gather_seconds = gather_seconds
        self.max_model_len = int(min(getattr(sm.config, "max_position_embeddings", 1 << 20),
                                     sm.settings.cutoff_tokens + sm.trie.max_len + 8))
        self._cv = threading.Condition()
        self._pending: list[_Batch] = []
        self._active = 0          # searches/generations in progress (each has <= 1 batch pending)
        self._closed = False
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self.calls = 0            # llm.generate calls
        self.requests = 0         # vLLM requests sent
        self._thread = threading.Thread(target=self._run, name="vllm-engine", daemon=True)
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise PrunerecError(f"vLLM could not load {sm.folder}: {self._load_error}") from self._load_error

    # ------------------------------------------------------------------ public interface
    def rank(self, prompt, num_beams, deadline):
        with self._searching():
            ranked = constrained_beam_search(VllmStepper(self, deadline), [list(prompt)], self.sm.trie, num_beams)
        return ranked[0]

    def generate(self, prompt, max_new_tokens, deadline):
        with self._searching():
            (tokens,) = self._submit("generate", [(list(prompt), int(max_new_tokens))], deadline)
        return cut_at_eos(tokens, self.sm.eos_id)

    def score(self, requests: Sequence[tuple[list[int], list[int]]], deadline: Deadline):
        """[(ids, logprobs)] for [(sequence, ids)]: the log-probability of each id after each sequence."""
        return self._submit("score", list(requests), deadline)

    def describe(self):
        return {"engine": self.name, "dtype": self.dtype, "model_impl": self.model_impl,
                "tensor_parallel_size": self.tensor_parallel_size, "max_model_len": self.max_model_len,
                "generate_calls": self.calls, "vllm_requests": self.requests}

    def close(self):
        with self._cv:
            self._closed = True
            pending, self._pending = self._pending, []
            self._cv.notify_all()
        for batch in pending:
            batch.future.set_exception(Cancelled("the engine is shutting down"))
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)

    # ------------------------------------------------------------------ request side
    class _Active:
        def __init__(self, engine):
            self.engine = engine

        def __enter__(self):
            with self.engine._cv:
                self.engine._active += 1

        def __exit__(self, *exc):
            with self.engine._cv:
                self.engine._active -= 1
                self.engine._cv.notify_all()

    def _searching(self):
        return VllmEngine._Active(self)

    def _submit(self, kind: str, items: list, deadline: Deadline):
        if self.step_delay:
            time.sleep(self.step_delay)
        deadline.check()
        batch = _Batch(kind, items, deadline)
        with self._cv:
            if self._closed:
                raise Cancelled("the engine is shutting down")
            self._pending.append(batch)
            self._cv.notify_all()
        try:
            return batch.future.result(timeout=deadline.remaining())
        except TimeoutError:
            deadline.cancel()
            raise Cancelled("request deadline passed") from None

    # ------------------------------------------------------------------ engine thread
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
        self._check_cpu_head_size()
        from vllm import LLM

        kwargs = {"model": str(self.sm.folder), "tokenizer": str(self.sm.folder), "dtype": self.dtype,
                  "tensor_parallel_size": self.tensor_parallel_size, "enable_prefix_caching": True, "block_size": 32,
                  "max_logprobs": MAX_IDS_PER_REQUEST, "max_model_len": self.max_model_len, "seed": 0,
                  "enforce_eager": self.enforce_eager}
        if self.model_impl != "auto":
            kwargs["model_impl"] = self.model_impl
        log.info("starting vLLM on %s (%s)", self.sm.folder, ", ".join(f"{k}={v}" for k, v in kwargs.items()
                                                                      if k not in ("model", "tokenizer")))
        return LLM(**kwargs)

    def _take(self) -> list[_Batch] | None:
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait(timeout=0.5)
            if self._closed:
                return None
            # wait briefly for the other active searches to hand in their next step
            until = time.monotonic() + self.gather_seconds
            while len(self._pending) < self._active and not self._closed:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(timeout=left)
            taken, self._pending = self._pending, []
        return taken

    def _run(self):
        try:
            llm = self._load()
        except BaseException as err:  # noqa: BLE001 - reported by the constructor
            self._load_error = err
            self._loaded.set()
            return
        self._loaded.set()
        try:
            while True:
                taken = self._take()
                if taken is None:
                    return
                live = unexpired(taken)
                if not live:
                    continue
                try:
                    results = self._generate(llm, live)
                except Exception as err:  # handed to the waiting request threads
                    log.exception("vLLM generate failed")
                    for batch in live:
                        batch.future.set_exception(err)
                    continue
                for batch, result in zip(live, results):
                    batch.future.set_result(result)
        finally:
            self._shutdown(llm)

    def _request(self, kind: str, item) -> tuple[object, object]:
        """(prompt, SamplingParams) of one vLLM request."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if kind == "score":
            seq, ids = item
            return TokensPrompt(prompt_token_ids=seq), SamplingParams(
                max_tokens=1, temperature=0.0, detokenize=False, logprob_token_ids=list(ids))
        seq, max_new = item
        return TokensPrompt(prompt_token_ids=seq), SamplingParams(
            max_tokens=max_new, temperature=0.0, detokenize=False, stop_token_ids=[self.sm.eos_id],
            allowed_token_ids=generation_ids(self.sm.tokenizer, self.sm.config.vocab_size))  # no padding rows

    def _generate(self, llm, batches: list[_Batch]) -> list[list]:
        prompts, params = [], []
        for batch in batches:
            for item in batch.items:
                prompt, param = self._request(batch.kind, item)
                prompts.append(prompt)
                params.append(param)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        self.calls += 1
        self.requests += len(prompts)
        results, at = [], 0
        for batch in batches:
            rows = []
            for item in batch.items:
                completion = outputs[at].outputs[0]
                at += 1
                if batch.kind == "score":
                    _, ids = item
                    got = completion.logprobs[0]
                    rows.append((ids, [float(got[t].logprob) for t in ids]))
                else:
                    rows.append(list(completion.token_ids))
            results.append(rows)
        return results

    def _shutdown(self, llm):
        try:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        except Exception:
            log.exception("vLLM shutdown failed")
