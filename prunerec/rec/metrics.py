"""Ranking metrics: HR@K and NDCG@K for one held-out target, averaged over users."""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

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
    n = len(rows)
    columns = _columns(rows)
    means = {k: [] for k in columns}
    for picks in _resamples(n, samples, seed):
        for k, col in columns.items():
            means[k].append(sum(col[i] for i in picks) / n)
    return {k: _percentile_interval(means[k], level) for k in columns}


def _columns(rows: Sequence[dict[str, float]]) -> dict[str, list[float]]:
    return {k: [r[k] for r in rows] for k in rows[0]}


def _resamples(n: int, samples: int, seed: int):
    """`samples` lists of n user indices drawn with replacement (seeded)."""
    rng = random.Random(seed)
    for _ in range(samples):
        yield [rng.randrange(n) for _ in range(n)]


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
    base_columns, candidate_columns = _columns(base), _columns(candidate)
    ratios = {k: [] for k in base_columns}
    for picks in _resamples(len(base), samples, seed):
        for k, base_col in base_columns.items():
            denominator = sum(base_col[i] for i in picks)
            if denominator > 0:
                ratios[k].append(sum(candidate_columns[k][i] for i in picks) / denominator)
    return {k: _percentile_interval(values, level) if len(values) >= samples // 2 else None
            for k, values in ratios.items()}


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
