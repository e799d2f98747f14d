"""The uniform prepared data form: a catalog of items and train/valid/test samples.

Folder layout:
  items.jsonl                      {"item_id": int, "title": str, "asin": str?}  ids 0..N-1
  train.jsonl, valid.jsonl, test.jsonl
                                   {"user": int, "history": [item_id, ...], "target": item_id,
                                    "targets": [item_id, ...]?}   history oldest first
Loading validates everything and reports problems as `file:line: what`.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from prunerec.errors import PrunerecError
from prunerec.io import write_json, write_jsonl

SPLITS = ("train", "valid", "test")


class DataError(PrunerecError):
    """A prepared data folder is missing or malformed; the message names file and line."""


def clean_title(raw: str) -> str:
    """Unescape HTML entities and collapse whitespace (Amazon titles hold `&amp;` etc.).

    Entities are unescaped until none is left (`&amp;#8482` -> `&#8482` -> the trade mark sign),
    so cleaning a clean title changes nothing: the catalog saved beside a model equals the data's
    catalog read back. Each pass that changes the text shortens it, so the loop ends."""
    text = raw
    while "&" in text:
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class Catalog:
    titles: tuple[str, ...]  # index = item_id
    asins: tuple[str | None, ...] = ()
    ids_by_title: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False)

    @classmethod
    def from_titles(cls, titles, asins=None) -> Catalog:
        titles = tuple(titles)
        grouped: dict[str, list[int]] = {}
        for item_id, title in enumerate(titles):
            grouped.setdefault(title, []).append(item_id)
        return cls(titles, tuple(asins) if asins else (), {t: tuple(ids) for t, ids in grouped.items()})

    def __len__(self) -> int:
        return len(self.titles)

    def title(self, item_id: int) -> str:
        return self.titles[item_id]

    def first_id(self, title: str) -> int | None:
        ids = self.ids_by_title.get(title)
        return ids[0] if ids else None

    def unique_titles(self) -> list[str]:
        return list(self.ids_by_title)


@dataclass(frozen=True)
class Sample:
    user: int
    history: tuple[int, ...]
    target: int
    targets: tuple[int, ...] | None = None

    def to_json(self) -> dict:
        row = {"user": self.user, "history": list(self.history), "target": self.target}
        if self.targets is not None:
            row["targets"] = list(self.targets)
        return row


@dataclass(frozen=True)
class Dataset:
    root: Path
    catalog: Catalog
    splits: dict[str, list[Sample]]

    def __getitem__(self, split: str) -> list[Sample]:
        if split not in self.splits:
            raise DataError(f"{self.root}: split '{split}' was not loaded (have {sorted(self.splits)})")
        return self.splits[split]


def json_lines(path: Path):
    """(line number, object) of each non-blank line of a JSONL file; DataError naming file:line."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{number}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: malformed JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    titles: dict[int, str] = {}
    asins: dict[int, str | None] = {}
    for number, row in json_lines(path):
        item_id, title = row.get("item_id"), row.get("title")
        if not _is_int(item_id) or item_id < 0:
            raise DataError(f"{path}:{number}: 'item_id' must be a non-negative integer, got {item_id!r}")
        if item_id in titles:
            raise DataError(f"{path}:{number}: duplicate item_id {item_id}")
        if not isinstance(title, str) or not clean_title(title):
            raise DataError(f"{path}:{number}: item {item_id} has no title")
        titles[item_id] = clean_title(title)
        asins[item_id] = row.get("asin")
    if not titles:
        raise DataError(f"{path}: no items")
    missing = sorted(set(range(len(titles))) - set(titles))
    if missing:
        raise DataError(f"{path}: item ids must be 0..{len(titles) - 1}; missing e.g. {missing[:5]}")
    order = range(len(titles))
    return Catalog.from_titles([titles[i] for i in order], [asins[i] for i in order])


def _item_ids(value, name: str, where: str, n_items: int) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise DataError(f"{where}: '{name}' must be a list of item ids")
    for item_id in value:
        if not _is_int(item_id):
            raise DataError(f"{where}: '{name}' holds a non-integer {item_id!r}")
        if not 0 <= item_id < n_items:
            raise DataError(f"{where}: unknown item id {item_id} in '{name}' (catalog has 0..{n_items - 1})")
    return tuple(value)


def load_split(path: str | Path, catalog: Catalog) -> list[Sample]:
    path = Path(path)
    samples = []
    for number, row in json_lines(path):
        where = f"{path}:{number}"
        user, target = row.get("user"), row.get("target")
        if not _is_int(user):
            raise DataError(f"{where}: 'user' must be an integer, got {user!r}")
        history = _item_ids(row.get("history"), "history", where, len(catalog))
        if not history:
            raise DataError(f"{where}: empty history")
        (target,) = _item_ids([target], "target", where, len(catalog)) if _is_int(target) else (None,)
        if target is None:
            raise DataError(f"{where}: 'target' must be an item id, got {row.get('target')!r}")
        targets = row.get("targets")
        if targets is not None:
            targets = _item_ids(targets, "targets", where, len(catalog))
        samples.append(Sample(user, history, target, targets))
    return samples


def load_dataset(root: str | Path, splits=SPLITS) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    catalog = load_catalog(root / "items.jsonl")
    return Dataset(root, catalog, {name: load_split(root / f"{name}.jsonl", catalog) for name in splits})


def write_dataset(root: str | Path, catalog: Catalog, splits: dict[str, list[Sample]],
                  stats: dict | None = None) -> None:
    """Write a prepared folder; every file is written atomically."""
    root = Path(root)
    rows = ({"item_id": i, "title": t, **({"asin": catalog.asins[i]} if catalog.asins and catalog.asins[i] else {})}
            for i, t in enumerate(catalog.titles))
    write_jsonl(root / "items.jsonl", rows)
    for name, samples in splits.items():
        write_jsonl(root / f"{name}.jsonl", (s.to_json() for s in samples))
    counts = {"items": len(catalog), **{f"{name}_samples": len(s) for name, s in splits.items()}}
    write_json(root / "stats.json", {**counts, **(stats or {})})


def data_category(data_dir: str | Path) -> str:
    """The category a prepared data set names in its stats.json (or "catalog")."""
    stats = Path(data_dir) / "stats.json"
    if stats.is_file():
        try:
            return json.loads(stats.read_text()).get("category") or "catalog"
        except json.JSONDecodeError:
            pass
    return "catalog"
