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

import bisect
import itertools
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from random import Random

from prunerec.data.catalog import Catalog, Sample, write_dataset
from prunerec.errors import PrunerecError

__all__ = ["DemoItem", "DemoUser", "DemoWorld", "DemoParameterError", "generate_demo", "simulate_demo", "write_demo"]


class DemoParameterError(PrunerecError, ValueError):
    """A demo generator parameter is out of range."""


# ----------------------------------------------------------------------------- vocabulary

# name, share of users whose main platform it is, consoles, first-party accessories, gift-card store
_PLATFORMS = (
    ("PlayStation 4", 0.30,
     ("PlayStation 4 Slim 1TB Console", "PlayStation 4 Pro 1TB Console", "PlayStation 4 500GB Console - Jet Black"),
     ("DualShock 4 Wireless Controller - Jet Black", "DualShock 4 Wireless Controller - Magma Red"),
     "PlayStation Store Gift Card"),
    ("Xbox One", 0.24,
     ("Xbox One S 1TB Console", "Xbox One X 1TB Console", "Xbox One S 500GB Console - Robot White"),
     ("Xbox Wireless Controller - Black", "Xbox Elite Wireless Controller"),
     "Xbox Gift Card"),
    ("Nintendo Switch", 0.18,
     ("Nintendo Switch Console with Neon Blue and Red Joy-Con", "Nintendo Switch Console with Gray Joy-Con"),
     ("Nintendo Switch Pro Controller", "Joy-Con (L/R) - Neon Red/Neon Blue"),
     "Nintendo eShop Gift Card"),
    ("PC", 0.14, (),
     ("Mechanical Gaming Keyboard with RGB Backlight", "Wired Optical Gaming Mouse - 12000 DPI"),
     "Steam Wallet Gift Card"),
    ("PlayStation 3", 0.07,
     ("PlayStation 3 Super Slim 250GB Console", "PlayStation 3 Slim 160GB Console"),
     ("DualShock 3 Wireless Controller - Black",),
     "PlayStation Store Gift Card"),
    ("Xbox 360", 0.07,
     ("Xbox 360 E 250GB Console", "Xbox 360 S 4GB Console"),
     ("Xbox 360 Wireless Controller - Glossy Black",),
     "Xbox Gift Card"),
)
PLATFORMS = tuple(p[0] for p in _PLATFORMS)
_PLATFORM_WEIGHT = {p[0]: p[1] for p in _PLATFORMS}
_GIFT_VALUES = ("$10", "$20", "$50", "$100")  # "... $10" is a strict prefix of "... $100"

# third-party accessory kinds: (kind, platforms it exists for ("*": all consoles), genre it suits)
_ACCESSORY_KINDS = (
    ("Wireless Controller", ("PlayStation 4", "Xbox One", "Nintendo Switch", "PlayStation 3", "Xbox 360"), None),
    ("Controller Charging Station", ("PlayStation 4", "Xbox One", "PlayStation 3"), None),
    ("Charging Dock", ("Nintendo Switch",), None),
    ("Carrying Case", ("Nintendo Switch",), None),
    ("Tempered Glass Screen Protector", ("Nintendo Switch",), None),
    ("Gaming Headset", ("PlayStation 4", "Xbox One", "Nintendo Switch", "PC", "Xbox 360"), "Shooter"),
    ("Rechargeable Battery Pack", ("Xbox One", "Xbox 360"), None),
    ("Vertical Stand with Cooling Fan", ("PlayStation 4", "Xbox One"), None),
    ("Media Remote", ("PlayStation 4", "Xbox One", "PlayStation 3"), None),
    ("Racing Wheel and Pedals", ("PlayStation 4", "Xbox One", "PC", "PlayStation 3"), "Racing"),
    ("Arcade Fight Stick", ("PlayStation 4", "Xbox One", "PC"), "Fighting"),
    ("Wired Gamepad", ("PC",), None),
    ("Extended Gaming Mouse Pad", ("PC",), None),
    ("Flight Stick", ("PC",), "Simulation"),
    ("High Speed HDMI Cable", ("PlayStation 4", "Xbox One", "PlayStation 3", "Xbox 360"), None),
)
_ACCESSORY_BRANDS = ("Arcwave", "Zentek", "Kordex", "Voltix", "ProGrip")
_COLORS = ("Black", "White", "Red", "Blue", "Camo")

