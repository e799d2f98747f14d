"""Data parallelism over processes started by ``torchrun`` (torch.distributed), and the device.

In a plain process (``WORLD_SIZE`` unset or 1) nothing here starts a process group and every
helper is a no-op: rank 0 of a world of one. Under ``torchrun --nproc_per_node N`` the first
call of :func:`init` joins the group torchrun describes (NCCL on CUDA, gloo on CPU), with
each process on the GPU ``LOCAL_RANK`` (when there are GPUs). The training loop
(:mod:`prunerec.train.trainer`) then splits each global batch over the ranks; rank 0 alone
writes files, validates and shows progress bars, the others wait at barriers. The other ranks'
standard output goes to /dev/null (so a command's closing line is printed once); their standard
error (warnings, errors) stays.

Environment:
  ``PRUNEREC_DEVICE``           force the training device (``cpu``, ``cuda``, ``cuda:1``)
  ``PRUNEREC_DIST_TIMEOUT_MIN`` minutes a rank may wait at a barrier while rank 0 validates
                                or evaluates (default 120)
"""
from __future__ import annotations

import atexit
import datetime
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_reduce_sum", "backend", "barrier", "broadcast_object", "device", "init", "is_main", "local_rank",
           "rank", "rank0_first", "world_size"]

DEVICE_ENV = "PRUNEREC_DEVICE"
TIMEOUT_ENV = "PRUNEREC_DIST_TIMEOUT_MIN"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE") or 1)


def rank() -> int:
    return int(os.environ.get("RANK") or 0) if world_size() > 1 else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK") or 0) if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """Where training runs: ``PRUNEREC_DEVICE`` if set, else this rank's GPU, else the CPU."""
    forced = os.environ.get(DEVICE_ENV, "").strip()
    if forced:
        dev = torch.device(forced)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank())
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def backend() -> str:
    return "nccl" if device().type == "cuda" else "gloo"


def init() -> bool:
    """Join torchrun's process group once; False (and nothing done) in a plain process."""
    if world_size() <= 1:
        return False
    if dist.is_initialized():
        return True
    dev = device()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    minutes = float(os.environ.get(TIMEOUT_ENV) or 120)
    dist.init_process_group(backend(), timeout=datetime.timedelta(minutes=minutes))
    atexit.register(_shutdown)
    if not is_main():
        sys.stdout.flush()
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    return True


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return world_size() > 1 and init()


def barrier() -> None:
    if _active():
        dev = device()
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[dev.index or 0])
        else:
            dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(value: float) -> float:
    """The sum of ``value`` over the ranks."""
    if not _active():
        return value
    dev = device() if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([value], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return float(t.item())


@contextmanager
def rank0_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes a tokenizer); the others run it after."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
