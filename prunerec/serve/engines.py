"""Engines behind one interface: rank a prompt by trie-constrained beam search, and write a free
(greedy) generation. `torch` and `onnx` run prunerec.search.beam's search on a `Stepper` in a
worker thread (prunerec.serve.worker) that batches requests waiting at the same time (torch: one
worker thread per forked search process, prunerec.serve.forked); `vllm` lives in vllm_engine.py;
prunerec.serve.engine_factory picks one.

Every engine answers from threads of its own, so callers (the HTTP server's request
threads) may call `rank` and `generate` concurrently. A `Deadline` cancels work that nobody
waits for any more: steppers check it before each step.
"""
from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

import torch

from prunerec.errors import PrunerecError
from prunerec.search.beam import constrained_beam_search
from prunerec.serve.forked import ForkedWorkers, WorkerProcessDied
from prunerec.serve.model import ServeModel
from prunerec.serve.worker import Cancelled, Deadline, Engine, EngineDead, Job, WorkerEngine, unexpired

log = logging.getLogger("prunerec.serve")

def greedy_tokens(stepper, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos: int,
                  n_tokens: int | None = None) -> list[list[int]]:
    """Greedy decoding on a Stepper (argmax each step over the first `n_tokens` ids: the rows
    past the tokenizer are never written), each row cut at its first EOS."""
    rows = [[] for _ in prompts]
    done = [False] * len(prompts)
    logprobs = stepper.start(prompts)
    for step in range(max_new_tokens):
        tokens = logprobs[:, :n_tokens].argmax(-1).tolist()
        for row, token in enumerate(tokens):
            if not done[row]:
                if token == eos:
                    done[row] = True
                else:
                    rows[row].append(token)
        if all(done) or step == max_new_tokens - 1:
            break
        logprobs = stepper.advance(list(range(len(prompts))), tokens)
    return rows


class _GuardedStepper:
    """Wraps a Stepper: stops the batch when every request in it is cancelled (or `should_stop`
    says so); optional delay per step (a testing aid: --debug-step-delay)."""

    def __init__(self, inner, deadlines: Sequence[Deadline], delay: float,
                 should_stop: Callable[[], bool] | None = None):
        self.inner, self.deadlines, self.delay, self.should_stop = inner, deadlines, delay, should_stop

    def _check(self):
        if self.delay:
            time.sleep(self.delay)
        stopped = self.should_stop is not None and self.should_stop()
        if stopped or all(d.expired() for d in self.deadlines):
            raise Cancelled("every request of the batch was cancelled")

    def start(self, prompts):
        self._check()
        return self.inner.start(prompts)

    def advance(self, parents, tokens):
        self._check()
        return self.inner.advance(parents, tokens)


class _Job(Job):
    def __init__(self, kind: str, param: int, prompt: list[int], deadline: Deadline):
        super().__init__(deadline)
        self.kind = kind        # "rank" or "generate"
        self.param = param      # num_beams or max_new_tokens
        self.prompt = prompt


class BatchingEngine(WorkerEngine):
    """Runs jobs in arrival order: the oldest job and the jobs right behind it of the same kind and
    parameter (up to max_batch) share one batched search, as `prunerec evaluate` batches users. A
    job never waits behind a later one (no starvation). With `forked` workers (ForkedWorkers, one
    worker thread per process) several batches run at once, each in its own process."""

    def __init__(self, sm: ServeModel, max_batch: int = 8, step_delay: float = 0.0, workers: int = 1):
        super().__init__(sm, step_delay, workers)
        self.max_batch = max(1, int(max_batch))
        self.forked = None

    def new_stepper(self):
        raise NotImplementedError

    # ---------------------------------------------------------------- public
    def rank(self, prompt, num_beams, deadline):
        return self._submit(_Job("rank", int(num_beams), list(prompt), deadline))

    def generate(self, prompt, max_new_tokens, deadline):
        return self._submit(_Job("generate", int(max_new_tokens), list(prompt), deadline))

    def close(self) -> None:
        super().close()
        if self.forked is not None:
            self.forked.close()

    # ---------------------------------------------------------------- worker
    def _take_batch(self) -> list[_Job] | None:
        with self._cv:
            while not self._jobs and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            batch = [self._jobs.popleft()]
            while (self._jobs and len(batch) < self.max_batch
                   and (self._jobs[0].kind, self._jobs[0].param) == (batch[0].kind, batch[0].param)):
                batch.append(self._jobs.popleft())
        return batch

    def _search(self, kind: str, param: int, prompts: list, deadlines: Sequence[Deadline],
                should_stop: Callable[[], bool] | None = None):
        stepper = _GuardedStepper(self.new_stepper(), deadlines, self.step_delay, should_stop)
        with torch.inference_mode():
            if kind == "rank":
                return constrained_beam_search(stepper, prompts, self.sm.trie, param)
            return greedy_tokens(stepper, prompts, param, self.sm.eos_id, len(self.sm.tokenizer))

    def _search_in_process(self, kind, param, prompts, deadline_ats, should_stop):
        """ForkedWorkers' runner, in a worker process."""
        return self._search(kind, param, prompts, [Deadline.until(at) for at in deadline_ats], should_stop)

    def _run(self, slot: int, batch: list[_Job]):
        first, prompts = batch[0], [j.prompt for j in batch]
        if self.forked is None:
            return self._search(first.kind, first.param, prompts, [j.deadline for j in batch])
        return self.forked.run_batch(slot, first.kind, first.param, prompts, [j.deadline.at for j in batch],
                                     cancelled=lambda: all(j.deadline.expired() for j in batch))

    def _work(self, slot: int) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = unexpired(batch)
            if not live:
                continue
            try:
                results = self._run(slot, live)
            except WorkerProcessDied as err:  # the engine dies: on_dead runs, every call gets EngineDead
                self._die(str(err), err)
                self._fail(live, EngineDead(str(err)))
                return
            except Exception as err:  # handed to the waiting request threads
                if not isinstance(err, Cancelled):
                    log.exception("%s engine failed on a batch of %d", self.name, len(live))
                self._fail(live, err)
                continue
            for job, result in zip(live, results):
                if not job.future.done():
                    job.future.set_result(result)