# genre: (share of users who like it, first words, second words)
_GENRES = {
    "Action": (0.12,
               ("Savage", "Rogue", "Night", "Steel", "Crimson", "Shadow", "Rapid", "Urban", "Ronin", "Outlaw"),
               ("Assassin", "Justice", "Vendetta", "Hunter", "Revenge",
                "Rampage", "Blades", "Legacy", "Knight", "Riot")),
    "Adventure": (0.08,
                  ("Lost", "Hidden", "Ancient", "Forgotten", "Sunken", "Wild", "Distant", "Broken", "Golden", "Quiet"),
                  ("Island", "Temple", "Voyage", "Odyssey", "Horizon",
                   "Expedition", "Relic", "Compass", "Tides", "Ruins")),
    "RPG": (0.12,
            ("Shadow", "Crystal", "Ember", "Elder", "Rune", "Dragon", "Mystic", "Storm", "Silver", "Arcane"),
            ("Legends", "Chronicles", "Saga", "Quest", "Tales", "Kingdoms", "Realms", "Throne", "Covenant", "Oath")),
    "Shooter": (0.12,
                ("Iron", "Steel", "Ghost", "Black", "Delta", "Zero", "Titan", "Omega", "Venom", "Hazard"),
                ("Frontier", "Protocol", "Squadron", "Warfare", "Ops",
                 "Division", "Vanguard", "Strike", "Siege", "Recon")),
    "Racing": (0.09,
               ("Galaxy", "Turbo", "Nitro", "Thunder", "Midnight", "Street", "Velocity", "Apex", "Redline", "Neon"),
               ("Racers", "Rally", "Drift", "Circuit", "Speedway", "Motors", "Grand Prix", "Rush", "Kart", "Riders")),
    "Sports": (0.09,
               ("Pro", "Ultimate", "Premier", "All-Star", "Champion", "Elite", "Total", "World", "Major", "Super"),
               ("Soccer", "Football", "Basketball", "Hockey", "Golf",
                "Tennis", "Baseball", "Boxing", "Skate", "Snowboard")),
    "Fighting": (0.06,
                 ("Fist", "Blade", "Savage", "Chaos", "Crimson", "Spirit", "Tiger", "Dragon", "Steel", "Street"),
                 ("Fury", "Clash", "Brawl", "Showdown", "Fighters",
                  "Warriors", "Tournament", "Rumble", "Duel", "Gauntlet")),
    "Strategy": (0.07,
                 ("Empire", "Kingdom", "Total", "Iron", "Star", "Grand", "Imperial", "Rising", "Ancient", "Fallen"),
                 ("Conquest", "Dominion", "Tactics", "Command", "Dynasty",
                  "Colonies", "Frontiers", "Legions", "Crusade", "Warlords")),
    "Puzzle": (0.05,
               ("Block", "Brain", "Color", "Crystal", "Pixel", "Gem", "Word", "Bubble", "Tile", "Zen"),
               ("Puzzle", "Blocks", "Match", "Mania", "Drop", "Quest", "Party", "Twist", "Logic", "Garden")),
    "Platformer": (0.07,
                   ("Super", "Mega", "Pixel", "Rocket", "Captain", "Jumping", "Little", "Turbo", "Bouncy", "Cosmic"),
                   ("Hero", "Adventures", "Land", "World", "Jump", "Dash", "Bros", "Island", "Quest", "Kid")),
    "Horror": (0.06,
               ("Dead", "Silent", "Hollow", "Grave", "Dark", "Black", "Blood", "Night", "Cursed", "Pale"),
               ("Asylum", "Echoes", "Harvest", "Manor", "Signal", "Woods", "Rites", "Dread", "Haunt", "Vigil")),
    "Simulation": (0.07,
                   ("Farm", "City", "Flight", "Truck", "Train", "Zoo", "Space", "Island", "Pizza", "Harbor"),
                   ("Simulator", "Tycoon", "Life", "Builder", "Manager",
                    "Story", "Empire", "Valley", "Station", "World")),
}
GENRES = tuple(_GENRES)

