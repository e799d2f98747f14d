"""The embedded demo data set: deterministic, well-formed, paper protocol, learnable structure."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from prunerec.data.catalog import load_dataset
from prunerec.data.demo import DemoParameterError, generate_demo, simulate_demo, write_demo
from prunerec.errors import PrunerecError

SPLIT_NAMES = ("train", "valid", "test")


@pytest.fixture(scope="module")
def demo():
    return generate_demo()


@pytest.fixture(scope="module")
def world():
    return simulate_demo()


def _digest(catalog, splits) -> str:
    blob = json.dumps([list(catalog.titles), {k: [s.to_json() for s in v] for k, v in splits.items()}])
    return hashlib.sha256(blob.encode()).hexdigest()


def test_same_seed_same_output_different_seed_different_output(demo):
    catalog, splits = demo
    again = generate_demo(seed=0)
    assert again == (catalog, splits)
    other_catalog, other_splits = generate_demo(seed=1)
    assert other_catalog.titles != catalog.titles
    assert other_splits != splits


def test_output_does_not_depend_on_hash_seed(demo):
    code = ("import hashlib, json; from prunerec.data.demo import generate_demo; c, s = generate_demo(); "
            "print(hashlib.sha256(json.dumps([list(c.titles), {k: [x.to_json() for x in v] for k, v in s.items()}])"
            ".encode()).hexdigest())")
    root = Path(__file__).resolve().parents[2]
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(root)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == _digest(*demo)


def test_catalog_titles(demo, world):
    catalog, _ = demo
    titles = catalog.titles
    assert len(catalog) == 1200 == len(world.items)
    assert [item.title for item in world.items] == list(titles)
    assert len(set(titles)) == len(titles)
    assert all(t == t.strip() and "  " not in t for t in titles)
    words = [len(t.split()) for t in titles]
    assert sum(3 <= n <= 10 for n in words) / len(words) > 0.85
    assert max(words) <= 20
    kinds = Counter(item.kind for item in world.items)
    assert kinds["console"] >= 6 and kinds["accessory"] >= 20 and kinds["gift_card"] >= 8 and kinds["game"] > 1000
    assert any(t.endswith(" - PlayStation 4") for t in titles)
    assert any(t.endswith(" - Xbox One") for t in titles)
    assert any(t.endswith(" - Nintendo Switch") for t in titles)
    assert any(t.endswith(" - PC") for t in titles)
    assert any("Edition" in t for t in titles)
    assert any(re.search(r"\b(2|II): ", t) for t in titles)  # a numbered sequel with a subtitle
    assert any(t.endswith(" for Xbox One") for t in titles)


def test_some_titles_are_strict_prefixes_of_others(demo):
    titles = set(demo[0].titles)
    sequels = [t for t in titles if re.fullmatch(r".+ (2|II)", t) and t.rsplit(" ", 1)[0] in titles]
    assert sequels, ("need a title that is a strict prefix of its sequel's title "
                     "(e.g. 'Galaxy Racers' / 'Galaxy Racers 2')")
    for n_items, seed in ((300, 5), (3000, 9)):  # also at the edges of the size range
        titles = set(generate_demo(seed=seed, n_items=n_items, n_users=5)[0].titles)
        assert len(titles) == n_items
        assert any(t.rsplit(" ", 1)[0] in titles for t in titles if re.fullmatch(r".+ (2|II)", t))


def test_popularity_is_skewed(world):
    counts = sorted(Counter(i for u in world.users for i in u.items).values(), reverse=True)
    total = sum(counts)
    top = len(world.items) // 20
    assert sum(counts[:top]) / total > 0.2  # the top 5% of items get over a fifth of all purchases
    assert counts[0] > 20 * counts[len(counts) // 2]


def test_samples_follow_the_protocol(demo, world):
    _, splits = demo
    lengths = [len(u.items) for u in world.users]
    assert len(world.users) == 1600
    assert min(lengths) >= 5 and max(lengths) <= 20
    assert 8.0 <= sum(lengths) / len(lengths) <= 9.0
    expected = set()
    for u in world.users:
        assert len(set(u.items)) == len(u.items), "a user never buys the same item twice"
        assert list(u.timestamps) == sorted(set(u.timestamps))
        for pos in range(1, len(u.items)):
            expected.add((u.user, u.items[max(0, pos - 10):pos], u.items[pos]))
    got = [(s.user, s.history, s.target) for name in SPLIT_NAMES for s in splits[name]]
    assert len(got) == len(expected) == sum(lengths) - len(world.users)
    assert set(got) == expected
    for name in SPLIT_NAMES:
        for s in splits[name]:
            assert 1 <= len(s.history) <= 10
            assert s.target not in s.history
            assert s.targets is None


def test_split_sizes_and_chronology(demo, world):
    _, splits = demo
    n = sum(len(splits[name]) for name in SPLIT_NAMES)
    assert abs(len(splits["train"]) / n - 0.8) < 0.01
    assert abs(len(splits["valid"]) / n - 0.1) < 0.01
    assert abs(len(splits["test"]) / n - 0.1) < 0.01
    when = {(u.user, item): ts for u in world.users for item, ts in zip(u.items, u.timestamps)}
    times = {name: [when[(s.user, s.target)] for s in splits[name]] for name in SPLIT_NAMES}
    assert max(times["train"]) < min(times["valid"])
    assert max(times["valid"]) < min(times["test"])
    # users are active over overlapping periods: many users have rows in more than one split
    users = {name: {s.user for s in splits[name]} for name in SPLIT_NAMES}
    assert len(users["train"] & users["test"]) > 50
    assert len(users["valid"] & users["test"]) > 50


def test_max_history_and_small_sizes():
    catalog, splits = generate_demo(seed=3, n_items=400, n_users=50, max_history=3)
    assert len(catalog) == 400
    rows = [s for name in SPLIT_NAMES for s in splits[name]]
    assert rows and all(1 <= len(s.history) <= 3 for s in rows)
    assert any(len(s.history) == 3 for s in rows)


def test_write_demo_folder_loads(tmp_path):
    out = write_demo(tmp_path / "demo", seed=4, n_items=500, n_users=120, max_history=5)
    assert out == tmp_path / "demo"
    data = load_dataset(out)
    catalog, splits = generate_demo(seed=4, n_items=500, n_users=120, max_history=5)
    assert data.catalog.titles == catalog.titles
    assert {name: data[name] for name in SPLIT_NAMES} == splits
    stats = json.loads((out / "stats.json").read_text())
    assert {k: stats[k] for k in ("seed", "n_items", "n_users", "max_history")} == \
        {"seed": 4, "n_items": 500, "n_users": 120, "max_history": 5}
    assert stats["items"] == 500 and stats["users"] == 120
    assert stats["train_samples"] == len(splits["train"])
    assert stats["interactions"] == 120 + sum(len(v) for v in splits.values())


@pytest.mark.parametrize("kwargs", [dict(n_items=10), dict(n_items=10**6), dict(n_users=0), dict(max_history=0),
                                    dict(seed="zero")])
def test_bad_parameters_are_clear_errors(kwargs):
    with pytest.raises(DemoParameterError) as err:
        generate_demo(**kwargs)
    assert isinstance(err.value, PrunerecError) and isinstance(err.value, ValueError)
    with pytest.raises(DemoParameterError, match="unknown demo parameter"):
        write_demo("/nonexistent/never-written", n_item=5)


def test_rules_show_in_the_histories(world):
    items = world.items
    after_console = [u.items[1] for u in world.users if items[u.items[0]].kind == "console"]
    assert len(after_console) > 400
    same_platform_accessory = sum(items[i].kind == "accessory" and items[i].platforms == items[u0].platforms
                                  for u0, i in zip((u.items[0] for u in world.users
                                                    if items[u.items[0]].kind == "console"), after_console))
    assert same_platform_accessory / len(after_console) > 0.5
    has_next = {(it.franchise, it.entry - 1, it.platforms[0]) for it in items if it.franchise and it.entry > 1}
    followed = total = 0
    for u in world.users:
        for a, b in zip(u.items, u.items[1:]):
            first, second = items[a], items[b]
            if first.franchise and (first.franchise, first.entry, first.platforms[0]) in has_next:
                total += 1
                followed += (second.franchise == first.franchise and second.entry == first.entry + 1
                             and second.platforms == first.platforms)
    assert followed / total > 0.5
    # games are mostly of the user's genres and on the user's platforms
    games = [(u, items[i]) for u in world.users for i in u.items if items[i].kind == "game"]
    assert sum(it.genre in u.genres for u, it in games) / len(games) > 0.75
    assert sum(it.platforms[0] in u.platforms for u, it in games) / len(games) > 0.8


def _hit_rate(samples, rank, k=10):
    return sum(s.target in rank(s)[:k] for s in samples) / len(samples)


def structure_vs_popularity(catalog, splits, world=None, k=10):
    """HR@k on test: popularity, first-order item-to-item transitions (fit on train), and, given
    `world`, the 'next in franchise / accessory of the console's platform' rule."""
    popularity, transitions = Counter(), defaultdict(Counter)
    for s in splits["train"]:
        popularity[s.target] += 1
        transitions[s.history[-1]][s.target] += 1
    popular = [i for i, _ in popularity.most_common(100)]

    def rank_popular(s, head=()):
        seen = set(s.history)
        head = [i for i in dict.fromkeys(head) if i not in seen]
        return head + [i for i in popular if i not in seen and i not in head][:k]

    def rank_transitions(s):
        return rank_popular(s, [i for i, _ in transitions[s.history[-1]].most_common(k)])

    result = {"popularity": _hit_rate(splits["test"], rank_popular, k),
              "transitions": _hit_rate(splits["test"], rank_transitions, k)}
    if world is not None:
        items = world.items
        by_entry = defaultdict(list)
        for i, it in enumerate(items):
            if it.franchise:
                by_entry[(it.franchise, it.entry, it.platforms[0])].append(i)
        accessories = defaultdict(list)
        for i in dict.fromkeys(popular + list(range(len(items)))):
            if items[i].kind == "accessory":
                accessories[items[i].platforms[0]].append(i)

        def rank_rule(s):
            last = items[s.history[-1]]
            head = []
            if last.franchise:
                head = sorted(by_entry[(last.franchise, last.entry + 1, last.platforms[0])],
                              key=lambda i: -items[i].popularity)
            elif last.kind in ("console", "accessory"):
                head = accessories[last.platforms[0]]
            return rank_popular(s, head[:k])

        result["rule"] = _hit_rate(splits["test"], rank_rule, k)
    return result


def test_structure_beats_popularity_by_far(demo, world):
    hr = structure_vs_popularity(*demo, world)
    print("HR@10 on test:", {k: round(v, 4) for k, v in hr.items()})
    assert hr["popularity"] > 0.02  # popularity is a real baseline, not zero
    assert hr["transitions"] >= 2 * hr["popularity"]
    assert hr["rule"] >= 2 * hr["popularity"]
