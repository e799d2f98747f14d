"""The tiny recommender, its data and the real-server helper of tests/serve, reused here."""
from tests.serve.conftest import (  # noqa: F401 - fixtures
    _one_thread,
    data_dir,
    model_dir,
    start_server,
    tokenizer,
)