_SUB_HEADS = ("Dawn", "Rise", "Fall", "Echoes", "Heart", "Wrath", "Curse", "Call", "Age", "Song", "Return", "Legacy")
_SUB_TAILS = ("Ash", "Embers", "the Fallen", "Iron", "Kings", "Storms", "the Void", "the Deep", "Winter", "Ruin",
              "Fire")
_SUB_WORDS = ("Reckoning", "Awakening", "Revelations", "Origins", "Redemption", "Uprising", "Aftermath", "Ascension",
              "Resurrection", "Genesis", "Eclipse", "Requiem", "Exodus", "Vengeance")
_ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII")
_EDITIONS = ("Deluxe Edition", "Game of the Year Edition", "Gold Edition", "Complete Edition",
             "Collector's Edition", "Limited Edition", "Day One Edition")

# user behaviour
_P_CONSOLE_FIRST = 0.5        # first purchase is a console of the main platform
_P_SECOND_PLATFORM = 0.25     # user also plays a second platform
_P_SEQUEL = 0.75              # after game N of a franchise, queue game N+1 on the same platform
_P_TAKE_QUEUED = 0.85         # a queued follow-up (sequel, accessory) is the next purchase
_P_GENRE, _P_ACCESSORY, _P_GIFT = 0.74, 0.08, 0.03  # else noise (any game, popularity-weighted)
_ZIPF_S = 1.0                 # game appeal ~ 1 / rank^s
_START = datetime(2014, 1, 1, tzinfo=timezone.utc)
_END = datetime(2018, 10, 1, tzinfo=timezone.utc)
_DAY = 86400


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


# ----------------------------------------------------------------------------- sampling helpers

class _Pool:
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


def _weighted(rng: Random, options, weights):
    return rng.choices(options, weights=weights)[0]


def _sample_without_replacement(rng: Random, options, weights, k):
    options, weights, chosen = list(options), list(weights), []
    for _ in range(min(k, len(options))):
        i = rng.choices(range(len(options)), weights=weights)[0]
        chosen.append(options.pop(i))
        weights.pop(i)
    return chosen


# ----------------------------------------------------------------------------- catalog

def _hardware(rng: Random) -> list[DemoItem]:
    items = []
    for name, _, consoles, first_party, _store in _PLATFORMS:
        for rank, title in enumerate(consoles):
            items.append(DemoItem(title, "console", (name,), popularity=1.0 / (rank + 1)))
        for rank, title in enumerate(first_party):
            items.append(DemoItem(title, "accessory", (name,), popularity=2.0 / (rank + 1)))
        for kind, platforms, genre in _ACCESSORY_KINDS:
            if name not in platforms:
                continue
            brand = rng.choice(_ACCESSORY_BRANDS)
            title = f"{brand} {kind} for {name}"
            if kind == "Wireless Controller" and rng.random() < 0.5:
                title += f" - {rng.choice(_COLORS)}"
            items.append(DemoItem(title, "accessory", (name,), genre=genre, popularity=rng.uniform(0.3, 1.0)))
    stores: dict[str, list[str]] = {}
    for name, *_, store in _PLATFORMS:
        stores.setdefault(store, []).append(name)
    for store, platforms in stores.items():
        for rank, value in enumerate(_GIFT_VALUES):
            items.append(DemoItem(f"{store} {value}", "gift_card", tuple(platforms),
                                  popularity=1.0 / (1 + abs(rank - 1))))
    return items


