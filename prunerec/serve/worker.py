"""What every engine shares: the `Engine` interface, deadlines and cancellation, and
`WorkerEngine`, one worker thread that owns the model and serves a queue of jobs (arrival order),
each answered through a future that its caller waits on until its deadline.

An engine that fails after it started (vLLM's engine core died, out of memory) is dead: every
waiting and later call raises `EngineDead`, and the `on_dead` callback (the server's) runs once
so that the process can report 503 and exit for a supervisor to restart it.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future

log = logging.getLogger("prunerec.serve")

Ranked = list[tuple[int, float]]  # (title index, summed log-probability), best first


class Cancelled(Exception):
    """The request's deadline passed (or the engine closed) before its work finished."""


class EngineDead(Exception):
    """The engine stopped working after it started; only a restart helps."""


class Deadline:
    """A point in time (monotonic clock) after which work for a request is abandoned."""

    def __init__(self, seconds: float | None = None):
        self.at = None if seconds is None else time.monotonic() + seconds
        self._cancelled = False

    @classmethod
    def until(cls, at: float | None) -> Deadline:
        """The deadline at monotonic time `at` (the same clock in every process)."""
        deadline = cls()
        deadline.at = at
        return deadline

    def cancel(self) -> None:
        self._cancelled = True

    def expired(self) -> bool:
        return self._cancelled or (self.at is not None and time.monotonic() >= self.at)

    def remaining(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def check(self) -> None:
        if self.expired():
            raise Cancelled("request deadline passed")


class Engine:
    """What the service needs from an engine. Implementations are thread-safe."""

    name = "engine"

    def __init__(self, sm, step_delay: float = 0.0):
        self.sm, self.step_delay = sm, float(step_delay)
        self.on_dead: Callable[[str], None] | None = None

    def rank(self, prompt: Sequence[int], num_beams: int, deadline: Deadline) -> Ranked:
        raise NotImplementedError

    def generate(self, prompt: Sequence[int], max_new_tokens: int, deadline: Deadline) -> list[int]:
        """Greedy tokens after `prompt`, up to (not including) EOS."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"engine": self.name}

    def torch_model(self):
        """The engine's transformers model when it has one (shared with L2 grounding)."""
        return

    def close(self) -> None:
        pass


def unexpired(jobs):
    """The jobs still within their deadline; each expired one gets Cancelled on its future."""
    live = []
    for job in jobs:
        if job.deadline.expired():
            job.future.set_exception(Cancelled("request deadline passed"))
        else:
            live.append(job)
    return live


def cut_at_eos(tokens: Sequence[int], eos: int) -> list[int]:
    tokens = list(tokens)
    return tokens[:tokens.index(eos)] if eos in tokens else tokens


class Job:
    """A unit of work for the worker; `future` carries its answer."""

    def __init__(self, deadline: Deadline):
        self.deadline, self.future = deadline, Future()
        self.arrived = time.monotonic()


class WorkerEngine(Engine):
    """Worker threads run `_work(slot)` (subclasses: take jobs with `_take`, answer their futures),
    slot 0 to workers - 1; `_submit` queues a job and waits for it within its deadline."""

    def __init__(self, sm, step_delay: float = 0.0, workers: int = 1):
        super().__init__(sm, step_delay)
        self._jobs: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.dead: str | None = None
        self._threads = [threading.Thread(target=self._guarded_work, args=(slot,), name=f"{self.name}-engine-{slot}",
                                          daemon=True) for slot in range(workers)]

    def start_worker(self) -> None:
        for thread in self._threads:
            thread.start()

    def _work(self, slot: int) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- caller side
    def _refuse_if_stopped(self) -> None:
        if self.dead is not None:
            raise EngineDead(self.dead)
        if self._closed:
            raise Cancelled("the engine is shutting down")

    def _submit(self, job: Job):
        with self._cv:
            self._refuse_if_stopped()
            self._jobs.append(job)
            self._cv.notify_all()
        return self._wait(job)

    def _wait(self, job: Job):
        try:
            return job.future.result(timeout=job.deadline.remaining())
        except TimeoutError:
            job.deadline.cancel()
            raise Cancelled("request deadline passed") from None

    # ---------------------------------------------------------------- worker side
    def _take(self, block: bool = True, timeout: float | None = None) -> list[Job] | None:
        """Every queued job, oldest first (waits for one when `block`); None once closed."""
        with self._cv:
            until = None if timeout is None else time.monotonic() + timeout
            while block and not self._jobs and not self._closed:
                left = None if until is None else until - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cv.wait(timeout=left)
            if self._closed:
                return None
            taken = list(self._jobs)
            self._jobs.clear()
        return taken

    def _guarded_work(self, slot: int) -> None:
        try:
            self._work(slot)
        except BaseException as err:  # noqa: BLE001 - anything that ends the worker kills the engine
            if not self._closed:
                self._die(f"{type(err).__name__}: {err}", err)

    def _die(self, reason: str, err: BaseException | None = None) -> None:
        with self._cv:
            if self.dead is not None:
                return
            self.dead = reason
            pending = list(self._jobs)
            self._jobs.clear()
            self._cv.notify_all()
        log.error("the %s engine died: %s", self.name, reason, exc_info=err)
        self._fail(pending, EngineDead(reason))
        if self.on_dead is not None:
            self.on_dead(reason)

    @staticmethod
    def _fail(jobs, err: BaseException) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(err)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            pending = list(self._jobs)
            self._jobs.clear()
            self._cv.notify_all()
        self._fail(pending, Cancelled("the engine is shutting down"))
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=60)
