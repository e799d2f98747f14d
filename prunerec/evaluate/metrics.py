"""Ranking metrics: HR@K and NDCG@K for one held-out target, averaged over users."""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (1, 3, 5, 10, 20)


def hit_rank(ranked: Sequence, target) -> int | None:
    """0-based rank of the target in the ranked list, or None if absent."""
    for rank, item in enumerate(ranked):
        if item == target:
            return rank
    return None


def user_metrics(rank: int | None, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """HR@K and NDCG@K of one user; NDCG = 1/log2(rank+2) for a hit within K."""
    row = {}
    for k in ks:
        hit = rank is not None and rank < k
        row[f"HR@{k}"] = 1.0 if hit else 0.0
        row[f"NDCG@{k}"] = 1.0 / math.log2(rank + 2) if hit else 0.0
    return row


def average(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    if not rows:
        raise ValueError("no users to average over")
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}


def bootstrap_ci(rows: Sequence[dict[str, float]], *, samples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric's mean over users."""
    if not rows:
        raise ValueError("no users to bootstrap")
    names = list(rows[0])
    means = _resampled_sums(_matrix(rows, names), samples, seed) / len(rows)
    return {name: _percentile_interval(means[:, j].tolist(), level) for j, name in enumerate(names)}


def _matrix(rows: Sequence[dict[str, float]], names: Sequence[str]) -> np.ndarray:
    """[users, metrics] float64 array of the rows' values of `names`."""
    return np.array([[r[k] for k in names] for r in rows], dtype=np.float64).reshape(len(rows), len(names))


def _resampled_sums(columns: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """[samples, metrics]: each column's sum over every bootstrap resample of the users (rows)."""
    return np.stack([columns[picks].sum(axis=0) for picks in _resamples(len(columns), samples, seed)])


def _twister(seed: int) -> np.random.MT19937:
    """numpy's Mersenne Twister in the state of random.Random(seed)."""
    state = random.Random(seed).getstate()[1]
    generator = np.random.MT19937(0)
    generator.state = {"bit_generator": "MT19937",
                       "state": {"key": np.array(state[:624], dtype=np.uint32), "pos": state[624]}}
    return generator


def _resamples(n: int, samples: int, seed: int):
    """`samples` arrays of n user indices drawn with replacement: exactly the indices that
    `random.Random(seed).randrange(n)` would draw one by one (its rejection sampling on the top
    bits of each 32-bit output), made in bulk from the same generator state."""
    if not 0 < n < 2 ** 32:
        raise ValueError(f"cannot resample {n} users")
    generator, shift, pending = _twister(seed), np.uint64(32 - n.bit_length()), np.empty(0, dtype=np.int64)
    for _ in range(samples):
        while len(pending) < n:
            raw = generator.random_raw(2 * n + 64) >> shift  # at least half of them are < n
            pending = np.concatenate([pending, raw[raw < n].astype(np.int64)])
        yield pending[:n]
        pending = pending[n:]


def _percentile_interval(values: Sequence[float], level: float) -> tuple[float, float]:
    ordered = sorted(values)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    return ordered[int(lo_q * (len(ordered) - 1))], ordered[int(round(hi_q * (len(ordered) - 1)))]


def paired_ratio_ci(candidate: Sequence[dict[str, float]], base: Sequence[dict[str, float]], *,
                    samples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float] | None]:
    """Percentile bootstrap interval of mean(candidate) / mean(base) per metric, resampling the
    same users for both (rows are aligned by user). None where the base mean of a resample is 0."""
    if len(candidate) != len(base) or not base:
        raise ValueError(f"need aligned, non-empty rows, got {len(candidate)} and {len(base)}")
    names = list(base[0])
    # one pass over the resamples for both: candidate columns, then base columns
    sums = _resampled_sums(np.hstack([_matrix(candidate, names), _matrix(base, names)]), samples, seed)
    tops, bottoms = sums[:, :len(names)], sums[:, len(names):]
    intervals = {}
    for j, name in enumerate(names):
        kept = bottoms[:, j] > 0
        ratios = (tops[kept, j] / bottoms[kept, j]).tolist()
        intervals[name] = _percentile_interval(ratios, level) if len(ratios) >= samples // 2 else None
    return intervals


def paired_difference_ci(candidate: Sequence[dict[str, float]], base: Sequence[dict[str, float]], *,
                         samples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of mean(candidate) - mean(base) per metric, resampling the
    same users for both (rows aligned by user): the interval excludes 0 where one is better."""
    if len(candidate) != len(base) or not base:
        raise ValueError(f"need aligned, non-empty rows, got {len(candidate)} and {len(base)}")
    names = list(base[0])
    differences = _matrix(candidate, names) - _matrix(base, names)
    means = _resampled_sums(differences, samples, seed) / len(base)
    return {name: _percentile_interval(means[:, j].tolist(), level) for j, name in enumerate(names)}


def top_overlap(ranked: Sequence, reference: Sequence, k: int) -> float:
    """Share of `reference`'s top k that `ranked`'s top k holds (1.0: the same k items)."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    return len(set(ranked[:k]) & set(reference[:k])) / k


def ratios(candidate: Sequence[dict[str, float]], base: Sequence[dict[str, float]], *,
           samples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """mean(candidate) / mean(base) per metric with its paired 95% interval (paired_ratio_ci);
    metrics where the base scores 0 are left out."""
    mean, base_mean = average(candidate), average(base)
    intervals = paired_ratio_ci(candidate, base, samples=samples, seed=seed)
    return {k: {"ratio": mean[k] / base_mean[k], "ci95": list(intervals[k])}
            for k in mean if base_mean[k] > 0 and intervals[k] is not None}


def popularity_ranking(targets: Sequence[int], n: int) -> list[int]:
    """Item ids ordered by how often they are a training target (ties: lower id first)."""
    counts: dict[int, int] = {}
    for item in targets:
        counts[item] = counts.get(item, 0) + 1
    return sorted(counts, key=lambda i: (-counts[i], i))[:n]