class _Names:
    """Unique game names (franchise or standalone) drawn from the genre word lists."""

    def __init__(self, rng: Random):
        self.rng, self.used = rng, set()

    def new(self, genre: str) -> str:
        _, first, second = _GENRES[genre]
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
        return f"{rng.choice(_SUB_HEADS)} of {rng.choice(_SUB_TAILS)}"
    return rng.choice(_SUB_WORDS)


def _game_platforms(rng: Random, exclusive: bool) -> list[str]:
    k = 1 if exclusive else _weighted(rng, (1, 2, 3, 4), (0.25, 0.35, 0.25, 0.15))
    return _sample_without_replacement(rng, PLATFORMS, [_PLATFORM_WEIGHT[p] for p in PLATFORMS], k)


def _versions(rng: Random, game: str, platforms, suffix: bool, **meta) -> list[dict]:
    """One item per platform (plus, sometimes, an edition of it)."""
    out = []
    for platform in platforms:
        tail = f" - {platform}" if suffix else ""
        share = _PLATFORM_WEIGHT[platform]
        out.append(dict(title=f"{game}{tail}", platforms=(platform,), share=share, game=game, **meta))
        if rng.random() < 0.12:
            edition = rng.choice(_EDITIONS)
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
    n_entries = _weighted(rng, (2, 3, 4, 5), (0.4, 0.3, 0.2, 0.1))
    style = "year" if genre == "Sports" else _weighted(rng, ("arabic", "roman", "subtitle"), (0.55, 0.25, 0.2))
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
            number = str(entry) if style == "arabic" else _ROMAN[entry - 1]
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


def _build_items(rng: Random, n_items: int) -> list[DemoItem]:
    hardware = _hardware(rng)
    n_games = n_items - len(hardware)
    names = _Names(rng)
    for item in hardware:
        names.used.add(item.title)
    genre_weights = [_GENRES[g][0] for g in GENRES]
    games: list[dict] = []
    seen_titles = {item.title for item in hardware}
    group = 0
    while len(games) < n_games:
        genre = _weighted(rng, GENRES, genre_weights)
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


# ----------------------------------------------------------------------------- users

class _Store:
    """Sampling pools over the catalog."""

    def __init__(self, items: list[DemoItem]):
        def pool(pred, weight=lambda i, it: it.popularity):
            chosen = [i for i, it in enumerate(items) if pred(it)]
            return _Pool(chosen, [weight(i, items[i]) for i in chosen])

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
                self.sequels[(franchise, entry, platform)] = _Pool(nxt, [items[i].popularity for i in nxt])

    def accessory_pool(self, platform: str, genres) -> _Pool:
        ids = self.accessories[platform]
        return _Pool(ids, [self.items[i].popularity * (4.0 if self.items[i].genre in genres else 1.0) for i in ids])


def _n_interactions(rng: Random) -> int:
    return min(20, 5 + int(rng.expovariate(1 / 4.2)))


