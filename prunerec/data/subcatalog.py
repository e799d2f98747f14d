"""A sub-catalog variant of a prepared data set: the N most popular items and the rows about them."""
from __future__ import annotations

from collections import Counter

from prunerec.data.catalog import Catalog, Dataset, Sample


def top_items(train: list[Sample], n_items: int) -> list[int]:
    """The n most frequent training targets (ties: lower id first); train only, so no leakage."""
    counts = Counter(s.target for s in train)
    return sorted(counts, key=lambda i: (-counts[i], i))[:n_items]


def restrict_sample(sample: Sample, new_id: dict[int, int]) -> Sample | None:
    """The sample in the new ids, with history items outside the sub-catalog dropped; None if unusable."""
    if sample.target not in new_id:
        return None
    history = tuple(new_id[i] for i in sample.history if i in new_id)
    if not history:
        return None
    targets = tuple(new_id[i] for i in sample.targets if i in new_id) if sample.targets is not None else None
    return Sample(sample.user, history, new_id[sample.target], targets)


def restrict_to_top(data: Dataset, n_items: int) -> tuple[Catalog, dict[str, list[Sample]]]:
    keep = sorted(top_items(data["train"], n_items))
    new_id = {old: new for new, old in enumerate(keep)}
    asins = [data.catalog.asins[i] for i in keep] if data.catalog.asins else None
    catalog = Catalog.from_titles([data.catalog.title(i) for i in keep], asins)
    splits = {}
    for name, samples in data.splits.items():
        restricted = (restrict_sample(s, new_id) for s in samples)
        splits[name] = [s for s in restricted if s is not None]
    return catalog, splits
