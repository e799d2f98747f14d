"""Runs `prunerec` commands as forked child processes of one interpreter that has already
imported torch, transformers and prunerec (a fork server): each child is a real, separate
process that can be SIGKILLed at any moment, without paying seconds of imports per run.

Protocol: one JSON request per stdin line {"args": [...], "log": path, "hook": "NAME:N"|null,
"kill_after": seconds|null}; one JSON answer per stdout line {"code": exit code | null if
killed, "seconds": wall time}. Used by tests/test_kill_resume.py.
"""
import json
import os
import signal
import sys
import time
import traceback

import torch  # noqa: F401  (imported once here, inherited by every child)
import transformers  # noqa: F401

import prunerec.cli
import prunerec.compress.pipeline  # noqa: F401
import prunerec.train.sft  # noqa: F401


def _child(args: list[str], hook: str | None, log: str) -> None:
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if hook:
            os.environ["PRUNEREC_TEST_KILL_AT"] = hook
        prunerec.cli.main(args, prog_name="prunerec", standalone_mode=True)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(args: list[str], log: str, hook: str | None = None, kill_after: float | None = None) -> dict:
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _child(args, hook, log)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"code": os.waitstatus_to_exitcode(status), "seconds": time.perf_counter() - started}
        if kill_after is not None and time.perf_counter() - started >= kill_after:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"code": None, "seconds": time.perf_counter() - started}
        time.sleep(0.005)


if __name__ == "__main__":
    for line in sys.stdin:
        print(json.dumps(run(**json.loads(line))), flush=True)
