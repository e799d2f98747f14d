"""Embedded demo data: a seeded, synthetic video-game store that needs no download.

`generate_demo(seed)` builds a catalog of Amazon-style game titles (franchises with numbered
sequels and subtitles, platform versions, editions, standalone games, consoles, platform
accessories, gift cards) and simulates users whose purchase histories follow rules a small
model can learn: a console early, then accessories of that platform; the next game of a
franchise on the same platform after the previous one; otherwise games of the user's 1-2
genres on the user's platform, popularity-weighted; some noise. Samples follow the paper's
protocol (every interaction after a user's first, previous <= max_history items as history,
global chronological 8:1:1 split by the target's timestamp). A user never buys the same item
twice. See docs/demo-data.md.

Only `random.Random(seed)` is used, and nothing iterates over a set, so the output is the same
on every machine and under every PYTHONHASHSEED.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from random import Random

from prunerec.data.catalog import Catalog, Sample, write_dataset
from prunerec.data.demo_catalog import (
    DemoItem,
    DemoParameterError,
    Pool,
    build_items,
    sample_without_replacement,
    weighted,
)
from prunerec.data.demo_vocab import GENRE_TABLE, GENRES, PLATFORM_WEIGHT, PLATFORMS
from prunerec.data.split import chronological_bounds

__all__ = ["DemoItem", "DemoUser", "DemoWorld", "DemoParameterError", "generate_demo", "simulate_demo", "write_demo"]

# user behaviour
_P_CONSOLE_FIRST = 0.5        # first purchase is a console of the main platform
_P_SECOND_PLATFORM = 0.25     # user also plays a second platform
_P_SEQUEL = 0.75              # after game N of a franchise, queue game N+1 on the same platform
_P_TAKE_QUEUED = 0.85         # a queued follow-up (sequel, accessory) is the next purchase
_P_GENRE, _P_ACCESSORY, _P_GIFT = 0.74, 0.08, 0.03  # else noise (any game, popularity-weighted)
_START = datetime(2014, 1, 1, tzinfo=timezone.utc)
_END = datetime(2018, 10, 1, tzinfo=timezone.utc)
_DAY = 86400


# ----------------------------------------------------------------------------- data classes

@dataclass(frozen=True)
class DemoUser:
    """One simulated user: preferences and the full purchase sequence, oldest first."""
    user: int
    genres: tuple[str, ...]
    platforms: tuple[str, ...]  # main platform first
    items: tuple[int, ...]
    timestamps: tuple[int, ...]  # unix seconds, strictly increasing
    reasons: tuple[str, ...]     # why each item was bought: console, accessory, sequel, genre, gift_card, noise


@dataclass(frozen=True)
class DemoWorld:
    items: tuple[DemoItem, ...]  # index = item_id
    users: tuple[DemoUser, ...]
    params: dict


# ----------------------------------------------------------------------------- users

class _Store:
    """Sampling pools over the catalog."""

    def __init__(self, items: list[DemoItem]):
        def pool(pred, weight=lambda i, it: it.popularity):
            chosen = [i for i, it in enumerate(items) if pred(it)]
            return Pool(chosen, [weight(i, items[i]) for i in chosen])

        self.items = items
        self.games = pool(lambda it: it.kind == "game")
        self.by_genre_platform = {(g, p): pool(lambda it, g=g, p=p: it.kind == "game" and it.genre == g
                                               and p in it.platforms)
                                  for g in GENRES for p in PLATFORMS}
        self.consoles = {p: pool(lambda it, p=p: it.kind == "console" and p in it.platforms) for p in PLATFORMS}
        self.cards = {p: pool(lambda it, p=p: it.kind == "gift_card" and p in it.platforms) for p in PLATFORMS}
        self.accessories = {p: [i for i, it in enumerate(items) if it.kind == "accessory" and p in it.platforms]
                            for p in PLATFORMS}
        versions: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            if it.game is not None:
                versions.setdefault(it.game, []).append(i)
        self.same_game = {i: tuple(ids) for ids in versions.values() for i in ids}
        by_entry: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            if it.franchise is not None:
                by_entry.setdefault((it.franchise, it.entry, it.platforms[0]), []).append(i)
        self.sequels = {}
        for (franchise, entry, platform), _ids in by_entry.items():
            nxt = by_entry.get((franchise, entry + 1, platform))
            if nxt:
                self.sequels[(franchise, entry, platform)] = Pool(nxt, [items[i].popularity for i in nxt])

    def accessory_pool(self, platform: str, genres) -> Pool:
        ids = self.accessories[platform]
        return Pool(ids, [self.items[i].popularity * (4.0 if self.items[i].genre in genres else 1.0) for i in ids])


def _n_interactions(rng: Random) -> int:
    return min(20, 5 + int(rng.expovariate(1 / 4.2)))


def _tastes(rng: Random) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A user's genres (1 or 2) and platforms (the main one first, sometimes a second)."""
    genres = tuple(sample_without_replacement(rng, GENRES, [GENRE_TABLE[g][0] for g in GENRES],
                                               1 if rng.random() < 0.55 else 2))
    main = weighted(rng, PLATFORMS, [PLATFORM_WEIGHT[p] for p in PLATFORMS])
    platforms = (main,)
    if rng.random() < _P_SECOND_PLATFORM:
        platforms += tuple(sample_without_replacement(
            rng, [p for p in PLATFORMS if p != main], [PLATFORM_WEIGHT[p] for p in PLATFORMS if p != main], 1))
    return genres, platforms