def search_processes(requested: int | None, model) -> int:
    """Worker processes for the torch engine: `requested`, or one per torch thread (the cores, or
    OMP_NUM_THREADS: a container's CPU quota does not show in the cores torch sees, the variable
    does); one (no fork) when the model is not on the CPU."""
    if next(model.parameters()).device.type != "cpu":
        return 1
    return max(1, torch.get_num_threads() if requested is None else int(requested))


class TorchEngine(BatchingEngine):
    """transformers with `prunerec evaluate`'s stepper (rec.shared_prompt.make_stepper): the same
    computation as evaluate. Searches run in `processes` forked processes side by side (one per
    torch thread by default; prunerec.serve.forked), or in this process when there is one."""

    name = "torch"

    def __init__(self, sm: ServeModel, max_batch: int = 8, step_delay: float = 0.0, processes: int | None = None):
        from prunerec.model.checkpoint import load_rec_model

        rec = load_rec_model(str(sm.folder), need_catalog=True)
        processes = search_processes(processes, rec.model)
        super().__init__(sm, max_batch, step_delay, workers=processes)
        self.rec = rec
        if processes > 1:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no tokenizer thread pool across the fork
            _ = sm.trie.in_order  # built once here, inherited by every process
            self.forked = ForkedWorkers(processes, torch.get_num_threads(), self._search_in_process)
            self._warm_every_process()
        self.start_worker()

    def _warm_every_process(self) -> None:
        """One short search in each process, so that none pays its first-use costs on a request
        (the server's warm-up request reaches only one)."""
        prompt = self.sm.prompt([self.sm.first_ids[0]])
        for slot in range(len(self.forked.workers)):
            self.forked.run_batch(slot, "rank", 2, [prompt], [None], cancelled=lambda: False)

    def new_stepper(self):
        from prunerec.search.shared_prompt import make_stepper

        return make_stepper(self.rec.model, self.sm.pad_id)

    def torch_model(self):
        return self.rec.model

    def describe(self):
        forked = self.forked
        return {"engine": self.name, "dtype": str(next(self.rec.model.parameters()).dtype).replace("torch.", ""),
                "threads": forked.threads_each if forked is not None else torch.get_num_threads(),  # per search
                "max_batch": self.max_batch, "processes": len(forked.workers) if forked is not None else 1}


class OnnxEngine(BatchingEngine):
    """onnxruntime + OnnxStepper on a folder written by `prunerec export --format onnx`."""

    name = "onnx"

    def __init__(self, sm: ServeModel, max_batch: int = 8, step_delay: float = 0.0, providers=None):
        from prunerec.export.onnx_stepper import make_session

        super().__init__(sm, max_batch, step_delay)
        try:
            self.session = make_session(sm.folder, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise PrunerecError(f"cannot open {sm.folder}/model.onnx with onnxruntime: {err}") from None
        self.start_worker()

    def new_stepper(self):
        from prunerec.export.onnx_stepper import OnnxStepper

        return OnnxStepper(self.session, self.sm.pad_id)

    def describe(self):
        return {"engine": self.name, "providers": self.session.get_providers(), "max_batch": self.max_batch}


class L2Grounder:
    """BIGRec's grounding: embed a free generation with the transformers model and rank catalog
    titles by L2 distance (prunerec.search.grounding). The model and the title embeddings load on
    first use (a fallback that most requests never need)."""

    def __init__(self, sm: ServeModel, model_source: Callable[[], object] | None):
        self.sm, self._source = sm, model_source
        self.tokenizer = copy.deepcopy(sm.tokenizer)  # its own: request threads use sm.tokenizer
        self._model = self._embeddings = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self._source is not None

    def _ready(self):
        with self._lock:
            if self._embeddings is None:
                from prunerec.search.grounding import embed_texts

                self._model = self._source()
                self._embeddings = embed_texts(self._model, self.tokenizer, self.sm.titles)
        return self._model, self._embeddings

    def rank(self, text: str, k: int) -> list[tuple[int, float]]:
        """(title index, L2 distance) of the k nearest titles, nearest first."""
        from prunerec.search.grounding import embed_texts, l2_nearest

        model, embeddings = self._ready()
        with self._lock, torch.inference_mode():
            order, distances = l2_nearest(embed_texts(model, self.tokenizer, [text or " "]), embeddings, k)
        return list(zip(order[0], distances[0]))


def grounder_for(sm: ServeModel, engine: Engine) -> L2Grounder:
    model = engine.torch_model()
    if model is not None:
        return L2Grounder(sm, lambda: model)
    if sm.torch_folder is None:
        log.warning("no PyTorch weights beside %s: the L2 fallback is unavailable (answers may hold fewer "
                    "than k items when the constrained search finds fewer)", sm.folder)
        return L2Grounder(sm, None)

    def load():
        from transformers import AutoModelForCausalLM

        log.info("loading %s for L2 grounding", sm.torch_folder)
        return AutoModelForCausalLM.from_pretrained(sm.torch_folder, dtype=torch.float32).eval()

    return L2Grounder(sm, load)
