"""What the load test sends and how each answer is checked (shared by the locustfile and the
runner; no locust import here, so the runner may import it beside anything).

Request bodies are `{"history": [item ids], "k": K}` built from a prepared data folder's test
split (prunerec.data.catalog), or read from a JSONL file of bodies. An answer passes when it is
200, holds k items, and every item's id is a catalog id whose title is the item's title.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

from prunerec.errors import PrunerecError

# Failure messages of the answer check; the report counts failures by these prefixes.
ANSWER_MALFORMED = "answer check: the body is not a JSON object with an items list"
ANSWER_NOT_CATALOG = "answer check: an item is not a catalog item (unknown id or title mismatch)"
ANSWER_WRONG_COUNT = "answer check: not k items"

DEFAULT_K = 10


def auth_headers() -> dict:
    """The bearer token of PRUNEREC_API_KEY, when set (as `prunerec serve` reads it)."""
    key = os.environ.get("PRUNEREC_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def check_answer(body, k: int, titles: tuple[str, ...] | None) -> str | None:
    """None when a 200 answer's body is right; otherwise the failure message (one of ANSWER_*).
    `titles` (index = item id) may be None: then ids and titles are not checked."""
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        return ANSWER_MALFORMED
    if titles is not None:
        for item in items:
            item_id = item.get("id")
            real = isinstance(item_id, int) and not isinstance(item_id, bool) and 0 <= item_id < len(titles)
            if not real or titles[item_id] != item.get("title"):
                return ANSWER_NOT_CATALOG
    if len(items) != k:
        return ANSWER_WRONG_COUNT
    return None


def bodies_from_data(data_dir: str | Path, k: int = DEFAULT_K,
                     split: str = "test") -> tuple[list[dict], tuple[str, ...]]:
    """Request bodies (one per sample of `split`, history oldest first) and the catalog titles."""
    from prunerec.data.catalog import load_dataset

    dataset = load_dataset(data_dir, splits=(split,))
    bodies = [{"history": list(sample.history), "k": k} for sample in dataset[split]]
    if not bodies:
        raise PrunerecError(f"{data_dir}: the {split} split holds no samples to send")
    return bodies, dataset.catalog.titles


def bodies_from_jsonl(path: str | Path, k: int = DEFAULT_K) -> list[dict]:
    """Request bodies from a JSONL file, one JSON object with a non-empty "history" a line
    (a missing "k" becomes `k`)."""
    from prunerec.data.catalog import json_lines

    path = Path(path)
    bodies = []
    for number, body in json_lines(path):
        if not isinstance(body.get("history"), list) or not body["history"]:
            raise PrunerecError(f'{path}:{number}: expected a JSON object with a non-empty "history" list')
        bodies.append({"k": k, **body})
    if not bodies:
        raise PrunerecError(f"{path}: no request bodies")
    return bodies


def catalog_titles(path: str | Path) -> tuple[str, ...]:
    """Titles by item id from an items.jsonl file or a prepared data folder."""
    from prunerec.data.catalog import load_catalog

    path = Path(path)
    return load_catalog(path / "items.jsonl" if path.is_dir() else path).titles


def shuffled(bodies: list[dict], seed: int = 0) -> list[dict]:
    """A fixed order (the same for baseline and candidate), not the file's (often by time)."""
    order = list(bodies)
    random.Random(seed).shuffle(order)
    return order
