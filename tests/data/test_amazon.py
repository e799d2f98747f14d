"""prunerec.data.amazon: raw Amazon 2018 files -> prepared folder, and the downloader."""
from __future__ import annotations

import calendar
import gzip
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prunerec.data import amazon, download
from prunerec.data.amazon import download_amazon, prepare_amazon
from prunerec.data.catalog import DataError, load_dataset
from prunerec.errors import PrunerecError

DAY = 86400
T0 = calendar.timegm((2018, 1, 1, 0, 0, 0))  # inside the default window [2017-11-01, 2018-11-01)


def ts(year, month, day):
    return calendar.timegm((year, month, day, 0, 0, 0))


def review(user, asin, time):
    return {"overall": 5.0, "verified": True, "reviewTime": "01 1, 2018", "reviewerID": user,
            "asin": asin, "reviewerName": "x", "reviewText": "fine", "summary": "ok", "unixReviewTime": time}


def meta(asin, title="__auto__"):
    row = {"category": ["Video Games"], "description": ["d"], "also_buy": [], "brand": "b",
           "main_cat": "Video Games", "asin": asin}
    if title is not None:
        row["title"] = f"Game {asin}" if title == "__auto__" else title
    return row


def write_lines(path: Path, lines, gz=True) -> Path:
    text = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(text) if gz else text)
    return path


def write_raw(tmp_path, reviews, metas, gz=True, literal_meta=False):
    suffix = ".json.gz" if gz else ".json"
    r = write_lines(tmp_path / f"reviews{suffix}", [json.dumps(x) for x in reviews], gz)
    m = write_lines(tmp_path / f"meta{suffix}", [repr(x) if literal_meta else json.dumps(x) for x in metas], gz)
    return r, m


def prepare(tmp_path, reviews, metas, gz=True, literal_meta=False, **kw):
    r, m = write_raw(tmp_path, reviews, metas, gz, literal_meta)
    kw.setdefault("min_items", 1)
    kw.setdefault("progress", False)
    stats = prepare_amazon(r, m, tmp_path / "out", **kw)
    return stats, load_dataset(tmp_path / "out")


def all_samples(data):
    return [s for split in ("train", "valid", "test") for s in data[split]]


# --------------------------------------------------------------------------- prepare

def test_k_core_cascade_dedup_and_ids(tmp_path):
    users, items = [f"U{u}" for u in range(6)], [f"I{i}" for i in range(5)]
    reviews = [review(u, i, T0 + (a * 5 + b) * DAY) for a, u in enumerate(users) for b, i in enumerate(items)]
    reviews += [
        review("U3", "I4", T0 - DAY),                                       # earlier duplicate: this one is kept
        review("U0", "I0", T0 + 90 * DAY),                                  # later duplicate: dropped
        review("W", "I0", T0), review("W", "J", T0),                        # W: 2 items -> out (round 1)
        review("U0", "J", T0 + 50 * DAY),                                   # J: U0, W, X; 2 after W -> out (round 2)
        review("X", "J", T0), review("X", "I2", T0), review("X", "I3", T0),  # X: 3 items, 2 after J -> out (round 3)
        review("U2", "K", T0),                                              # K: one user -> out
    ]
    metas = [meta(a) for a in items + ["J", "K"]]
    stats, data = prepare(tmp_path, reviews, metas, core=3)

    # items numbered by first interaction time: I4 first (U3's early duplicate), then I0..I3
    assert [data.catalog.asins[i] for i in range(5)] == ["I4", "I0", "I1", "I2", "I3"]
    assert data.catalog.titles[0] == "Game I4"
    assert stats["users"] == 6 and stats["items"] == 5 and stats["interactions"] == 30
    assert stats["duplicates_removed"] == 2 and stats["removed_by_k_core"] == 7
    samples = all_samples(data)
    assert len(samples) == 6 * 4 == stats["samples"]
    assert {s.user for s in samples} == set(range(6))
    # users numbered by first interaction time: U3 (the early duplicate) is user 0
    u3 = sorted((s for s in samples if s.user == 0), key=lambda s: len(s.history))
    assert [s.history for s in u3] == [(0,), (0, 1), (0, 1, 2), (0, 1, 2, 3)]
    assert [s.target for s in u3] == [1, 2, 3, 4]
    written = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert written["window_start"] == "2017-11-01" and written["window_end"] == "2018-11-01"


