import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many tiny runs (see tests.helpers.one_thread)."""
    from tests.helpers import one_thread as single_thread

    with single_thread():
        yield


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small demo data set written once per test session."""
    from prunerec.data.demo import write_demo

    out = tmp_path_factory.mktemp("demo") / "data"
    write_demo(out, seed=0, n_items=400, n_users=500)
    return out
