"""Engines behind one interface: rank a prompt by trie-constrained beam search, and write a free
(greedy) generation. `torch` and `onnx` run prunerec.rec.beam's search on a `Stepper` in one
worker thread (prunerec.serve.worker) that batches requests waiting at the same time; `vllm`
lives in vllm_engine.py; serve/app.py's `build_engine` picks one.

Every engine answers from one thread of its own, so callers (the HTTP server's request
threads) may call `rank` and `generate` concurrently. A `Deadline` cancels work that nobody
waits for any more: steppers check it before each step.
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence

import torch

from prunerec.errors import PrunerecError
from prunerec.rec.beam import constrained_beam_search
from prunerec.serve.model import ServeModel
from prunerec.serve.worker import Cancelled, Deadline, Engine, Job, WorkerEngine, unexpired

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
    """Wraps a Stepper: stops the batch when every request in it is cancelled; optional delay
    per step (a testing aid: --debug-step-delay)."""

    def __init__(self, inner, deadlines: Sequence[Deadline], delay: float):
        self.inner, self.deadlines, self.delay = inner, deadlines, delay

    def _check(self):
        if self.delay:
            time.sleep(self.delay)
        if all(d.expired() for d in self.deadlines):
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
    """Runs jobs on one worker thread in arrival order: the oldest job and the jobs right behind
    it of the same kind and parameter (up to max_batch) share one batched search, as `prunerec
    evaluate` batches users. A job never waits behind a later one (no starvation)."""

    def __init__(self, sm: ServeModel, max_batch: int = 8, step_delay: float = 0.0):
        super().__init__(sm, step_delay)
        self.max_batch = max(1, int(max_batch))

    def new_stepper(self):
        raise NotImplementedError

    # ---------------------------------------------------------------- public
    def rank(self, prompt, num_beams, deadline):
        return self._submit(_Job("rank", int(num_beams), list(prompt), deadline))

    def generate(self, prompt, max_new_tokens, deadline):
        return self._submit(_Job("generate", int(max_new_tokens), list(prompt), deadline))

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

    def _run(self, batch: list[_Job]):
        stepper = _GuardedStepper(self.new_stepper(), [j.deadline for j in batch], self.step_delay)
        prompts = [j.prompt for j in batch]
        with torch.inference_mode():
            if batch[0].kind == "rank":
                return constrained_beam_search(stepper, prompts, self.sm.trie, batch[0].param)
            return greedy_tokens(stepper, prompts, batch[0].param, self.sm.eos_id, len(self.sm.tokenizer))

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = unexpired(batch)
            if not live:
                continue
            try:
                results = self._run(live)
            except Exception as err:  # handed to the waiting request threads
                if not isinstance(err, Cancelled):
                    log.exception("%s engine failed on a batch of %d", self.name, len(live))
                self._fail(live, err)
                continue
            for job, result in zip(live, results):
                if not job.future.done():
                    job.future.set_result(result)


class TorchEngine(BatchingEngine):
    """transformers with `prunerec evaluate`'s stepper (rec.shared_prompt.make_stepper): the same
    computation as evaluate."""

    name = "torch"

    def __init__(self, sm: ServeModel, max_batch: int = 8, step_delay: float = 0.0):
        from prunerec.model.checkpoint import load_rec_model

        super().__init__(sm, max_batch, step_delay)
        self.rec = load_rec_model(str(sm.folder), need_catalog=True)
        self.start_worker()

    def new_stepper(self):
        from prunerec.rec.shared_prompt import make_stepper

        return make_stepper(self.rec.model, self.sm.pad_id)

    def torch_model(self):
        return self.rec.model

    def describe(self):
        return {"engine": self.name, "dtype": str(next(self.rec.model.parameters()).dtype).replace("torch.", ""),
                "threads": torch.get_num_threads(), "max_batch": self.max_batch}


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
    titles by L2 distance (prunerec.rec.grounding). The model and the title embeddings load on
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
                from prunerec.rec.grounding import embed_texts

                self._model = self._source()
                self._embeddings = embed_texts(self._model, self.tokenizer, self.sm.titles)
        return self._model, self._embeddings

    def rank(self, text: str, k: int) -> list[tuple[int, float]]:
        """(title index, L2 distance) of the k nearest titles, nearest first."""
        from prunerec.rec.grounding import embed_texts, l2_nearest

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