def test_title_filtering(tmp_path):
    good = {
        "G0": "Tom &amp; Jerry&#39;s   Adventure",
        "G1": " ".join(f"w{k}" for k in range(20)),  # exactly 20 words: kept
        "G2": "JavaScript: The Good Parts",
        "G3": "Mario Kart",
    }
    bad = {
        "BJ1": "<b>Great</b> game",
        "BJ2": "var x = new Date().getTime();",
        "BJ3": "&lt;div&gt;Game",                     # junk once unescaped
        "BL": " ".join(f"w{k}" for k in range(21)),   # 21 words
        "BM": None,                                    # no title field
        "BE": "   ",
    }
    asins = list(good) + list(bad) + ["BN"]             # BN has no meta row at all
    reviews = [review(u, a, T0 + k * DAY + n) for n, u in enumerate("ABC") for k, a in enumerate(asins)]
    metas = [meta(a, t) for a, t in {**good, **bad}.items()] + [meta("G3", "Other title")]  # duplicate row
    stats, data = prepare(tmp_path, reviews, metas, core=2)

    assert sorted(data.catalog.titles) == sorted(
        ["Tom & Jerry's Adventure", good["G1"], "JavaScript: The Good Parts", "Mario Kart"])
    assert sorted(data.catalog.asins) == sorted(good)
    assert stats["titles_dropped"] == {"missing": 2, "junk": 3, "too_long": 1}
    assert stats["reviews_of_items_without_usable_title"] == 3 * 7


def test_title_problem_unit():
    assert amazon.title_problem("Halo 3") is None
    assert amazon.title_problem(None) == "missing"
    assert amazon.title_problem(["a list"]) == "missing"
    assert amazon.title_problem("function(){return 1}") == "junk"
    assert amazon.title_problem("a b c", max_words=2) == "too_long"


@pytest.mark.parametrize("max_history", [10, 3])
def test_history_truncation_and_tie_break(tmp_path, max_history):
    asins = [f"H{k:02d}" for k in range(14)]
    reviews = [review("A", a, T0 + k * DAY) for k, a in enumerate(asins)]
    reviews += [review("B", a, T0 + 30 * DAY) for a in reversed(asins)]  # all at one time: asin order
    stats, data = prepare(tmp_path, reviews, [meta(a) for a in asins], gz=False, core=2, max_history=max_history)

    assert list(data.catalog.asins) == asins  # ids 0..13 by A's times
    samples = all_samples(data)
    assert len(samples) == 2 * 13
    for user in (0, 1):  # A is user 0, B user 1; both orders are H00..H13
        seq = sorted((s for s in samples if s.user == user), key=lambda s: s.target)
        assert [s.target for s in seq] == list(range(1, 14))
        for s in seq:
            assert s.history == tuple(range(max(0, s.target - max_history), s.target))
    assert max(len(s.history) for s in samples) == max_history


def test_chronological_split(tmp_path):
    rng = random.Random(7)
    asins = [f"P{k}" for k in range(10)]
    reviews, when = [], {}
    for u in range(20):
        user = f"R{u:02d}"
        for a in rng.sample(asins, 6):
            t = T0 + rng.randrange(0, 200) * DAY
            reviews.append(review(user, a, t))
            when[user, a] = t
    stats, data = prepare(tmp_path, reviews, [meta(a) for a in asins], core=3)

    n = stats["samples"]
    assert n == 20 * 5 == stats["interactions"] - 20
    assert abs(len(data["train"]) - 0.8 * n) <= 3 and abs(len(data["valid"]) - 0.1 * n) <= 3  # 3: cuts move past ties
    assert len(data["train"]) + len(data["valid"]) + len(data["test"]) == n
    # users are numbered by (first interaction time, reviewerID)
    first = {u: min(t for (v, _), t in when.items() if v == u) for u in {u for u, _ in when}}
    user_names = sorted(first, key=lambda u: (first[u], u))
    asin = data.catalog.asins

    def target_time(s):
        return when[user_names[s.user], asin[s.target]]

    times = {k: [target_time(s) for s in data[k]] for k in ("train", "valid", "test")}
    assert max(times["train"]) < min(times["valid"]) and max(times["valid"]) < min(times["test"])
    for k in times:
        assert times[k] == sorted(times[k])
    for s in all_samples(data):  # history = the user's previous items, oldest first
        user = user_names[s.user]
        seq = sorted((t, a) for (v, a), t in when.items() if v == user)
        ids = [asin.index(a) for _, a in seq]
        pos = ids.index(s.target)
        assert s.history == tuple(ids[max(0, pos - 10):pos])


