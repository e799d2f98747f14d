"""The teacher's work, kept on disk: its final hidden states where a response token is predicted.

The teacher is frozen, so on CPUs its forward pass (a third of a distillation step when the
student is small) is the same work every time an example comes round: in each stage's
distillation (they walk the training set in the same order), in a resumed run, and in every
other compression of the same base. The cache keeps, per example, the teacher's last hidden
states at the positions whose next token is a response token; the teacher's logits are then
its LM head on them, the same numbers the full forward gives.

Layout of a cache folder (one per teacher, named by the teacher's fingerprint):
- `hidden.f32`: float32 rows of `hidden_size` values, appended;
- `index.tsv`: `key<TAB>first row<TAB>rows`, one line per example, written after its rows, so
  a process killed in between leaves rows without a line: never read, never harmful.
Appends take an exclusive lock on the index, so processes may share a folder.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["TeacherCache", "example_keys", "teacher_logits"]

INDEX, DATA = "index.tsv", "hidden.f32"


def example_keys(batch: dict) -> list[str]:
    """One key per row of a collated batch: its tokens and the positions the loss predicts from."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    rows, cols = batch["predict_rows"].tolist(), batch["predict_cols"].tolist()
    positions: list[list[int]] = [[] for _ in lengths]
    for row, col in zip(rows, cols):
        positions[row].append(col)
    ids = batch["input_ids"].cpu()
    keys = []
    for row, length in enumerate(lengths):
        digest = hashlib.sha1(ids[row, :length].numpy().astype(np.int64).tobytes())
        digest.update(np.asarray(positions[row], dtype=np.int64).tobytes())
        keys.append(digest.hexdigest())
    return keys


class TeacherCache:
    def __init__(self, folder: str | os.PathLike, hidden_size: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hidden_size = hidden_size
        self.row_bytes = 4 * hidden_size
        self.index: dict[str, tuple[int, int]] = {}
        self.hits = self.misses = 0
        self._read_index()

    def _read_index(self) -> None:
        path, data = self.folder / INDEX, self.folder / DATA
        if not path.is_file():
            return
        rows_on_disk = data.stat().st_size // self.row_bytes if data.is_file() else 0
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
                continue  # a line cut short by a kill
            first, count = int(parts[1]), int(parts[2])
            if first + count <= rows_on_disk:
                self.index[parts[0]] = (first, count)

    def get(self, key: str) -> torch.Tensor | None:
        where = self.index.get(key)
        if where is None:
            self.misses += 1
            return None
        self.hits += 1
        first, count = where
        with open(self.folder / DATA, "rb") as f:
            f.seek(first * self.row_bytes)
            raw = f.read(count * self.row_bytes)
        return torch.from_numpy(np.frombuffer(raw, dtype=np.float32).reshape(count, self.hidden_size).copy())

    def put(self, items: list[tuple[str, torch.Tensor]]) -> None:
        """Append [rows, hidden_size] tensors under their keys."""
        with open(self.folder / INDEX, "a") as index:
            fcntl.flock(index, fcntl.LOCK_EX)
            try:
                with open(self.folder / DATA, "ab") as data:
                    size = data.seek(0, os.SEEK_END)
                    if size % self.row_bytes:  # a row cut short by a kill: pad it, never read
                        data.write(b"\0" * (self.row_bytes - size % self.row_bytes))
                    first = -(-size // self.row_bytes)
                    lines = []
                    for key, hidden in items:
                        values = hidden.detach().to("cpu", torch.float32).contiguous().numpy()
                        data.write(values.tobytes())
                        lines.append((key, first, values.shape[0]))
                        first += values.shape[0]
                    data.flush()
                    os.fsync(data.fileno())
                index.write("".join(f"{key}\t{start}\t{count}\n" for key, start, count in lines))
                index.flush()
            finally:
                fcntl.flock(index, fcntl.LOCK_UN)
        self.index.update({key: (start, count) for key, start, count in lines})


def _hidden_at_predictions(teacher, batch: dict, rows: list[int]) -> list[torch.Tensor]:
    """The teacher's last hidden states where each of `rows` predicts a response token."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if len(rows) < len(ids):  # only the rows not cached yet, trimmed to their longest
        pick = torch.tensor(rows, device=ids.device)
        width = int(mask[pick].sum(dim=1).max())
        ids, mask = ids[pick, :width], mask[pick, :width]
    with torch.autocast(ids.device.type, enabled=False):  # exact under a bf16 run: the cache is shared
        hidden = teacher.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return [hidden[local, batch["predict_cols"][batch["predict_rows"] == row]] for local, row in enumerate(rows)]


@torch.no_grad()
def teacher_logits(teacher, batch: dict, cache: TeacherCache) -> torch.Tensor:
    """`batching.response_logits(teacher, batch)`, with the teacher's hidden states from the
    cache where it has them (the rest computed and added)."""
    if batch["predict_rows"].numel() and bool((batch["predict_rows"].diff() < 0).any()):
        raise ValueError("predict_rows must be grouped by row, in order (as collate makes them)")
    keys = example_keys(batch)
    found = [cache.get(key) for key in keys]
    missing = [row for row, hidden in enumerate(found) if hidden is None]
    if missing:
        computed = _hidden_at_predictions(teacher, batch, missing)
        cache.put([(keys[row], hidden) for row, hidden in zip(missing, computed)])
        for row, hidden in zip(missing, computed):
            found[row] = hidden
    weight = teacher.lm_head.weight
    hidden = torch.cat([h.to(weight.device, weight.dtype) for h in found])
    return teacher.lm_head(hidden)
