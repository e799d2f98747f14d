"""The trie core of the vLLM logits processor, without an engine: a cursor follows a live output
list down the trie, and a masked row holds the full-row log-softmax at the allowed ids only."""
import pytest
import torch

from prunerec.data.catalog import Catalog
from prunerec.search.title_index import TitleIndex
from prunerec.serve import vllm_trie
from tests.helpers import TITLES, tiny_tokenizer


@pytest.fixture(scope="module")
def index():
    return TitleIndex.of_catalog(tiny_tokenizer(), Catalog.from_titles(TITLES))


def test_cursor_walks_live_output(index, tmp_path):
    path = str(index.arrays.save(tmp_path / "trie.npz"))
    response = index.responses[2]
    start = index.arrays.walk(response[:1])
    output: list[int] = []
    cursor = vllm_trie.new_cursor(vllm_trie.trie_args(path, start), output)
    assert cursor.allowed().tolist() == sorted(index.trie.node(response[:1]))
    output.extend(response[1:3])  # the engine appends sampled tokens to the same list
    assert cursor.allowed().tolist() == sorted(index.trie.node(response[:3]))
    again = vllm_trie.new_cursor(vllm_trie.trie_args(path, start), output)  # a re-added request
    assert again.current() == cursor.current()
    assert vllm_trie.new_cursor({"other": 1}, output) is None
    with pytest.raises(ValueError, match="out of range"):
        vllm_trie.new_cursor(vllm_trie.trie_args(path, 10 ** 6), output)
    with pytest.raises(ValueError, match="integer"):
        vllm_trie.parse_trie_args({vllm_trie.TRIE_KEY: path, vllm_trie.NODE_KEY: "3"})


def test_mask_rows(index):
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    original = logits.clone()
    allowed = [index.arrays.children(0)[:4] % 50, index.arrays.children(0)[:0]]
    vllm_trie.mask_rows(logits, [0, 2], allowed)
    expected = torch.log_softmax(original[0], -1)
    keep = torch.zeros(50, dtype=torch.bool)
    keep[torch.from_numpy(allowed[0])] = True
    assert torch.equal(logits[0][keep], expected[keep]) and torch.isinf(logits[0][~keep]).all()
    assert torch.equal(logits[1], original[1]) and torch.equal(logits[2], original[2])  # untouched rows


def test_mask_rows_returns_the_allowed_values_for_the_sink(index):
    torch.manual_seed(1)
    logits = torch.randn(3, 50)
    expected = torch.log_softmax(logits, -1)
    allowed = [index.arrays.children(0)[:3] % 50, index.arrays.children(0)[:0], index.arrays.children(0)[:2] % 50]
    cursors = [vllm_trie.TrieCursor(index.arrays, 0, [], sink=f"sink-test-{n}") for n in range(3)]
    cursors[2].sink = None   # a request without a sink leaves nothing there
    values = vllm_trie.mask_rows(logits, [0, 1, 2], allowed)
    assert values.tolist() == torch.cat([expected[0, allowed[0]], expected[2, allowed[2]]]).tolist()
    vllm_trie.fill_sink(cursors, allowed, values)
    ids, got = vllm_trie.SINK.take("sink-test-0", 0)
    assert ids.tolist() == allowed[0].tolist() and got.tolist() == expected[0, allowed[0]].tolist()
    assert vllm_trie.SINK.take("sink-test-0", 0) is None          # taken once
    assert vllm_trie.SINK.take("sink-test-1", 0) is None          # empty allowed set: nothing put
    assert vllm_trie.SINK.take("sink-test-2", 0) is None
    vllm_trie.SINK.drop("sink-test-0")
    with pytest.raises(ValueError, match="request id"):
        vllm_trie.parse_trie_args({vllm_trie.TRIE_KEY: "t.npz", vllm_trie.SINK_KEY: 3})


def test_sparse_logprobs_reads_like_a_dense_row():
    import numpy as np

    from prunerec.serve.vllm_live import NO_CHILDREN, SparseLogprobs

    rows = SparseLogprobs([(np.array([2, 5, 9]), np.array([-1.0, -2.5, -0.25], dtype=np.float32)), NO_CHILDREN])
    assert rows[0, [9, 3, 2, 11, 5]].tolist() == [-0.25, float("-inf"), -1.0, float("-inf"), -2.5]
    assert rows[1, [1, 2]].tolist() == [float("-inf")] * 2
    # one row per id, as the beam search gathers all beams at once
    assert rows[torch.tensor([0, 0, 1, 0]), torch.tensor([5, 3, 2, 9])].tolist() == [-2.5, float("-inf"),
                                                                                    float("-inf"), -0.25]