def _simulate_user(rng: Random, store: _Store, user: int) -> DemoUser:
    items = store.items
    genres = tuple(_sample_without_replacement(rng, GENRES, [_GENRES[g][0] for g in GENRES],
                                               1 if rng.random() < 0.55 else 2))
    main = _weighted(rng, PLATFORMS, [_PLATFORM_WEIGHT[p] for p in PLATFORMS])
    platforms = (main,)
    if rng.random() < _P_SECOND_PLATFORM:
        platforms += tuple(_sample_without_replacement(
            rng, [p for p in PLATFORMS if p != main], [_PLATFORM_WEIGHT[p] for p in PLATFORMS if p != main], 1))
    accessory_pools = {p: store.accessory_pool(p, genres) for p in platforms}
    n = _n_interactions(rng)
    owned: set[int] = set()  # bought items and every other version of the games bought
    bought: list[int] = []
    reasons: list[str] = []
    gaps: list[float] = []
    queue: list[tuple[int, str]] = []  # follow-ups: (item, reason)
    consoles_bought: list[str] = []

    def queue_console_followups(platform):
        k = _weighted(rng, (0, 1, 2), (0.15, 0.5, 0.35))
        for _ in range(k):
            acc = accessory_pools[platform].pick(rng, owned | {i for i, _ in queue})
            if acc is not None:
                queue.append((acc, "accessory"))

    while len(bought) < n:
        choice, reason = None, None
        if not bought and rng.random() < _P_CONSOLE_FIRST and store.consoles[main]:
            choice, reason = store.consoles[main].pick(rng, owned), "console"
        elif queue and rng.random() < _P_TAKE_QUEUED:
            choice, reason = queue.pop(0)
        elif (len(platforms) > 1 and platforms[1] not in consoles_bought and store.consoles[platforms[1]]
              and rng.random() < 0.12):
            choice, reason = store.consoles[platforms[1]].pick(rng, owned), "console"
        else:
            r = rng.random()
            platform = platforms[0] if len(platforms) == 1 or rng.random() < 0.7 else platforms[1]
            if r < _P_GENRE:
                genre = rng.choice(genres)
                choice, reason = store.by_genre_platform[(genre, platform)].pick(rng, owned), "genre"
            elif r < _P_GENRE + _P_ACCESSORY:
                choice, reason = accessory_pools[platform].pick(rng, owned), "accessory"
            elif r < _P_GENRE + _P_ACCESSORY + _P_GIFT:
                choice, reason = store.cards[platform].pick(rng, owned), "gift_card"
        if choice is None or choice in owned:
            choice, reason = store.games.pick(rng, owned), "noise"
        item = items[choice]
        owned.update(store.same_game.get(choice, (choice,)))  # no second copy, edition or platform version
        queue = [(i, why) for i, why in queue if i not in owned]
        if reason == "console":
            gaps.append(rng.uniform(5, 90) * _DAY)
        elif reason == "accessory" and bought and items[bought[-1]].kind in ("console", "accessory"):
            gaps.append(rng.uniform(0.2, 10) * _DAY)  # accessories come soon after the console
        else:
            gaps.append(rng.expovariate(1 / 35) * _DAY + 3600)
        bought.append(choice)
        reasons.append(reason)
        if item.kind == "console":
            consoles_bought.append(item.platforms[0])
            queue_console_followups(item.platforms[0])
        if item.franchise is not None and rng.random() < _P_SEQUEL:
            sequel_pool = store.sequels.get((item.franchise, item.entry, item.platforms[0]))
            sequel = sequel_pool.pick(rng, owned) if sequel_pool else None
            if sequel is not None:
                queue.insert(0, (sequel, "sequel"))

    # place the user's active period somewhere in the store's lifetime (periods overlap)
    span = (_END - _START).total_seconds()
    gaps[0] = 0.0
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
    return DemoUser(user, genres, platforms, tuple(bought), tuple(timestamps), tuple(reasons))


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
    items = _build_items(rng, n_items)
    store = _Store(items)
    users = tuple(_simulate_user(rng, store, u) for u in range(n_users))
    params = {"seed": seed, "n_items": n_items, "n_users": n_users, "max_history": max_history}
    return DemoWorld(tuple(items), users, params)


def _split(world: DemoWorld, max_history: int) -> tuple[dict[str, list[Sample]], dict]:
    rows = []  # (timestamp, user, position)
    for u in world.users:
        rows += [(u.timestamps[pos], u.user, pos) for pos in range(1, len(u.items))]
    rows.sort()
    n = len(rows)

    def cut(fraction):  # never split one timestamp across two splits
        i = round(fraction * n)
        while 0 < i < n and rows[i][0] == rows[i - 1][0]:
            i += 1
        return i

    bounds = {"train": (0, cut(0.8)), "valid": (cut(0.8), cut(0.9)), "test": (cut(0.9), n)}
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
