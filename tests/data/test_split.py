import pytest

from prunerec.data.amazon import chronological_split
from prunerec.data.catalog import Sample
from prunerec.data.split import check_fractions, chronological_bounds
from prunerec.errors import PrunerecError


def test_bounds_by_fraction_when_times_are_distinct():
    assert chronological_bounds(list(range(10))) == {"train": (0, 8), "valid": (8, 9), "test": (9, 10)}


def test_a_cut_moves_past_every_sample_of_the_same_time():
    # the 80% cut (16) falls between the two samples at time 15: both go to train
    times = list(range(15)) + [15, 15, 16, 17, 18]
    bounds = chronological_bounds(times)
    assert bounds == {"train": (0, 17), "valid": (17, 18), "test": (18, 20)}


def test_one_time_for_everything_is_all_train():
    assert chronological_bounds([5] * 7) == {"train": (0, 7), "valid": (7, 7), "test": (7, 7)}


def test_amazon_split_keeps_one_timestamp_in_one_split():
    timed = [(t, Sample(user, (0,), user)) for user, t in enumerate([1, 2, 3, 4, 5, 6, 7, 8, 8, 10])]
    splits = chronological_split(timed)
    assert [s.user for s in splits["train"]] == list(range(9))   # both samples at time 8
    assert [s.user for s in splits["test"]] == [9] and splits["valid"] == []


def test_fractions_are_checked_and_normalised():
    assert check_fractions((8, 1, 1)) == (0.8, 0.1, 0.1)
    for bad in [(0.5, 0.5), (1, -1, 1), ("a", 1, 1), (0, 0, 0), None]:
        with pytest.raises(PrunerecError, match="three"):
            check_fractions(bad)
