"""The torch engine's searches in forked processes (prunerec.serve.forked): the same answers as
in-process, cancellation reaches the process, and a killed process kills the engine."""
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from prunerec.serve.engines import TorchEngine
from prunerec.serve.model import load_serve_model
from prunerec.serve.worker import Cancelled, Deadline, EngineDead


@pytest.fixture(scope="module")
def sm(model_dir):
    return load_serve_model(model_dir, "torch")


def _prompts(sm):
    return [sm.prompt(history) for history in ([1, 2], [5], [3, 7, 9], [11, 4], [20], [8, 2, 6], [30, 31], [12])]


def test_forked_engine_answers_as_in_process(sm):
    prompts = _prompts(sm)
    alone = TorchEngine(sm, processes=1)
    try:
        expected = [alone.rank(p, 6, Deadline(60)) for p in prompts]
        expected_text = alone.generate(prompts[0], 5, Deadline(60))
    finally:
        alone.close()
    forked = TorchEngine(sm, processes=2, max_batch=2)
    try:
        assert forked.describe()["processes"] == 2 and len(set(forked.forked.pids())) == 2
        assert forked.describe()["threads"] == forked.forked.threads_each  # what each search runs on
        with ThreadPoolExecutor(8) as pool:  # batches of two, side by side in both processes
            got = list(pool.map(lambda p: forked.rank(p, 6, Deadline(60)), prompts))
        # the same titles in the same order; scores up to float rounding (batches pad differently)
        assert [[title for title, _ in ranked] for ranked in got] == [[title for title, _ in r] for r in expected]
        assert all(s == pytest.approx(e, abs=1e-4) for g, x in zip(got, expected)
                   for (_, s), (_, e) in zip(g, x))
        assert forked.generate(prompts[0], 5, Deadline(60)) == expected_text
    finally:
        forked.close()
    assert all(not w.process.is_alive() for w in forked.forked.workers)


def test_processes_forked_after_multithreaded_work_use_their_threads(sm):
    """A process forked from a thread that ran OpenMP work would hang in its first two-thread
    operation; the engine forks from a fresh thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        square = torch.randn(1024, 1024)
        (square @ square).cos()  # this thread's OpenMP pool now exists
        engine = TorchEngine(sm, processes=2)  # two threads each
        try:
            ranked = engine.rank(sm.prompt([1, 2]), 4, Deadline(30))
            assert len(ranked) == 4
        finally:
            engine.close()
    finally:
        torch.set_num_threads(before)


def test_a_cancelled_request_stops_its_process(sm):
    engine = TorchEngine(sm, processes=2, step_delay=1.0)  # a search: five steps or more, 1 s each
    try:
        deadline = Deadline(60)
        threading.Timer(0.3, deadline.cancel).start()  # the client went away
        started = time.monotonic()
        with pytest.raises(Cancelled):
            engine.rank(sm.prompt([1, 2]), 6, deadline)
        # the answer (Cancelled) comes from the process, which stopped at its first step
        assert time.monotonic() - started < 2.5
        assert engine.generate(sm.prompt([3]), 1, Deadline(60)) is not None  # still serving
    finally:
        engine.close()


def test_a_killed_search_process_kills_the_engine(sm):
    engine = TorchEngine(sm, processes=2)
    reasons = []
    engine.on_dead = reasons.append
    try:
        for pid in engine.forked.pids():
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineDead, match="search process ended"):
            engine.rank(sm.prompt([1, 2]), 4, Deadline(30))
        assert engine.dead and reasons and "exit code -9" in reasons[0]
        with pytest.raises(EngineDead):
            engine.rank(sm.prompt([1, 2]), 4, Deadline(30))
    finally:
        engine.close()
