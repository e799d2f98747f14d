"""The global chronological split shared by every data source: samples ordered by the target's
time, cut into train / valid / test by fractions, never splitting one timestamp across two splits
(samples with the same time land in the same split, whatever their order among themselves)."""
from __future__ import annotations

from collections.abc import Sequence

from prunerec.errors import PrunerecError

SPLITS = ("train", "valid", "test")


def check_fractions(split) -> tuple[float, float, float]:
    """Three non-negative fractions, normalised to sum to 1."""
    try:
        values = tuple(float(v) for v in split)
    except (TypeError, ValueError):
        raise PrunerecError(f"split must be three fractions like (0.8, 0.1, 0.1), got {split!r}") from None
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise PrunerecError(f"split must be three non-negative fractions like (0.8, 0.1, 0.1), got {split!r}")
    total = sum(values)
    return tuple(v / total for v in values)  # type: ignore[return-value]


def chronological_bounds(times: Sequence[int], split=(0.8, 0.1, 0.1)) -> dict[str, tuple[int, int]]:
    """(start, end) of each split over `times`, sorted ascending: a cut at a fraction moves
    forward past every sample sharing the time just before it."""
    fractions = check_fractions(split)
    n = len(times)

    def cut(fraction: float) -> int:
        at = round(fraction * n)
        while 0 < at < n and times[at] == times[at - 1]:
            at += 1
        return at

    train_end = cut(fractions[0])
    valid_end = max(train_end, cut(fractions[0] + fractions[1]))
    return {"train": (0, train_end), "valid": (train_end, valid_end), "test": (valid_end, n)}
