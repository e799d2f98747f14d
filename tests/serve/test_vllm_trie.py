"""The trie core of the vLLM logits processor, without an engine: a cursor follows a live output
list down the trie, and a masked row holds the full-row log-softmax at the allowed ids only."""
import pytest
import torch

from prunerec.data.catalog import Catalog
from prunerec.rec.title_index import TitleIndex
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
