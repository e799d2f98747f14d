import pytest

from prunerec.data.catalog import Catalog, Sample
from prunerec.model.encode import build_examples, response_ids
from prunerec.model.prompt import PromptSettings, format_prompt, format_response, parse_response
from prunerec.search.trie import TitleTrie
from tests.helpers import TITLES, tiny_tokenizer


def test_prompt_format_is_exact():
    settings = PromptSettings(template="compact", category="games", max_history=2)
    assert format_prompt(["A", "B", "C"], settings) == (
        '### Instruction: recommend the next games item.\n### Input: "B", "C"\n### Response:\n')
    alpaca = format_prompt(["Halo"], PromptSettings(category="video games"))
    assert alpaca.startswith("Below is an instruction that describes a task")
    assert "Given a list of video games items the user has interacted with" in alpaca
    assert alpaca.endswith('### Input:\n"Halo"\n\n### Response:\n')
    assert format_response("Halo 2") == '"Halo 2"\n'
    assert parse_response('"Halo 2"\nanything') == "Halo 2"
    assert parse_response('  "Halo') == "Halo"


def test_unknown_template_is_refused():
    with pytest.raises(ValueError, match="unknown prompt template"):
        PromptSettings.from_json({"template": "chatml"})


def test_trie_yields_only_real_titles_and_handles_prefix_titles():
    tokenizer = tiny_tokenizer()
    sequences = response_ids(tokenizer, TITLES)
    trie = TitleTrie(sequences, tokenizer.eos_token_id)
    assert all(s[-1] == tokenizer.eos_token_id for s in sequences)
    halo, halo2 = sequences[0], sequences[1]  # "Halo" is a prefix of "Halo 2" as text
    common = 0
    while halo[common] == halo2[common]:
        common += 1
    assert set(trie.allowed(halo[:common])) >= {halo[common], halo2[common]}
    assert trie.index_of(halo) == 0 and trie.index_of(halo2) == 1
    assert trie.allowed(halo) == []  # complete
    assert trie.index_of(halo[:-1]) is None  # no EOS yet: not a title
    assert trie.node([10**6]) is None and trie.allowed([10**6]) == []
    # walking the trie greedily along any path always ends at a real title
    def walk(prefix):
        options = trie.allowed(prefix)
        if not options:
            return [tuple(prefix)]
        return [p for token in options for p in walk(prefix + [token])]
    assert sorted(walk([])) == sorted(tuple(s) for s in sequences)
    with pytest.raises(ValueError, match="does not end with EOS"):
        TitleTrie([[1, 2]], eos_id=0)


def test_examples_keep_the_response_and_cut_the_prompt_from_the_left():
    tokenizer = tiny_tokenizer()
    catalog = Catalog.from_titles(TITLES)
    sample = Sample(0, tuple(range(8)), 9)
    full = build_examples(tokenizer, [sample], catalog, PromptSettings(template="compact", max_history=8))[0]
    response = response_ids(tokenizer, [TITLES[9]])[0]
    assert list(full.input_ids[-len(response):]) == response and full.n_response == len(response)
    cut = build_examples(tokenizer, [sample], catalog,
                         PromptSettings(template="compact", max_history=8, cutoff_tokens=20))[0]
    assert len(cut.input_ids) == 20 and list(cut.input_ids) == list(full.input_ids[-20:])
    assert cut.n_response == len(response)
