"""Batched searches in forked worker processes, one per core, side by side.

On a small model a beam step is as much Python bookkeeping as matrix products, and in one
process the bookkeeping runs on one core while torch's other threads wait; searches in separate
processes keep every core busy with both (as `prunerec evaluate` does). The processes are forked
once the model is loaded, so they share its weights, and each uses threads // processes torch
threads ("threads": what torch would use in one process). Adjusting that to the processes busy
at each step (a lone request on every core) was tried: the brief oversubscription whenever a
second batch starts, with OpenMP threads spinning, cost the pruned demo model a third of its
requests/s and tripled its p99 at 4 users (docs/results.md).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

POLL_SECONDS = 0.05  # how often the parent looks for cancelled requests while a batch runs

# run(kind, param, prompts, deadline_ats, should_stop) -> result, in the worker process
BatchRunner = Callable[[str, int, list, list, Callable[[], bool]], object]


class WorkerProcessDied(Exception):
    """A worker process ended while it held a batch."""


@dataclass
class _Worker:
    process: multiprocessing.Process
    conn: object     # the parent's end of the pipe
    stop: object     # shared flag: abandon the batch at the next step


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
        self.threads_each = max(1, threads // count)
        forker = threading.Thread(target=self._start, args=(context, count, self.threads_each, run, errors),
                                  name="prunerec-fork")
        forker.start()
        forker.join()
        if errors:
            self.close()
            raise errors[0]

    def _start(self, context, count: int, threads: int, run: BatchRunner, errors: list) -> None:
        try:
            self._fork(context, count, threads, run)
        except Exception as err:  # noqa: BLE001 - raised again in the constructor's thread
            errors.append(err)

    def _fork(self, context, count: int, threads: int, run: BatchRunner) -> None:
        for _ in range(count):
            parent_end, child_end = context.Pipe()
            stop = context.Value("b", 0, lock=False)
            process = context.Process(target=_serve_batches, args=(child_end, stop, threads, run),
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


def _serve_batches(conn, stop, threads: int, run: BatchRunner) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's: it closes the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(threads)

    def should_stop() -> bool:
        return bool(stop.value)

    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if job is None:
            break
        try:
            reply = ("ok", run(*job, should_stop))
        except Exception as err:  # noqa: BLE001 - every failure goes back to the waiting request
            reply = ("error", _picklable(err))
        conn.send(reply)
    os._exit(0)  # skip the parent's atexit handlers and finalizers, inherited by the fork


def _picklable(err: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001 - an exception that cannot cross the pipe is sent as text
        return RuntimeError(f"{type(err).__name__}: {err}")