@dataclass
class _Basket:
    """One simulated user's purchases so far, and what is queued to follow."""
    genres: tuple[str, ...]
    platforms: tuple[str, ...]
    accessory_pools: dict
    owned: set[int] = field(default_factory=set)  # bought items and every other version of the games bought
    bought: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    queue: list[tuple[int, str]] = field(default_factory=list)  # follow-ups: (item, reason)
    consoles_bought: list[str] = field(default_factory=list)


def _next_choice(rng: Random, store: _Store, basket: _Basket) -> tuple[int, str]:
    """The next item bought and why: a console, a queued follow-up, the user's genres and
    platforms, or noise (any game, popularity-weighted)."""
    platforms, queue = basket.platforms, basket.queue
    choice, reason = None, None
    if not basket.bought and rng.random() < _P_CONSOLE_FIRST and store.consoles[platforms[0]]:
        choice, reason = store.consoles[platforms[0]].pick(rng, basket.owned), "console"
    elif queue and rng.random() < _P_TAKE_QUEUED:
        choice, reason = queue.pop(0)
    elif (len(platforms) > 1 and platforms[1] not in basket.consoles_bought and store.consoles[platforms[1]]
          and rng.random() < 0.12):
        choice, reason = store.consoles[platforms[1]].pick(rng, basket.owned), "console"
    else:
        r = rng.random()
        platform = platforms[0] if len(platforms) == 1 or rng.random() < 0.7 else platforms[1]
        if r < _P_GENRE:
            genre = rng.choice(basket.genres)
            choice, reason = store.by_genre_platform[(genre, platform)].pick(rng, basket.owned), "genre"
        elif r < _P_GENRE + _P_ACCESSORY:
            choice, reason = basket.accessory_pools[platform].pick(rng, basket.owned), "accessory"
        elif r < _P_GENRE + _P_ACCESSORY + _P_GIFT:
            choice, reason = store.cards[platform].pick(rng, basket.owned), "gift_card"
    if choice is None or choice in basket.owned:
        choice, reason = store.games.pick(rng, basket.owned), "noise"
    return choice, reason


def _gap(rng: Random, reason: str, items, bought: list[int]) -> float:
    """Seconds since the previous purchase."""
    if reason == "console":
        return rng.uniform(5, 90) * _DAY
    if reason == "accessory" and bought and items[bought[-1]].kind in ("console", "accessory"):
        return rng.uniform(0.2, 10) * _DAY  # accessories come soon after the console
    return rng.expovariate(1 / 35) * _DAY + 3600


def _queue_followups(rng: Random, store: _Store, basket: _Basket, item) -> None:
    """After a console, its accessories; after game N of a franchise, sometimes game N+1."""
    if item.kind == "console":
        platform = item.platforms[0]
        basket.consoles_bought.append(platform)
        for _ in range(weighted(rng, (0, 1, 2), (0.15, 0.5, 0.35))):
            acc = basket.accessory_pools[platform].pick(rng, basket.owned | {i for i, _ in basket.queue})
            if acc is not None:
                basket.queue.append((acc, "accessory"))
    if item.franchise is not None and rng.random() < _P_SEQUEL:
        sequel_pool = store.sequels.get((item.franchise, item.entry, item.platforms[0]))
        sequel = sequel_pool.pick(rng, basket.owned) if sequel_pool else None
        if sequel is not None:
            basket.queue.insert(0, (sequel, "sequel"))


def _timestamps(rng: Random, gaps: list[float]) -> tuple[int, ...]:
    """Place the user's active period somewhere in the store's lifetime (periods overlap):
    strictly increasing whole seconds."""
    span = (_END - _START).total_seconds()
    gaps = [0.0, *gaps[1:]]
    total = sum(gaps)
    if total > 0.9 * span:
        gaps = [g * 0.9 * span / total for g in gaps]
        total = sum(gaps)
    t = _START.timestamp() + rng.uniform(0, span - total)
    timestamps, last = [], None
    for gap in gaps:
        t += gap
        stamp = int(t)
        if last is not None and stamp <= last:
            stamp = last + 1
        timestamps.append(stamp)
        last = stamp
    return tuple(timestamps)


