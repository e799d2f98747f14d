"""Batched searches in forked worker processes, one per core, side by side.

On a small model a beam step is as much Python bookkeeping as matrix products, and in one
process the bookkeeping runs on one core while torch's other threads wait; searches in separate
processes keep every core busy with both (as `prunerec evaluate` does). The processes are forked
once the model is loaded, so they share its weights. Before each step a busy process takes its
share of the threads ("threads": what torch would use in one process), threads // busy
processes, so a lone request runs on every core; but only threads no other process holds: a
process that must shrink does so at its own next step, and a newcomer waits until then.
Without that wait (the first version) a second batch ran beside a process still on every
thread, OpenMP threads spun against each other, and the pruned demo model lost a third of its
requests/s at 4 users (docs/results.md).

A batch is sent with the deadlines of its requests (monotonic clock: the same in every process)
and comes back as ("ok", result) or ("error", exception); the parent raises `stop` when every
request of the batch was cancelled, and the process stops at its next step. A process that
dies (killed, out of memory) surfaces as `WorkerProcessDied`.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

POLL_SECONDS = 0.05  # how often the parent looks for cancelled requests while a batch runs

WAIT_SECONDS = 0.0005  # how often a process waiting for threads looks again
# run(kind, param, prompts, deadline_ats, before_step) -> result, in the worker process;
# before_step() runs before each step and returns True when the batch is to be abandoned
BatchRunner = Callable[[str, int, list, list, Callable[[], bool]], object]


class WorkerProcessDied(Exception):
    """A worker process ended while it held a batch."""


@dataclass
class _Worker:
    process: multiprocessing.Process
    conn: object     # the parent's end of the pipe
    stop: object     # shared flag: abandon the batch at the next step


class ThreadShare:
    """The threads of the busy processes (shared memory): `take(slot)` before each step returns
    how many threads process `slot` may run, waiting while other processes hold them all."""

    def __init__(self, context, count: int, threads: int):
        self.threads = threads
        self.lock = context.Lock()
        self.busy = context.Array("b", count, lock=False)
        self.held = context.Array("i", count, lock=False)

    def begin(self, slot: int) -> None:
        with self.lock:
            self.busy[slot] = 1

    def end(self, slot: int) -> None:
        with self.lock:
            self.busy[slot], self.held[slot] = 0, 0

    def take(self, slot: int, first_step: bool) -> int:
        """A batch grows only at its first step: growing mid-batch whenever another process went
        idle for a moment made the next batch there wait a step for the threads back."""
        while True:
            with self.lock:
                granted = self._grant(slot)
                if not first_step:
                    granted = min(granted, self.held[slot])
                if granted:
                    self.held[slot] = granted
                    return granted
            time.sleep(WAIT_SECONDS)

    def _grant(self, slot: int) -> int:
        fair = max(1, self.threads // max(1, sum(self.busy)))
        free = self.threads - sum(held for other, held in enumerate(self.held) if other != slot)
        return max(0, min(fair, free))


class ForkedWorkers:
    """`count` forked processes that run `run` on batches; `run_batch(slot, ...)` uses process `slot`
    (one caller per slot at a time)."""

    def __init__(self, count: int, threads: int, run: BatchRunner):
        context = multiprocessing.get_context("fork")
        self.workers = []
        # Forked from a thread that never ran an OpenMP parallel region: a child of a thread that
        # did inherits its OpenMP thread pool without the threads, and hangs in its first
        # multi-threaded operation (GNU libgomp, PyTorch's CPU wheels).
        errors: list[Exception] = []
        self.threads = threads
        self.share = ThreadShare(context, count, threads)
        forker = threading.Thread(target=self._start, args=(context, count, run, errors),
                                  name="prunerec-fork")
        forker.start()
        forker.join()
        if errors:
            self.close()
            raise errors[0]

    def _start(self, context, count: int, run: BatchRunner, errors: list) -> None:
        try:
            self._fork(context, count, run)
        except Exception as err:  # noqa: BLE001 - raised again in the constructor's thread
            errors.append(err)

    def _fork(self, context, count: int, run: BatchRunner) -> None:
        for slot in range(count):
            parent_end, child_end = context.Pipe()
            stop = context.Value("b", 0, lock=False)
            process = context.Process(target=_serve_batches, args=(child_end, stop, self.share, slot, run),
                                      name="prunerec-search", daemon=True)
            process.start()
            child_end.close()
            self.workers.append(_Worker(process, parent_end, stop))

    def run_batch(self, slot: int, kind: str, param: int, prompts: list, deadline_ats: Sequence[float | None],
                  cancelled: Callable[[], bool]):
        worker = self.workers[slot]
        worker.stop.value = 0
        try:
            worker.conn.send((kind, param, prompts, list(deadline_ats)))
            while not worker.conn.poll(POLL_SECONDS):
                if not worker.process.is_alive():
                    break
                if cancelled():
                    worker.stop.value = 1
            status, value = worker.conn.recv()
        except (EOFError, OSError) as err:
            worker.process.join(timeout=1)
            raise WorkerProcessDied(f"a search process ended (exit code {worker.process.exitcode})") from err
        if status == "error":
            raise value
        return value

    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self.workers]

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in self.workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()


def _serve_batches(conn, stop, share: ThreadShare, slot: int, run: BatchRunner) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's: it closes the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    running = [torch.get_num_threads()]
    steps = [0]

    def before_step() -> bool:
        threads = share.take(slot, first_step=steps[0] == 0)
        steps[0] += 1
        if threads != running[0]:
            torch.set_num_threads(threads)
            running[0] = threads
        return bool(stop.value)

    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if job is None:
            break
        share.begin(slot)
        steps[0] = 0
        try:
            reply = ("ok", run(*job, before_step))
        except Exception as err:  # noqa: BLE001 - every failure goes back to the waiting request
            reply = ("error", _picklable(err))
        finally:
            share.end(slot)
        conn.send(reply)
    os._exit(0)  # skip the parent's atexit handlers and finalizers, inherited by the fork


def _picklable(err: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001 - an exception that cannot cross the pipe is sent as text
        return RuntimeError(f"{type(err).__name__}: {err}")
