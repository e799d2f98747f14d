import math
import random

import pytest

from prunerec.evaluate import metrics


def test_hand_made_rankings():
    rankings = [["a", "b", "c"], ["x", "y", "z"], ["q", "r", "t"]]
    targets = ["a", "z", "missing"]
    rows = [metrics.user_metrics(metrics.hit_rank(r, t), ks=(1, 3)) for r, t in zip(rankings, targets)]
    assert rows[0] == {"HR@1": 1.0, "NDCG@1": 1.0, "HR@3": 1.0, "NDCG@3": 1.0}
    assert rows[1]["HR@1"] == 0.0 and rows[1]["HR@3"] == 1.0
    assert rows[1]["NDCG@3"] == pytest.approx(1 / math.log2(4)) == 0.5
    assert rows[2] == {"HR@1": 0.0, "NDCG@1": 0.0, "HR@3": 0.0, "NDCG@3": 0.0}
    mean = metrics.average(rows)
    assert mean["HR@3"] == pytest.approx(2 / 3)
    assert mean["NDCG@3"] == pytest.approx((1 + 0.5) / 3)
    assert mean["HR@1"] == pytest.approx(1 / 3)


def test_rank_beyond_k_is_a_miss():
    row = metrics.user_metrics(metrics.hit_rank(list(range(30)), 12), ks=(10, 20))
    assert row["HR@10"] == 0.0 and row["HR@20"] == 1.0
    assert row["NDCG@20"] == pytest.approx(1 / math.log2(14))


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    rows = [metrics.user_metrics(0 if i % 4 == 0 else None, ks=(1,)) for i in range(400)]
    ci = metrics.bootstrap_ci(rows, samples=300, seed=1)
    lo, hi = ci["HR@1"]
    assert lo < 0.25 < hi and hi - lo < 0.12
    assert ci == metrics.bootstrap_ci(rows, samples=300, seed=1)
    constant = metrics.bootstrap_ci([{"HR@1": 1.0}] * 10, samples=50)
    assert constant["HR@1"] == (1.0, 1.0)


def test_popularity_ranking_counts_and_breaks_ties_by_id():
    assert metrics.popularity_ranking([3, 1, 3, 2, 1, 3, 5], 3) == [3, 1, 2]
    with pytest.raises(ValueError):
        metrics.average([])


def test_paired_ratio_interval_brackets_the_ratio_and_pairs_users():
    base = [{"HR@1": float(i % 4 == 0)} for i in range(400)]
    same = [dict(row) for row in base]
    assert metrics.paired_ratio_ci(same, base, samples=300, seed=2)["HR@1"] == (1.0, 1.0)  # paired: no spread
    noisy = [{"HR@1": float(i % 5 == 0)} for i in range(400)]
    lo, hi = metrics.paired_ratio_ci(noisy, base, samples=300, seed=2)["HR@1"]
    assert lo < 80 / 100 < hi
    assert metrics.paired_ratio_ci([{"HR@1": 0.0}] * 5, [{"HR@1": 0.0}] * 5, samples=50)["HR@1"] is None
    with pytest.raises(ValueError):
        metrics.paired_ratio_ci(same[:3], base, samples=10)


def test_ratios_hold_the_point_ratio_and_its_paired_interval():
    base = [{"HR@1": float(i % 4 == 0), "NDCG@1": 0.0} for i in range(400)]
    candidate = [{"HR@1": float(i % 5 == 0), "NDCG@1": 1.0} for i in range(400)]
    out = metrics.ratios(candidate, base, samples=300, seed=2)
    assert set(out) == {"HR@1"}  # the base scores 0 on NDCG@1: no ratio
    assert out["HR@1"]["ratio"] == pytest.approx(80 / 100)
    assert tuple(out["HR@1"]["ci95"]) == metrics.paired_ratio_ci(candidate, base, samples=300, seed=2)["HR@1"]


def _bootstrap_one_by_one(candidate, base, samples, seed):
    """The plain definition: resample users with random.Random(seed).randrange, one index at a
    time; the mean of each metric (base None) or the paired ratio of means."""
    rng, n = random.Random(seed), len(candidate)
    draws = {k: [] for k in candidate[0]}
    for _ in range(samples):
        picks = [rng.randrange(n) for _ in range(n)]
        for k in draws:
            top = sum(candidate[i][k] for i in picks)
            bottom = n if base is None else sum(base[i][k] for i in picks)
            if bottom > 0:
                draws[k].append(top / bottom)
    return {k: metrics._percentile_interval(v, 0.95) if len(v) >= samples // 2 else None for k, v in draws.items()}


@pytest.mark.parametrize("users", [1, 7, 300, 1001])
def test_bulk_resampling_draws_exactly_the_users_randrange_draws(users):
    gen = random.Random(users)
    base = [metrics.user_metrics(gen.choice([0, 2, 9, None, None]), ks=(1, 10)) for _ in range(users)]
    candidate = [metrics.user_metrics(gen.choice([1, 4, None, None]), ks=(1, 10)) for _ in range(users)]
    for got, want in ((metrics.bootstrap_ci(candidate, samples=200, seed=3),
                       _bootstrap_one_by_one(candidate, None, 200, 3)),
                      (metrics.paired_ratio_ci(candidate, base, samples=200, seed=3),
                       _bootstrap_one_by_one(candidate, base, 200, 3))):
        assert got.keys() == want.keys()
        for k in want:
            assert (got[k] is None) == (want[k] is None)
            if want[k] is not None:
                assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-15)


def test_paired_difference_interval_is_paired_and_centred_on_the_difference():
    base = [{"HR@1": float(i % 4 == 0)} for i in range(400)]       # 0.25
    better = [{"HR@1": float(i % 2 == 0)} for i in range(400)]     # 0.50, a hit wherever base has one
    lo, hi = metrics.paired_difference_ci(better, base, samples=300, seed=1)["HR@1"]
    assert 0 < lo < 0.25 < hi
    assert metrics.paired_difference_ci(base, base, samples=50)["HR@1"] == (0.0, 0.0)  # paired: no spread
    shuffled = [{"HR@1": float(i % 4 == 1)} for i in range(400)]   # same mean, other users
    lo, hi = metrics.paired_difference_ci(shuffled, base, samples=300, seed=1)["HR@1"]
    assert lo < 0 < hi
    with pytest.raises(ValueError):
        metrics.paired_difference_ci(base[:3], base, samples=10)


def test_top_overlap_counts_shared_items_of_the_top_k():
    assert metrics.top_overlap(["a", "b", "c", "d"], ["b", "a", "x", "d"], 2) == 1.0
    assert metrics.top_overlap(["a", "b", "c", "d"], ["b", "a", "x", "d"], 3) == 2 / 3
    assert metrics.top_overlap(["a"], ["b"], 1) == 0.0
    assert metrics.top_overlap(["a", "b"], ["a", "b"], 10) == 0.2  # a short list holds at most its length
    with pytest.raises(ValueError):
        metrics.top_overlap(["a"], ["a"], 0)