@pytest.mark.parametrize("min_items,start,n_items,years", [
    (1, "2017-11-01", 2, 1), (3, "2016-11-01", 4, 2), (100, "2015-11-01", 6, 3)])
def test_window_extends_a_year_at_a_time(tmp_path, min_items, start, n_items, years):
    plan = {"Y1": ts(2018, 3, 1), "Y1b": ts(2017, 12, 1), "Y2": ts(2017, 3, 1), "Y2b": ts(2017, 2, 1),
            "Y3": ts(2016, 3, 1), "Y3b": ts(2016, 1, 1), "Z": ts(2018, 12, 1), "Zb": ts(2018, 11, 1)}
    reviews = [review(u, a, t + n) for n, u in enumerate("AB") for a, t in plan.items()]
    stats, data = prepare(tmp_path, reviews, [meta(a) for a in plan], gz=False, core=2, min_items=min_items)

    assert stats["window_start"] == start and stats["window_years"] == years
    assert len(data.catalog) == n_items
    assert not {"Z", "Zb"} & set(data.catalog.asins)  # on or after window_end: never used
    assert stats["reviews_after_window_end"] == 4


def test_python_literal_meta_fallback(tmp_path):
    asins = ["L1", "L2", "L3"]
    reviews = [review(u, a, T0 + k * DAY + n) for n, u in enumerate("AB") for k, a in enumerate(asins)]
    metas = [meta("L1", "Tom's Game"), meta("L2", 'The "Best" Game'), meta("L3", "Plain")]
    for m in metas:
        m["price"] = None  # JSON has no None: these lines only parse as Python literals
    stats, data = prepare(tmp_path, reviews, metas, literal_meta=True, core=2)
    first_line = gzip.decompress((tmp_path / "meta.json.gz").read_bytes()).decode().splitlines()[0]
    with pytest.raises(json.JSONDecodeError):
        json.loads(first_line)
    assert list(data.catalog.titles) == ["Tom's Game", 'The "Best" Game', "Plain"]


def test_progress_bars_do_not_break(tmp_path, capsys):
    reviews = [review(u, a, T0 + k * DAY + n) for n, u in enumerate("AB") for k, a in enumerate(["a", "b"])]
    r, m = write_raw(tmp_path, reviews, [meta("a"), meta("b")])
    stats = prepare_amazon(r, m, tmp_path / "out", core=2, min_items=1, progress=True)
    assert stats["items"] == 2


# --------------------------------------------------------------------------- errors

@pytest.fixture
def good_raw(tmp_path):
    reviews = [review(u, a, T0 + k * DAY + n) for n, u in enumerate("AB") for k, a in enumerate(["a", "b"])]
    return write_raw(tmp_path, reviews, [meta("a"), meta("b")])


def expect_error(tmp_path, r, m, *fragments, **kw):
    with pytest.raises(PrunerecError) as info:
        prepare_amazon(r, m, tmp_path / "out", **{"core": 2, "min_items": 1, "progress": False, **kw})
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert not (tmp_path / "out" / "items.jsonl").exists()
    return str(info.value)


