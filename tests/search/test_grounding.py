import pytest
import torch

from prunerec.search.grounding import l2_nearest, l2_rank


def test_l2_nearest_orders_by_distance_and_reports_it():
    catalog = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    query = torch.tensor([[0.0, 0.0], [3.0, 3.0]])
    order, distances = l2_nearest(query, catalog, 2)
    assert order == [[1, 2], [0, 2]]
    assert distances == [pytest.approx([1.0, 2.0]), pytest.approx([1.0, 10 ** 0.5])]
    assert l2_rank(query, catalog, 5) == [[1, 2, 0], [0, 2, 1]]  # k above the catalog: all of it
