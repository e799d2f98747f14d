"""Amazon Reviews 2018: prepare the raw files into the uniform data form (download: data/download.py).

Protocol (BIGRec's, as the PruneRec paper uses it):
  * time window [start, window_end) on `unixReviewTime`; start = window_end minus one year,
    moved back one year at a time while fewer than `min_items` items survive all filtering
    and earlier data exists;
  * drop items with no title, HTML/JS junk in the title, or titles over `max_title_words` words;
    titles are cleaned with `catalog.clean_title` (HTML entities unescaped);
  * (user, item) duplicates keep the earliest review; iterative k-core on users and items;
  * each user's reviews sorted by (time, asin); every review after the first is a sample whose
    history is the previous <= `max_history` items, oldest first;
  * global chronological split by the target's time: samples sorted by (target time, user),
    first 80% train, next 10% valid, last 10% test (a cut never splits one timestamp; data/split.py).

Ids: items 0..N-1 and users 0..U-1 in order of (first interaction time, asin / reviewerID)
inside the chosen, filtered data.

The pure steps (title check, window, dedup, k-core, samples, split) are small functions on
`(user, item, time)` tuples; reading and writing are kept apart from them.
"""
from __future__ import annotations

import ast
import calendar
import gzip
import json
import re
import zlib
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Sequence
from datetime import date, datetime
from pathlib import Path

from prunerec.data.catalog import Catalog, DataError, Sample, clean_title, write_dataset
from prunerec.data.download import DEFAULT_BASE_URL, amazon_urls, download_amazon  # noqa: F401 (public here too)
from prunerec.data.split import check_fractions, chronological_bounds
from prunerec.errors import PrunerecError

Interaction = tuple[Hashable, Hashable, int]  # (user, item, unix time)

# Title fragments that betray scraped HTML / JavaScript instead of a product name (checked
# after HTML entities are unescaped, so '&lt;b&gt;' counts as '<b>'). Case-sensitive on
# purpose: a book called "JavaScript: The Good Parts" is a fine title.
_JUNK = re.compile(r"[<>{}]|getTime|\bvar\s|function\s*\(|javascript:|document\.\w|window\.\w|\bhref\s*=")


# --------------------------------------------------------------------------- pure steps

def title_problem(raw, max_words: int = 20) -> str | None:
    """Why a raw meta title is unusable ('missing', 'junk', 'too_long'), or None if it is fine."""
    if not isinstance(raw, str):
        return "missing"
    title = clean_title(raw)
    if not title:
        return "missing"
    if _JUNK.search(title):
        return "junk"
    if len(title.split()) > max_words:
        return "too_long"
    return None


def in_window(interactions: Iterable[Interaction], start: int, end: int) -> list[Interaction]:
    """Interactions with start <= time < end."""
    return [x for x in interactions if start <= x[2] < end]


def deduplicate(interactions: Iterable[Interaction]) -> list[Interaction]:
    """Keep each (user, item) pair once: its earliest interaction."""
    earliest: dict[tuple, Interaction] = {}
    for x in interactions:
        key = (x[0], x[1])
        if key not in earliest or x[2] < earliest[key][2]:
            earliest[key] = x
    return list(earliest.values())


def k_core(interactions: Sequence[Interaction], core: int) -> list[Interaction]:
    """Iteratively drop users and items with fewer than `core` interactions until none remain."""
    rows = list(interactions)
    while True:
        users = Counter(x[0] for x in rows)
        items = Counter(x[1] for x in rows)
        kept = [x for x in rows if users[x[0]] >= core and items[x[1]] >= core]
        if len(kept) == len(rows):
            return kept
        rows = kept


def filter_interactions(interactions: Iterable[Interaction], start: int, end: int,
                        core: int) -> tuple[list[Interaction], dict]:
    """Window, deduplicate and k-core; returns the kept interactions and the counts at each step."""
    windowed = in_window(interactions, start, end)
    unique = deduplicate(windowed)
    kept = k_core(unique, core)
    return kept, {
        "in_window": len(windowed),
        "duplicates_removed": len(windowed) - len(unique),
        "removed_by_k_core": len(unique) - len(kept),
    }


def _minus_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def _timestamp(day: date) -> int:
    return calendar.timegm(day.timetuple())


