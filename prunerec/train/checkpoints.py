"""A training run's checkpoint: one folder that holds everything a resume needs, written as one unit.

    STATE_DIR/checkpoint-000007/  weights.safetensors  the weights after the last finished step
                                  best.safetensors     the best weights so far (absent before a validation)
                                  optimizer.pt         optimizer, scheduler and RNG state (plain tensors)
                                  state.json           position, losses, log, the settings
                                  manifest.json        size and sha256 of each file above, written last

The folder is filled under a temporary name and renamed into place, so a checkpoint folder
either is complete or does not exist; the manifest is checked again when it is read. A new
checkpoint gets the next number and the older ones are removed only after it is in place, so a
kill at any moment leaves at least one complete checkpoint (or none, before the first save).
Unchanged best weights are hard-linked from the previous checkpoint, not copied.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prunerec.errors import PrunerecError
from prunerec.io import atomic_dir, crash_point, file_digest, write_json

PREFIX = "checkpoint-"
WEIGHTS, BEST, OPTIMIZER, STATE, MANIFEST = (
    "weights.safetensors", "best.safetensors", "optimizer.pt", "state.json", "manifest.json")


def _number(folder: Path) -> int:
    suffix = folder.name[len(PREFIX):]
    return int(suffix) if suffix.isdigit() else -1


def checkpoints(state_dir: str | Path) -> list[Path]:
    """The complete checkpoint folders in `state_dir`, oldest first."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return []
    found = [p for p in state_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and _number(p) >= 0]
    return sorted(found, key=_number)


def latest(state_dir: str | Path) -> Path | None:
    found = checkpoints(state_dir)
    return found[-1] if found else None


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def _manifest(folder: Path) -> dict:
    digests: dict[tuple[int, int], str] = {}  # hard links (best = weights) are read once
    manifest = {}
    for path in sorted(folder.iterdir()):
        if path.name == MANIFEST:
            continue
        info = path.stat()
        key = (info.st_dev, info.st_ino)
        if key not in digests:
            digests[key] = file_digest(path).hexdigest()
        manifest[path.name] = {"bytes": info.st_size, "sha256": digests[key]}
    return manifest


def write(state_dir: str | Path, weights: dict[str, torch.Tensor], trainer_state: dict, state: dict,
          best_is_current: bool) -> Path:
    """Write a new checkpoint; `best_is_current` says the current weights are the best so far."""
    state_dir = Path(state_dir)
    previous = latest(state_dir)
    target = state_dir / f"{PREFIX}{(_number(previous) if previous else 0) + 1:06d}"
    with atomic_dir(target) as tmp:
        try:
            save_file(weights, str(tmp / WEIGHTS))
            if best_is_current:
                _link_or_copy(tmp / WEIGHTS, tmp / BEST)
            elif previous is not None and (previous / BEST).is_file():
                _link_or_copy(previous / BEST, tmp / BEST)
            torch.save(trainer_state, tmp / OPTIMIZER)
        except OSError:
            raise
        except Exception as err:  # torch and safetensors report a failed write (e.g. a full disk) their own way
            raise PrunerecError(f"{target}: cannot write the checkpoint ({type(err).__name__}: {err}); if the disk "
                                "is full, free some space and rerun with --resume") from None
        crash_point("checkpoint")
        write_json(tmp / STATE, state)
        write_json(tmp / MANIFEST, _manifest(tmp))
    for old in checkpoints(state_dir):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def verify(folder: Path) -> None:
    """Refuse a checkpoint whose files differ from its manifest (damaged after it was written)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise PrunerecError(f"{folder}: checkpoint without {MANIFEST}; rerun with --overwrite to start again")
    expected = json.loads(manifest_path.read_text())
    if _manifest(folder) != expected:
        raise PrunerecError(f"{folder}: checkpoint files do not match {MANIFEST} (damaged); "
                            "rerun with --overwrite to start again")


def read(folder: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(weights, optimizer/scheduler/RNG state, state.json) of a verified checkpoint."""
    verify(folder)
    state = json.loads((folder / STATE).read_text())
    trainer_state = torch.load(folder / OPTIMIZER, weights_only=True, map_location="cpu")
    return load_file(str(folder / WEIGHTS)), trainer_state, state


def read_state(state_dir: str | Path) -> dict | None:
    """state.json of the latest checkpoint (None when there is none)."""
    folder = latest(state_dir)
    return json.loads((folder / STATE).read_text()) if folder else None


def best_weights(state_dir: str | Path) -> dict[str, torch.Tensor] | None:
    folder = latest(state_dir)
    return load_file(str(folder / BEST)) if folder and (folder / BEST).is_file() else None
