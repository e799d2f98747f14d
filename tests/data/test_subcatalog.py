from pathlib import Path

from prunerec.data.catalog import Catalog, Dataset, Sample
from prunerec.data.subcatalog import restrict_to_top, top_items


def test_top_items_and_restriction_by_hand():
    catalog = Catalog.from_titles(["a", "b", "c", "d"])
    train = [Sample(1, (0,), 2), Sample(1, (0, 2), 2), Sample(2, (3,), 1), Sample(2, (3, 1), 2), Sample(3, (2,), 1)]
    test = [Sample(4, (3, 0), 1), Sample(5, (3,), 2), Sample(6, (1,), 0)]
    data = Dataset(Path("."), catalog, {"train": train, "valid": [], "test": test})
    assert top_items(train, 2) == [2, 1]  # counts: item 2 x3, item 1 x2
    sub, splits = restrict_to_top(data, 2)
    assert sub.titles == ("b", "c")  # kept in original id order: 1 -> 0, 2 -> 1
    # rows with a target outside, or an empty history once outside items are dropped, disappear
    assert splits["train"] == [Sample(1, (1,), 1), Sample(2, (0,), 1), Sample(3, (1,), 0)]
    assert splits["test"] == []
