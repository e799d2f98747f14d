import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many tiny runs: one thread avoids contention on busy 2-core machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small demo data set written once per test session."""
    from prunerec.data.demo import write_demo

    out = tmp_path_factory.mktemp("demo") / "data"
    write_demo(out, seed=0, n_items=400, n_users=500)
    return out