def test_missing_file(tmp_path, good_raw):
    r, m = good_raw
    expect_error(tmp_path, tmp_path / "nope.json.gz", m, "nope.json.gz", "not found")
    expect_error(tmp_path, r, tmp_path / "nometa.json.gz", "nometa.json.gz", "not found")
    with pytest.raises(DataError):  # the data-specific subclass of PrunerecError
        prepare_amazon(tmp_path / "nope.json.gz", m, tmp_path / "out", progress=False)


def test_corrupt_gzip(tmp_path, good_raw):
    r, m = good_raw
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"not really gzip" * 50)
    expect_error(tmp_path, bad, m, "bad.json.gz:1", "gzip")
    # a truncated download: good lines, then the stream stops
    lines = [json.dumps(review(f"U{k}", "a", T0)) for k in range(3000)]
    data = gzip.compress("\n".join(lines).encode())
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    expect_error(tmp_path, cut, m, "cut.json.gz:", "gzip")


def test_not_json_lines(tmp_path, good_raw):
    r, m = good_raw
    junk = tmp_path / "junk.json"
    junk.write_bytes(b"\x00\xff\xfe binary \x89PNG\n")
    expect_error(tmp_path, r, junk, "junk.json:1")
    text = tmp_path / "text.json"
    text.write_text("hello world\n")
    expect_error(tmp_path, text, m, "text.json:1", "malformed")


def test_malformed_line_and_missing_fields(tmp_path, good_raw):
    r, m = good_raw
    rows = [json.dumps(review("A", "a", T0)), json.dumps(review("B", "a", T0)), '{"reviewerID": "A", "asin"']
    expect_error(tmp_path, write_lines(tmp_path / "broken.json.gz", rows), m, "broken.json.gz:3", "malformed")
    no_time = review("B", "a", T0)
    del no_time["unixReviewTime"]
    rows = [json.dumps(review("A", "a", T0)), json.dumps(no_time)]
    expect_error(tmp_path, write_lines(tmp_path / "notime.json.gz", rows), m,
                 "notime.json.gz:2", "unixReviewTime")
    rows = [json.dumps(meta("a")), json.dumps({"title": "no asin"})]
    expect_error(tmp_path, r, write_lines(tmp_path / "noasin.json.gz", rows), "noasin.json.gz:2", "asin")
    expect_error(tmp_path, r, write_lines(tmp_path / "list.json.gz", ["[1, 2]"]), "list.json.gz:1")


def test_nothing_left(tmp_path):
    reviews = [review(u, a, T0 + k) for u in "AB" for k, a in enumerate("ab")]
    r, m = write_raw(tmp_path, reviews, [meta("a", "<script>"), meta("b", "var x = 1")])
    expect_error(tmp_path, r, m, "no data left")
    r, m = write_raw(tmp_path, reviews, [meta("a"), meta("b")])
    expect_error(tmp_path, r, m, "no data left", core=3)  # 2 users, 2 items: no 3-core


def test_bad_arguments(tmp_path, good_raw):
    r, m = good_raw
    expect_error(tmp_path, r, m, "split", split=(0.8, 0.1))
    expect_error(tmp_path, r, m, "2018-13-01", window_end="2018-13-01")
    expect_error(tmp_path, r, m, "max_history", max_history=0)


# --------------------------------------------------------------------------- download

FILES = {
    "/categoryFiles/Toys.json.gz": bytes(range(256)) * 40,
    "/metaFiles2/meta_Toys.json.gz": b"meta" * 3000,
}