def parse_day(value) -> date:
    """'YYYY-MM-DD', 'YYYY-MM', a date or a datetime -> date."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    try:
        return date.fromisoformat(text if len(text) != 7 else text + "-01")
    except ValueError:
        raise PrunerecError(f"window end {value!r} is not a date like 2018-11-01") from None


def choose_window(interactions: Sequence[Interaction], window_end, min_items: int,
                  core: int) -> tuple[date, list[Interaction], dict]:
    """Start one year before `window_end`, step back a year while < min_items items survive and
    earlier data exists. Returns (start day, kept interactions, counts)."""
    end_day = parse_day(window_end)
    end = _timestamp(end_day)
    earliest = min((x[2] for x in interactions), default=end)
    years = 1
    while True:
        start_day = _minus_years(end_day, years)
        start = _timestamp(start_day)
        kept, counts = filter_interactions(interactions, start, end, core)
        n_items = len({x[1] for x in kept})
        if n_items >= min_items or earliest >= start:
            counts["window_years"] = years
            return start_day, kept, counts
        years += 1


def assign_ids(interactions: Sequence[Interaction]) -> tuple[list, list]:
    """Users and items in order of (first interaction time, key): index = id."""
    first_user: dict = {}
    first_item: dict = {}
    for user, item, time in interactions:
        if user not in first_user or time < first_user[user]:
            first_user[user] = time
        if item not in first_item or time < first_item[item]:
            first_item[item] = time
    users = sorted(first_user, key=lambda u: (first_user[u], u))
    items = sorted(first_item, key=lambda i: (first_item[i], i))
    return users, items


def build_samples(interactions: Sequence[Interaction], user_ids: dict, item_ids: dict,
                  max_history: int) -> list[tuple[int, Sample]]:
    """(target time, Sample) for every interaction after each user's first."""
    by_user: dict = {}
    for user, item, time in interactions:
        by_user.setdefault(user, []).append((time, item))
    samples = []
    for user, events in by_user.items():
        events.sort(key=lambda e: (e[0], e[1]))
        ids = [item_ids[item] for _, item in events]
        for position in range(1, len(events)):
            history = tuple(ids[max(0, position - max_history):position])
            samples.append((events[position][0], Sample(user_ids[user], history, ids[position])))
    return samples


def chronological_split(timed: Sequence[tuple[int, Sample]], split=(0.8, 0.1, 0.1)) -> dict[str, list[Sample]]:
    """Sort by (target time, user) and cut into train/valid/test by the given fractions, never
    splitting one timestamp across two splits."""
    ordered = sorted(timed, key=lambda ts: (ts[0], ts[1].user))  # stable: keeps user order
    bounds = chronological_bounds([t for t, _ in ordered], split)
    return {name: [s for _, s in ordered[lo:hi]] for name, (lo, hi) in bounds.items()}


# --------------------------------------------------------------------------- reading

def _progress_bar(path: Path, total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"reading {path.name}", disable=not progress, leave=False)


