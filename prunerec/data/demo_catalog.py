"""The demo store's catalog: Amazon-style game titles (franchises with numbered sequels and
subtitles, platform versions, editions, standalone games, consoles, accessories, gift cards),
and the weighted sampling helpers the user simulation shares."""
from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from random import Random

from prunerec.data.demo_vocab import (
    ACCESSORY_BRANDS,
    ACCESSORY_KINDS,
    COLORS,
    EDITIONS,
    GENRE_TABLE,
    GENRES,
    GIFT_VALUES,
    PLATFORM_TABLE,
    PLATFORM_WEIGHT,
    PLATFORMS,
    ROMAN,
    SUB_HEADS,
    SUB_TAILS,
    SUB_WORDS,
)
from prunerec.errors import PrunerecError


class DemoParameterError(PrunerecError, ValueError):
    """A demo generator parameter is out of range."""


_ZIPF_S = 1.0                 # game appeal ~ 1 / rank^s

# ----------------------------------------------------------------------------- data classes

@dataclass(frozen=True)
class DemoItem:
    """One catalog item and how it was made (the model only ever sees `title`)."""
    title: str
    kind: str                   # "game", "console", "accessory", "gift_card"
    platforms: tuple[str, ...]  # one for games/consoles/accessories; the store's platforms for gift cards
    genre: str | None = None
    game: str | None = None     # the game's name without platform or edition (games only)
    franchise: str | None = None
    entry: int | None = None    # 1-based position of the game in its franchise
    edition: str | None = None
    popularity: float = 1.0     # sampling weight (relative within a pool)



# ----------------------------------------------------------------------------- sampling helpers

class Pool:
    """Items with weights, sampled with replacement by bisection; `pick` skips owned items."""

    def __init__(self, ids, weights):
        self.ids = list(ids)
        self.cum = list(itertools.accumulate(weights))

    def __bool__(self):
        return bool(self.ids)

    def pick(self, rng: Random, owned) -> int | None:
        if not self.ids:
            return None
        for _ in range(16):
            item = self.ids[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]
            if item not in owned:
                return item
        rest = [(i, w) for i, w in zip(self.ids, _weights(self.cum)) if i not in owned]
        if not rest:
            return None
        return rng.choices([i for i, _ in rest], weights=[w for _, w in rest])[0]


def _weights(cum):
    return [b - a for a, b in zip([0.0, *cum[:-1]], cum)]


def weighted(rng: Random, options, weights):
    return rng.choices(options, weights=weights)[0]


def sample_without_replacement(rng: Random, options, weights, k):
    options, weights, chosen = list(options), list(weights), []
    for _ in range(min(k, len(options))):
        i = rng.choices(range(len(options)), weights=weights)[0]
        chosen.append(options.pop(i))
        weights.pop(i)
    return chosen


# ----------------------------------------------------------------------------- catalog

def _hardware(rng: Random) -> list[DemoItem]:
    items = []
    for name, _, consoles, first_party, _store in PLATFORM_TABLE:
        for rank, title in enumerate(consoles):
            items.append(DemoItem(title, "console", (name,), popularity=1.0 / (rank + 1)))
        for rank, title in enumerate(first_party):
            items.append(DemoItem(title, "accessory", (name,), popularity=2.0 / (rank + 1)))
        for kind, platforms, genre in ACCESSORY_KINDS:
            if name not in platforms:
                continue
            brand = rng.choice(ACCESSORY_BRANDS)
            title = f"{brand} {kind} for {name}"
            if kind == "Wireless Controller" and rng.random() < 0.5:
                title += f" - {rng.choice(COLORS)}"
            items.append(DemoItem(title, "accessory", (name,), genre=genre, popularity=rng.uniform(0.3, 1.0)))
    stores: dict[str, list[str]] = {}
    for name, *_, store in PLATFORM_TABLE:
        stores.setdefault(store, []).append(name)
    for store, platforms in stores.items():
        for rank, value in enumerate(GIFT_VALUES):
            items.append(DemoItem(f"{store} {value}", "gift_card", tuple(platforms),
                                  popularity=1.0 / (1 + abs(rank - 1))))
    return items


class _Names:
    """Unique game names (franchise or standalone) drawn from the genre word lists."""

    def __init__(self, rng: Random):
        self.rng, self.used = rng, set()

    def new(self, genre: str) -> str:
        _, first, second = GENRE_TABLE[genre]
        rng = self.rng
        for attempt in range(200):
            a, b = rng.choice(first), rng.choice(second)
            if a == b:
                continue
            if attempt < 60:
                name = f"{a} {b}"
            elif attempt < 120:
                name = f"{b} of the {a}" if genre != "Sports" else f"{a} {b} Tour"
            else:
                name = f"{a} {b} {rng.choice(('Zero', 'X', 'Prime', 'Reborn', 'Unbound', 'Online'))}"
            if name not in self.used:
                self.used.add(name)
                return name
        raise DemoParameterError("ran out of distinct game names; use n_items <= 5000")


