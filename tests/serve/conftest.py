"""Tiny recommenders and a helper that runs the real `prunerec serve` process on a free port."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from prunerec.data.catalog import Catalog, Sample, write_dataset
from prunerec.io import free_port
from prunerec.model.checkpoint import RecModel
from prunerec.model.prompt import PromptSettings
from tests.helpers import TITLES, one_thread, tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
SETTINGS = PromptSettings(template="compact", category="games", max_history=5, cutoff_tokens=128)
EXTRA = ["Halo 3", "Halo 3: ODST", "Mario Party 10", "Mario Tennis Aces", "Zelda: Breath of the Wild",
         "Forza Motorsport 7", "Gears 5", "Minecraft - Xbox One", "The Sims 3", "Portal", "Tetris 99",
         "Celeste", "Hades", "Doom Eternal", "Doom 64", "Fallout 4", "Fallout 76", "Skyrim - PC",
         "Stardew Valley", "Overcooked! 2"]
# 32 unique titles; the last item repeats "Zelda" (id 5): a title maps to its first id
CATALOG_TITLES = TITLES + EXTRA + ["Zelda"]
DUPLICATE_ID, DUPLICATE_OF = len(CATALOG_TITLES) - 1, 5


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="package")
def tokenizer():
    return tiny_tokenizer(titles=CATALOG_TITLES, vocab_size=420)


def _save(model, tokenizer, out: Path) -> Path:
    RecModel(model, tokenizer, Catalog.from_titles(CATALOG_TITLES), SETTINGS, {"base": "serve test"}).save(out)
    return out


# head_dim 32: vLLM's CPU attention supports head sizes 32, 64, 80, ... only
@pytest.fixture(scope="package")
def model_dir(tmp_path_factory, tokenizer):
    """hidden 64 = 2 query heads x 32 over 1 KV head. Large initial weights make the ranking
    peaked (no near ties that rounding differences between engines could swap)."""
    model = tiny_model(len(tokenizer), tokenizer.eos_token_id, seed=3, initializer_range=0.3, hidden_size=64,
                       intermediate_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    return _save(model, tokenizer, tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="package")
def odd_dir(tmp_path_factory, tokenizer):
    """Head-pruned: 2 of 4 query heads kept (one per KV group), 2 x 32 = 64 != hidden 128 (vLLM's
    native Qwen2 would ignore head_dim)."""
    from prunerec.model.surgery import keep_attention_heads

    model = tiny_model(len(tokenizer), tokenizer.eos_token_id, seed=4, initializer_range=0.3, hidden_size=128,
                       intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    keep_attention_heads(model, [[0, 1], [0, 1]], [[0, 2], [1, 3]])
    assert model.config.num_attention_heads * model.config.head_dim != model.config.hidden_size
    return _save(model, tokenizer, tmp_path_factory.mktemp("serve") / "odd")


USERS = [  # (user, history ids oldest first): a long one (cut to max_history 5), the duplicate title, short ones
    (0, (0, 1, 2, 3, 4, 5, 6)),
    (1, (DUPLICATE_ID, 12)),
    (2, (7,)),
    (3, (20, 21, 22)),
    (4, (30, 11, 9, 8)),
    (5, (15,)),
]


@pytest.fixture(scope="package")
def data_dir(tmp_path_factory):
    rows = [Sample(user, history, (user + 1) % len(CATALOG_TITLES)) for user, history in USERS]
    root = tmp_path_factory.mktemp("serve-data") / "data"
    write_dataset(root, Catalog.from_titles(CATALOG_TITLES), {"train": rows, "valid": rows, "test": rows})
    return root


def evaluate_rankings(model_dir, data_dir, beams=20) -> dict[int, list[str]]:
    """`prunerec evaluate`'s constrained ranking (TorchStepper) of every test user, by user."""
    from prunerec.evaluate.options import EvalOptions
    from prunerec.evaluate.pipeline import evaluate_model
    from prunerec.model.checkpoint import load_rec_model

    rec = load_rec_model(str(model_dir))
    report = evaluate_model(rec, data_dir, EvalOptions(grounding="trie", beams=beams, bootstrap=10))
    return {row["user"]: row["trie"] for row in report["rankings"]}


class FewerResults:
    """An engine whose constrained search finds only `n` titles."""

    def __init__(self, inner, n):
        self.inner, self.n, self.name = inner, n, "torch"

    def rank(self, prompt, num_beams, deadline):
        return self.inner.rank(prompt, num_beams, deadline)[:self.n]

    def generate(self, prompt, max_new_tokens, deadline):
        return self.inner.generate(prompt, max_new_tokens, deadline)

    def torch_model(self):
        return self.inner.torch_model()


class Server:
    """`python -m prunerec.serve.cli ...` (the `prunerec serve` command) as a real process."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "prunerec.serve.cli", *args, "--port", str(self.port)],
                                     cwd=REPO, env=environment, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 120, headers=None) -> dict:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            try:
                response = requests.get(self.url + "/ready", headers=headers, timeout=5)
                if response.status_code == 200:
                    return response.json()
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.output()[-4000:]}")

    def post(self, body, headers=None, timeout: float = 60, **kwargs) -> requests.Response:
        if not isinstance(body, (dict, list)):  # raw bytes/str, or a generator (sent chunked)
            return requests.post(self.url + "/v1/recommend", data=body, headers=headers, timeout=timeout, **kwargs)
        return requests.post(self.url + "/v1/recommend", json=body, headers=headers, timeout=timeout, **kwargs)

    def get(self, path: str, headers=None) -> requests.Response:
        return requests.get(self.url + path, headers=headers, timeout=30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code (kills and fails if the process does not end)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired as err:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"server ignored SIGTERM for {timeout} s:\n{self.output()[-4000:]}"
                ) from err
        self.log.close()
        return self.proc.returncode


def ready_server(args, log_path: Path, env: dict | None = None, timeout: float = 400) -> Server:
    """A started server that answered /ready (stopped again if it never does)."""
    server = Server([str(a) for a in args], log_path, env)
    try:
        server.wait_ready(timeout=timeout)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def start_server(tmp_path_factory):
    """start_server(args, env=None) -> Server; every server started is stopped at teardown."""
    started: list[Server] = []

    def start(args, env=None) -> Server:
        server = Server([str(a) for a in args], tmp_path_factory.mktemp("server-log") / "server.log", env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
