import torch

from prunerec.model.encode import response_ids
from prunerec.search.beam import TorchStepper, constrained_beam_search
from prunerec.search.trie import TitleTrie
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

    from prunerec.search.trie import InsertionOrderArrays

    return InsertionOrderArrays(np.array([0, 2, 2, 5, 5, 5, 5, 5, 5]), np.array([4, 2, 7, 1, 3]),
                                np.array([3, 4, 5, 6, 7]), np.full(8, -1))


def _rows(users, scores, nodes):
    import numpy as np

    from prunerec.search.beam import _Rows

    return _Rows(np.array(users), np.array(scores, dtype=np.float64), np.array(nodes))


def _picked(candidates):
    return list(zip(candidates.user.tolist(), candidates.score.tolist(), candidates.parent.tolist(),
                    candidates.token.tolist(), candidates.rank.tolist()))


def test_candidates_best_first_ties_in_beam_then_trie_order():
    from prunerec.search.beam import _candidates

    logprobs = torch.full((3, 10), float("-inf"))
    logprobs[0, [4, 2]] = torch.tensor([-1.0, -0.5])
    logprobs[2, [7, 1, 3]] = torch.tensor([-1.5, -0.5, -3.0])
    rows = _rows([0, 0, 0], [-1.0, -9.0, -1.0], [0, 1, 2])  # row 1 is a finished title (no children)
    got = _candidates(rows, logprobs, _hand_arrays(), width=4)
    assert _picked(got) == [(0, -1.5, 0, 2, 0), (0, -1.5, 2, 1, 1), (0, -2.0, 0, 4, 2), (0, -2.5, 2, 7, 3)]
    assert got.node.tolist() == [4, 6, 3, 5]
    assert _picked(_candidates(rows, logprobs, _hand_arrays(), width=10))[-1] == (0, -4.0, 2, 3, 4)
    assert _picked(_candidates(_rows([0], [0.0], [1]), logprobs, _hand_arrays(), width=4)) == []


def test_candidates_of_several_users_are_ranked_per_user():
    from prunerec.search.beam import _candidates

    logprobs = torch.full((3, 10), float("-inf"))
    logprobs[0, [4, 2]] = torch.tensor([-1.0, -0.5])
    logprobs[1, [7, 1, 3]] = torch.tensor([-1.5, -0.5, -3.0])
    logprobs[2, [4, 2]] = torch.tensor([-0.25, -0.5])
    rows = _rows([0, 0, 1], [-1.0, -1.0, -5.0], [0, 2, 0])
    got = _candidates(rows, logprobs, _hand_arrays(), width=2)
    assert _picked(got) == [(0, -1.5, 0, 2, 0), (0, -1.5, 1, 1, 1), (1, -5.25, 2, 4, 0), (1, -5.5, 2, 2, 1)]


def _step(candidates, finished, num_beams=2, eos=9):
    """_advance on hand-made candidates (user, score, parent row, token, node), best first per user."""
    import numpy as np

    from prunerec.search.beam import _advance, _Candidates

    user, score, parent, token, node = (np.array(v) for v in zip(*candidates))
    rank = np.arange(len(user)) - np.searchsorted(user, user)
    return _advance(_Candidates(user, score.astype(np.float64), node, parent, token, rank), finished, num_beams, eos)


def _running(rows):
    return list(zip(rows.user.tolist(), rows.parent.tolist(), rows.token.tolist()))


def test_advance_walks_each_user_best_first_like_hugging_face():
    from prunerec.search.beam import _Finished

    finished = _Finished(users=2, num_beams=2)
    # user 0: EOS ranked first closes a title, then two continue and the walk stops there (the
    # later EOS is never reached); user 1: EOS ranked 2nd and 3rd, only the 2nd (rank < 2) counts
    running = _step([(0, -1.0, 0, 9, 90), (0, -2.0, 0, 5, 50), (0, -3.0, 1, 6, 60), (0, -3.5, 1, 9, 91),
                     (1, -1.0, 2, 7, 70), (1, -2.0, 2, 9, 92), (1, -2.5, 3, 9, 93), (1, -4.0, 3, 8, 80)], finished)
    assert _running(running) == [(0, 0, 5), (0, 1, 6), (1, 2, 7), (1, 3, 8)]
    assert running.node.tolist() == [50, 60, 70, 80] and running.rank.tolist() == [0, 1, 0, 1]
    assert finished.count.tolist() == [1, 1]
    assert finished.score[:, 0].tolist() == [-1.0, -2.0] and finished.node[:, 0].tolist() == [90, 92]


def test_advance_keeps_the_best_titles_ties_first_found_and_stops_beaten_users():
    from prunerec.search.beam import _Finished

    finished = _Finished(users=2, num_beams=2)
    running = _step([(0, -2.0, 0, 9, 100), (0, -2.5, 0, 5, 50), (1, -1.0, 1, 9, 101), (1, -1.2, 1, 6, 60)],
                    finished)
    assert _running(running) == [(0, 0, 5), (1, 1, 6)]
    # user 0: a better title, and one tying its kept -2.0 that goes after it and out; its running
    # beam (-3.0) cannot beat its worst title (-2.0): done. User 1's running beam (-1.25) can (-1.3).
    running = _step([(0, -1.0, 0, 9, 102), (0, -2.0, 0, 9, 103), (0, -3.0, 0, 5, 51),
                     (1, -1.25, 1, 6, 61), (1, -1.3, 1, 9, 104)], finished)
    assert _running(running) == [(1, 1, 6)]
    assert finished.score.tolist() == [[-1.0, -2.0], [-1.0, -1.3]]
    assert finished.node.tolist() == [[102, 100], [101, 104]] and finished.count.tolist() == [2, 2]
    assert _running(_step([(1, -1.5, 0, 9, 105)], finished)) == []  # nothing continues: done
