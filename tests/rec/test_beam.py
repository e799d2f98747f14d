import torch

from prunerec.rec.beam import TorchStepper, constrained_beam_search
from prunerec.rec.encode import response_ids
from prunerec.rec.trie import TitleTrie
from tests.helpers import TITLES, tiny_model, tiny_tokenizer


def _setup(seed=0):
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), tokenizer.eos_token_id, seed=seed)
    trie = TitleTrie(response_ids(tokenizer, TITLES), tokenizer.eos_token_id)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in
               ["### Input: \"Halo\", \"Zelda\"\n", "### Input: \"Portal 2\"\n", "x"]]
    return tokenizer, model, trie, prompts


def _hf_ranking(model, tokenizer, trie, prompt, num_beams):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=num_beams,
                         num_return_sequences=num_beams, length_penalty=0.0, do_sample=False,
                         max_new_tokens=trie.max_len, early_stopping=False,
                         prefix_allowed_tokens_fn=lambda _, seq: (trie.allowed(seq[len(prompt):].tolist())
                                                                  or [tokenizer.eos_token_id]),
                         pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         output_scores=True, return_dict_in_generate=True)
    sequences = [seq[len(prompt):].tolist() for seq in out.sequences]
    return [trie.index_of(s[: s.index(tokenizer.eos_token_id) + 1]) for s in sequences], out.sequences_scores.tolist()


def test_matches_hugging_face_beam_search_ranking():
    tokenizer, model, trie, prompts = _setup()
    for num_beams in (3, 8):
        ours = constrained_beam_search(TorchStepper(model, tokenizer.pad_token_id), prompts, trie, num_beams)
        for prompt, ranked in zip(prompts, ours):
            hf_titles, hf_scores = _hf_ranking(model, tokenizer, trie, prompt, num_beams)
            assert [i for i, _ in ranked] == hf_titles
            assert torch.allclose(torch.tensor([s for _, s in ranked]), torch.tensor(hf_scores), atol=1e-4)


def test_only_real_titles_and_prefix_titles_reachable():
    tokenizer, model, trie, prompts = _setup(seed=3)
    ranked = constrained_beam_search(TorchStepper(model, tokenizer.pad_token_id), prompts, trie, len(TITLES))
    for row in ranked:
        indices = [i for i, _ in row]
        assert len(indices) == len(set(indices)) == len(TITLES)  # every title, each once
        assert all(i is not None for i in indices)
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True)


def _hand_arrays():
    """Nodes 0 (children 4, 2 in that order), 1 (a finished title: none) and 2 (children 7, 1, 3)."""
    import numpy as np

    from prunerec.rec.trie import InsertionOrderArrays

    return InsertionOrderArrays(np.array([0, 2, 2, 5, 5, 5, 5, 5, 5]), np.array([4, 2, 7, 1, 3]),
                                np.array([3, 4, 5, 6, 7]))


def _picked(candidates):
    return [(c.score, c.beam, c.token) for c in candidates]


def test_candidates_best_first_ties_in_beam_then_trie_order():
    from prunerec.rec.beam import _Beam, _candidates, _UserSearch

    logprobs = torch.full((3, 10), float("-inf"))
    logprobs[0, [4, 2]] = torch.tensor([-1.0, -0.5])
    logprobs[2, [7, 1, 3]] = torch.tensor([-1.5, -0.5, -3.0])
    user = _UserSearch([_Beam((4,), -1.0, 0), _Beam((9,), -9.0, 1), _Beam((5,), -1.0, 2)], [0, 1, 2])
    # rows 0, 1, 2 hold beams 0, 1, 2; beam 1 is a finished title (no children)
    [got] = _candidates([user], logprobs, _hand_arrays(), width=4)
    assert _picked(got) == [(-1.5, 0, 2), (-1.5, 2, 1), (-2.0, 0, 4), (-2.5, 2, 7)]
    assert [c.node for c in got] == [4, 6, 3, 5]
    assert _picked(_candidates([user], logprobs, _hand_arrays(), width=10)[0])[-1] == (-4.0, 2, 3)
    assert _candidates([_UserSearch([_Beam((), 0.0, 1)], [0])], logprobs, _hand_arrays(), width=4) == [[]]


def test_candidates_of_several_users_are_ranked_per_user():
    from prunerec.rec.beam import _Beam, _candidates, _UserSearch

    logprobs = torch.full((3, 10), float("-inf"))
    logprobs[0, [4, 2]] = torch.tensor([-1.0, -0.5])
    logprobs[1, [7, 1, 3]] = torch.tensor([-1.5, -0.5, -3.0])
    logprobs[2, [4, 2]] = torch.tensor([-0.25, -0.5])
    first = _UserSearch([_Beam((4,), -1.0, 0), _Beam((5,), -1.0, 2)], [0, 1])
    second = _UserSearch([_Beam((1,), -5.0, 0)], [2])
    got = _candidates([first, second], logprobs, _hand_arrays(), width=2)
    assert [_picked(c) for c in got] == [[(-1.5, 0, 2), (-1.5, 1, 1)], [(-5.25, 0, 4), (-5.5, 0, 2)]]