def _subtitle(rng: Random) -> str:
    if rng.random() < 0.55:
        return f"{rng.choice(SUB_HEADS)} of {rng.choice(SUB_TAILS)}"
    return rng.choice(SUB_WORDS)


def _game_platforms(rng: Random, exclusive: bool) -> list[str]:
    k = 1 if exclusive else weighted(rng, (1, 2, 3, 4), (0.25, 0.35, 0.25, 0.15))
    return sample_without_replacement(rng, PLATFORMS, [PLATFORM_WEIGHT[p] for p in PLATFORMS], k)


def _versions(rng: Random, game: str, platforms, suffix: bool, **meta) -> list[dict]:
    """One item per platform (plus, sometimes, an edition of it)."""
    out = []
    for platform in platforms:
        tail = f" - {platform}" if suffix else ""
        share = PLATFORM_WEIGHT[platform]
        out.append(dict(title=f"{game}{tail}", platforms=(platform,), share=share, game=game, **meta))
        if rng.random() < 0.12:
            edition = rng.choice(EDITIONS)
            form = rng.random()
            if form < 0.4 or ":" in game:
                title = f"{game} - {edition}{tail}"
            elif form < 0.7:
                title = f"{game} ({edition}){tail}"
            else:
                title = f"{game} {edition}{tail}"
            out.append(dict(title=title, platforms=(platform,), share=share * 0.3, edition=edition, game=game, **meta))
    return out


def _franchise(rng: Random, names: _Names, genre: str, group: int, force_prefix: bool) -> list[dict]:
    name = names.new(genre)
    exclusive = force_prefix or rng.random() < 0.25
    platforms = _game_platforms(rng, exclusive)
    # Single-platform series are often listed without a platform suffix (Amazon style), which
    # makes "Galaxy Racers" a strict prefix of "Galaxy Racers 2".
    suffix = not (force_prefix or (exclusive and rng.random() < 0.6))
    n_entries = weighted(rng, (2, 3, 4, 5), (0.4, 0.3, 0.2, 0.1))
    style = "year" if genre == "Sports" else weighted(rng, ("arabic", "roman", "subtitle"), (0.55, 0.25, 0.2))
    if force_prefix:
        style = "arabic"
    year = rng.randint(2013, 2015)
    out = []
    for entry in range(1, n_entries + 1):
        if style == "year":
            game = f"{name} {year + entry - 1}"
        elif entry == 1:
            game = name
        elif style == "subtitle":
            game = f"{name}: {_subtitle(rng)}"
        else:
            number = str(entry) if style == "arabic" else ROMAN[entry - 1]
            game = f"{name} {number}"
            if rng.random() < 0.35 and not force_prefix:
                game += f": {_subtitle(rng)}"
        # later entries now and then skip a platform of the series (never all of them)
        entry_platforms = [p for p in platforms if entry == 1 or rng.random() < 0.9] or platforms[:1]
        appeal = rng.uniform(0.6, 1.4)
        out += _versions(rng, game, entry_platforms, suffix, kind="game", genre=genre, franchise=name,
                         entry=entry, group=group, appeal=appeal)
    return out


def _standalone(rng: Random, names: _Names, genre: str, group: int) -> list[dict]:
    game = names.new(genre)
    if rng.random() < 0.2:
        game += f": {_subtitle(rng)}"
    exclusive = rng.random() < 0.3
    platforms = _game_platforms(rng, exclusive)
    suffix = not (exclusive and rng.random() < 0.5)
    return _versions(rng, game, platforms, suffix, kind="game", genre=genre, group=group, appeal=1.0)


def build_items(rng: Random, n_items: int) -> list[DemoItem]:
    hardware = _hardware(rng)
    n_games = n_items - len(hardware)
    names = _Names(rng)
    for item in hardware:
        names.used.add(item.title)
    genre_weights = [GENRE_TABLE[g][0] for g in GENRES]
    games: list[dict] = []
    seen_titles = {item.title for item in hardware}
    group = 0
    while len(games) < n_games:
        genre = weighted(rng, GENRES, genre_weights)
        if group == 0:  # guarantee the prefix case: a suffix-less single-platform series
            made = _franchise(rng, names, "Racing", group, force_prefix=True)
        elif rng.random() < 0.45:
            made = _franchise(rng, names, genre, group, force_prefix=False)
        else:
            made = _standalone(rng, names, genre, group)
        for version in made:
            if version["title"] not in seen_titles and len(games) < n_games:
                seen_titles.add(version["title"])
                games.append(version)
        group += 1
    # Zipf-like appeal: each game name (franchise or standalone) gets a random rank.
    ranks = list(range(group))
    rng.shuffle(ranks)
    items = list(hardware)
    for g in games:
        weight = g.pop("appeal") * g.pop("share") / (ranks[g.pop("group")] + 1) ** _ZIPF_S
        if g.get("entry") == 1:
            weight *= 1.5  # people start series at the beginning more often
        items.append(DemoItem(popularity=weight, **g))
    rng.shuffle(items)  # item ids carry no structure
    return items
