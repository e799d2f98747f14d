"""TitleIndex: one construction of titles, response ids and trie, and the trie's compact arrays
agree with the dict trie on every path; the arrays survive a save/load round trip."""
import numpy as np

from prunerec.data.catalog import Catalog
from prunerec.model.encode import response_ids
from prunerec.search.title_index import NO_NODE, TitleIndex, TrieArrays
from tests.helpers import TITLES, tiny_tokenizer


def test_arrays_match_the_dict_trie(tmp_path):
    tokenizer = tiny_tokenizer()
    index = TitleIndex.of_catalog(tokenizer, Catalog.from_titles(TITLES + ["Halo"]))
    assert index.titles == TITLES  # unique, catalog order
    assert index.responses == response_ids(tokenizer, TITLES)
    arrays = TrieArrays.load(index.arrays.save(tmp_path / "trie.npz"))
    assert arrays.eos_id == tokenizer.eos_token_id and arrays.max_len == index.trie.max_len
    for response in index.responses:
        node, dict_node = TrieArrays.ROOT, index.trie.root
        for token in response:
            assert arrays.children(node).tolist() == sorted(dict_node)
            node, dict_node = arrays.step(node, token), dict_node[token]
        assert len(arrays.children(node)) == 0 and arrays.walk(response) == node
    assert arrays.step(TrieArrays.ROOT, tokenizer.eos_token_id) == NO_NODE
    assert arrays.walk([tokenizer.eos_token_id, 1]) == NO_NODE and len(arrays.children(NO_NODE)) == 0
    assert index.widest_node() == int(np.diff(arrays.child_start).max()) == len(index.trie.root)