class Server:
    def __init__(self):
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        self.cut_after: int | None = None  # send only this many body bytes, then hang up
        self.no_length = False  # send no Content-Length (the body ends when the connection closes)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = FILES.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                if not server.no_length:
                    self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cut_after is not None:
                    payload = payload[: server.cut_after]
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def server(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def fetch(server, out, **kw):
    return download_amazon("Toys", out, base_url=server.url, timeout=5, progress=False, **kw)


def test_download_fresh_and_skip_complete(tmp_path, server):
    reviews, meta_file = fetch(server, tmp_path)
    assert reviews == tmp_path / "Toys.json.gz" and meta_file == tmp_path / "meta_Toys.json.gz"
    assert reviews.read_bytes() == FILES["/categoryFiles/Toys.json.gz"]
    assert meta_file.read_bytes() == FILES["/metaFiles2/meta_Toys.json.gz"]
    assert not list(tmp_path.glob("*.part"))
    before = len(server.requests)
    fetch(server, tmp_path)
    assert len(server.requests) == before  # complete files are not fetched again


def test_download_resumes_with_range(tmp_path, server):
    body = FILES["/categoryFiles/Toys.json.gz"]
    (tmp_path / "Toys.json.gz.part").write_bytes(body[:1000])
    reviews, _ = fetch(server, tmp_path)
    assert reviews.read_bytes() == body
    assert ("/categoryFiles/Toys.json.gz", "bytes=1000-") in server.requests


def test_download_restarts_when_range_ignored(tmp_path, server):
    server.ignore_range = True
    (tmp_path / "Toys.json.gz.part").write_bytes(b"stale bytes")
    reviews, _ = fetch(server, tmp_path)
    assert reviews.read_bytes() == FILES["/categoryFiles/Toys.json.gz"]


def test_download_part_already_complete(tmp_path, server):
    body = FILES["/categoryFiles/Toys.json.gz"]
    (tmp_path / "Toys.json.gz.part").write_bytes(body)
    reviews, _ = fetch(server, tmp_path)  # the server answers 416; the .part is the whole file
    assert reviews.read_bytes() == body


def test_download_broken_off_then_resumed(tmp_path, server, monkeypatch):
    monkeypatch.setattr(download, "DOWNLOAD_CHUNK", 1024)
    server.cut_after = 3000
    with pytest.raises(PrunerecError, match="run the command again to resume"):
        fetch(server, tmp_path)
    part = tmp_path / "Toys.json.gz.part"
    assert part.is_file() and not (tmp_path / "Toys.json.gz").exists()
    kept = part.stat().st_size
    assert 0 < kept < len(FILES["/categoryFiles/Toys.json.gz"])
    server.cut_after = None
    reviews, _ = fetch(server, tmp_path)
    assert reviews.read_bytes() == FILES["/categoryFiles/Toys.json.gz"]
    assert ("/categoryFiles/Toys.json.gz", f"bytes={kept}-") in server.requests


def test_download_http_error(tmp_path, server):
    with pytest.raises(PrunerecError) as info:
        download_amazon("Nope", tmp_path, base_url=server.url, timeout=5, progress=False)
    assert "HTTP 404" in str(info.value) and "--reviews FILE --meta FILE" in str(info.value)


def test_download_offline(tmp_path, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PrunerecError) as info:
        download_amazon("Video_Games", tmp_path, base_url="http://127.0.0.1:9", timeout=5, progress=False)
    message = str(info.value)
    assert "could not reach http://127.0.0.1:9/categoryFiles/Video_Games.json.gz" in message
    assert "by hand" in message
    assert "prunerec data prepare amazon --reviews FILE --meta FILE" in message
    assert "http://127.0.0.1:9/metaFiles2/meta_Video_Games.json.gz" in message


def test_download_rejects_odd_category(tmp_path):
    with pytest.raises(PrunerecError, match="category"):
        download_amazon("../etc", tmp_path, progress=False)


def test_truncated_download_without_length_is_not_kept_as_complete(tmp_path, server, monkeypatch):
    whole = gzip.compress(b'{"reviewerID": "u", "asin": "a"}\n' * 2000)
    monkeypatch.setitem(FILES, "/categoryFiles/Toys.json.gz", whole)
    monkeypatch.setitem(FILES, "/metaFiles2/meta_Toys.json.gz", gzip.compress(b"{}\n"))
    server.no_length, server.cut_after = True, len(whole) // 2
    with pytest.raises(PrunerecError, match="without the end of its gzip stream"):
        fetch(server, tmp_path)
    assert not (tmp_path / "Toys.json.gz").exists() and (tmp_path / "Toys.json.gz.part").is_file()
    server.cut_after = None
    reviews, _ = fetch(server, tmp_path)  # resumed with a range; now the stream is whole
    assert reviews.read_bytes() == whole