def _simulate_user(rng: Random, store: _Store, user: int) -> DemoUser:
    genres, platforms = _tastes(rng)
    basket = _Basket(genres, platforms, {p: store.accessory_pool(p, genres) for p in platforms})
    n = _n_interactions(rng)
    while len(basket.bought) < n:
        choice, reason = _next_choice(rng, store, basket)
        item = store.items[choice]
        basket.owned.update(store.same_game.get(choice, (choice,)))  # no second copy, edition or platform version
        basket.queue[:] = [(i, why) for i, why in basket.queue if i not in basket.owned]
        basket.gaps.append(_gap(rng, reason, store.items, basket.bought))
        basket.bought.append(choice)
        basket.reasons.append(reason)
        _queue_followups(rng, store, basket, item)
    return DemoUser(user, genres, platforms, tuple(basket.bought), _timestamps(rng, basket.gaps),
                    tuple(basket.reasons))


# ----------------------------------------------------------------------------- public API

def _check(seed, n_items, n_users, max_history):
    for name, value in (("seed", seed), ("n_items", n_items), ("n_users", n_users), ("max_history", max_history)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise DemoParameterError(f"{name} must be an integer, got {value!r}")
    if not 300 <= n_items <= 5000:
        raise DemoParameterError(f"n_items must be between 300 and 5000, got {n_items}")
    if not 1 <= n_users <= 100_000:
        raise DemoParameterError(f"n_users must be between 1 and 100000, got {n_users}")
    if not 1 <= max_history <= 100:
        raise DemoParameterError(f"max_history must be between 1 and 100, got {max_history}")


def simulate_demo(seed: int = 0, n_items: int = 1200, n_users: int = 1600, max_history: int = 10) -> DemoWorld:
    """The demo store with everything the generator knows: item metadata and full user timelines."""
    _check(seed, n_items, n_users, max_history)
    rng = Random(seed)
    items = build_items(rng, n_items)
    store = _Store(items)
    users = tuple(_simulate_user(rng, store, u) for u in range(n_users))
    params = {"seed": seed, "n_items": n_items, "n_users": n_users, "max_history": max_history}
    return DemoWorld(tuple(items), users, params)


def _split(world: DemoWorld, max_history: int) -> tuple[dict[str, list[Sample]], dict]:
    rows = []  # (timestamp, user, position)
    for u in world.users:
        rows += [(u.timestamps[pos], u.user, pos) for pos in range(1, len(u.items))]
    rows.sort()
    bounds = chronological_bounds([r[0] for r in rows])
    splits = {}
    for name, (lo, hi) in bounds.items():
        chosen = sorted(rows[lo:hi], key=lambda r: (r[1], r[2]))
        samples = []
        for _, user, pos in chosen:
            items = world.users[user].items
            samples.append(Sample(user, tuple(items[max(0, pos - max_history):pos]), items[pos]))
        splits[name] = samples

    def day(ts):
        return datetime.fromtimestamp(ts, tz=timezone.utc).date().isoformat()

    periods = {name: [day(rows[lo][0]), day(rows[hi - 1][0])] for name, (lo, hi) in bounds.items() if hi > lo}
    return splits, periods


def generate_demo(seed: int = 0, n_items: int = 1200, n_users: int = 1600,
                  max_history: int = 10) -> tuple[Catalog, dict[str, list[Sample]]]:
    """The demo catalog (ids 0..n_items-1) and its train/valid/test samples; same seed, same output."""
    world = simulate_demo(seed, n_items, n_users, max_history)
    splits, _ = _split(world, max_history)
    return Catalog.from_titles(item.title for item in world.items), splits


def write_demo(out_dir: str | Path, **kwargs) -> Path:
    """Write the demo data set as a prepared folder (items.jsonl, train/valid/test.jsonl, stats.json).

    Keyword arguments are those of `generate_demo`. Files in `out_dir` are replaced one by one.
    """
    params = {"seed": 0, "n_items": 1200, "n_users": 1600, "max_history": 10}
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise DemoParameterError(f"unknown demo parameter(s): {', '.join(unknown)} (have {', '.join(params)})")
    params.update(kwargs)
    world = simulate_demo(**params)
    splits, periods = _split(world, params["max_history"])
    catalog = Catalog.from_titles(item.title for item in world.items)
    kinds: dict[str, int] = {}
    for item in world.items:
        kinds[item.kind] = kinds.get(item.kind, 0) + 1
    stats = {
        "dataset": "demo",
        "source": "synthetic, prunerec.data.demo.generate_demo (no download); see docs/demo-data.md",
        **params,
        "users": len(world.users),
        "interactions": sum(len(u.items) for u in world.users),
        "item_kinds": kinds,
        "split": "temporal (global time cut by the target's timestamp, 8:1:1 of rows); every interaction after "
                 f"a user's first is a row with the previous <= {params['max_history']} items as history",
        "split_periods": periods,
    }
    out_dir = Path(out_dir)
    write_dataset(out_dir, catalog, splits, stats)
    return out_dir