def read_json_lines(path: str | Path, *, progress: bool = True) -> Iterator[tuple[int, dict]]:
    """Stream `(line number, dict)` from a gzipped or plain file of JSON (or Python-literal) lines.

    Every problem becomes a DataError naming the file and, where it applies, the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    number = 0
    try:
        with open(path, "rb") as raw:
            is_gzip = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw
            with _progress_bar(path, path.stat().st_size, progress) as bar:
                shown = 0
                while True:
                    try:
                        line = stream.readline()
                    except (OSError, EOFError, zlib.error) as err:
                        kind = "corrupt or truncated gzip data" if is_gzip else "read error"
                        raise DataError(f"{path}:{number + 1}: {kind} ({err})") from None
                    if not line:
                        break
                    number += 1
                    if number % 4096 == 0:
                        position = raw.tell()
                        bar.update(position - shown)
                        shown = position
                    if not line.strip():
                        continue
                    yield number, _parse_line(path, number, line)
                bar.update(path.stat().st_size - shown)
    except OSError as err:  # the file itself could not be opened / read
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None


def _parse_line(path: Path, number: int, line: bytes) -> dict:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}:{number}: not UTF-8 text (is this a gzip or JSON lines file?)") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        # Some published meta files hold Python dict literals instead of JSON.
        try:
            row = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            raise DataError(f"{path}:{number}: malformed line, neither JSON nor a Python dict ({err.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{number}: expected an object per line, got {type(row).__name__}")
    return row


def _text_field(path: Path, number: int, row: dict, name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value:
        problem = "is missing" if name not in row else f"is not a non-empty string ({value!r})"
        raise DataError(f"{path}:{number}: field '{name}' {problem}")
    return value


def read_titles(meta_path: str | Path, max_title_words: int, *, progress: bool = True) -> tuple[dict[str, str], dict]:
    """asin -> cleaned title for the usable titles of a meta file, plus counts of what was dropped."""
    meta_path = Path(meta_path)
    titles: dict[str, str] = {}
    dropped: dict[str, str] = {}
    lines = 0
    for number, row in read_json_lines(meta_path, progress=progress):
        lines += 1
        asin = _text_field(meta_path, number, row, "asin")
        if asin in titles:  # duplicated meta rows exist; the first usable title wins
            continue
        problem = title_problem(row.get("title"), max_title_words)
        if problem is None:
            titles[asin] = clean_title(row["title"])
            dropped.pop(asin, None)
        else:
            dropped.setdefault(asin, problem)
    if lines == 0:
        raise DataError(f"{meta_path}: no meta lines")
    reasons = Counter(dropped.values())
    return titles, {
        "meta_lines": lines,
        "meta_items": len(titles) + len(dropped),
        "items_with_title": len(titles),
        "titles_dropped": {k: reasons.get(k, 0) for k in ("missing", "junk", "too_long")},
    }


def read_reviews(reviews_path: str | Path, titles: dict[str, str], end: int, *,
                 progress: bool = True) -> tuple[list[Interaction], dict]:
    """(reviewerID, asin, time) for reviews before `end` whose item has a usable title."""
    reviews_path = Path(reviews_path)
    interactions: list[Interaction] = []
    lines = after_end = no_title = 0
    user_names: dict[str, str] = {}  # share one string object per user to save memory
    for number, row in read_json_lines(reviews_path, progress=progress):
        lines += 1
        user = _text_field(reviews_path, number, row, "reviewerID")
        asin = _text_field(reviews_path, number, row, "asin")
        time = row.get("unixReviewTime")
        if isinstance(time, bool) or not isinstance(time, (int, float)):
            problem = "is missing" if "unixReviewTime" not in row else f"is not a number ({time!r})"
            raise DataError(f"{reviews_path}:{number}: field 'unixReviewTime' {problem}")
        time = int(time)
        if time >= end:
            after_end += 1
            continue
        if asin not in titles:
            no_title += 1
            continue
        interactions.append((user_names.setdefault(user, user), asin, time))
    if lines == 0:
        raise DataError(f"{reviews_path}: no review lines")
    return interactions, {
        "review_lines": lines,
        "reviews_after_window_end": after_end,
        "reviews_of_items_without_usable_title": no_title,
    }


# --------------------------------------------------------------------------- prepare

def prepare_amazon(reviews_path, meta_path, out_dir, *, window_end="2018-11-01", min_items: int = 10_000,
                   core: int = 5, max_history: int = 10, max_title_words: int = 20,
                   split=(0.8, 0.1, 0.1), progress: bool = True) -> dict:
    """Turn raw Amazon 2018 reviews + meta files into a prepared data folder; returns the stats."""
    for name, value, low in (("core", core, 1), ("max_history", max_history, 1),
                             ("max_title_words", max_title_words, 1), ("min_items", min_items, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise PrunerecError(f"{name} must be an integer >= {low}, got {value!r}")
    check_fractions(split)
    end_day = parse_day(window_end)
    reviews_path, meta_path, out_dir = Path(reviews_path), Path(meta_path), Path(out_dir)
    for path in (reviews_path, meta_path):
        if not path.is_file():
            raise DataError(f"{path}: file not found")

    titles, meta_stats = read_titles(meta_path, max_title_words, progress=progress)
    interactions, review_stats = read_reviews(reviews_path, titles, _timestamp(end_day), progress=progress)
    start_day, kept, filter_stats = choose_window(interactions, end_day, min_items, core)
    del interactions
    if not kept:
        raise PrunerecError(
            f"no data left after filtering {reviews_path.name} / {meta_path.name}: window "
            f"{start_day}..{end_day} (exclusive), {meta_stats['items_with_title']} items with a usable title, "
            f"{filter_stats['in_window']} reviews in the window, {core}-core left nothing. "
            "Check the files, or lower --core / move --window-end.")

    users, items = assign_ids(kept)
    user_ids = {u: i for i, u in enumerate(users)}
    item_ids = {a: i for i, a in enumerate(items)}
    timed = build_samples(kept, user_ids, item_ids, max_history)
    splits = chronological_split(timed, split)
    catalog = Catalog.from_titles([titles[a] for a in items], items)

    stats = {
        "source": "amazon_reviews_2018",
        "reviews_file": str(reviews_path),
        "meta_file": str(meta_path),
        "window_start": start_day.isoformat(),
        "window_end": end_day.isoformat(),
        "window_end_exclusive": True,
        "min_items": min_items,
        "core": core,
        "max_history": max_history,
        "max_title_words": max_title_words,
        "split": list(split),
        **meta_stats,
        **review_stats,
        **filter_stats,
        "users": len(users),
        "interactions": len(kept),
        "samples": len(timed),
    }
    try:
        write_dataset(out_dir, catalog, splits, stats)
    except OSError as err:
        raise PrunerecError(f"{out_dir}: cannot write the prepared data ({err.strerror or err})") from None
    return {"items": len(catalog), **{f"{k}_samples": len(v) for k, v in splits.items()}, **stats}
