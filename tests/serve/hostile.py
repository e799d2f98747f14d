"""A seeded generator of malformed and hostile requests to POST /v1/recommend: byte and
structure mutations of valid bodies, random JSON, deep nesting, long and special numbers,
lone surrogates, random bytes, huge arrays, and odd headers and encodings. Every case stays
under the server's body limit, so each one reaches the parser (or the HTTP layer) for real."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field


@dataclass
class Case:
    kind: str
    body: bytes
    headers: dict = field(default_factory=dict)
    chunked: bool = False  # sent with Transfer-Encoding: chunked (no Content-Length)

    def describe(self) -> str:
        shown = self.body[:120]
        return f"{self.kind}: {shown!r}{'...' if len(self.body) > 120 else ''} ({len(self.body)} bytes) {self.headers}"


CONTENT_TYPES = [None, "application/json", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=xyz", "application/json; charset=utf-16", "application/xml",
                 "application/octet-stream", "", "garbage/;;;=", "application/json; charset=\u00e9".encode().decode(
                     "latin-1")]
ODD_HEADERS = [{"Content-Encoding": "gzip"}, {"Content-Encoding": "br, deflate"}, {"Accept": "text/html"},
               {"Accept-Charset": "utf-7"}, {"Authorization": "Bearer \u00ff\u00fe"}, {"Authorization": "Basic"},
               {"Expect": "100-continue"}, {"X-Forwarded-For": "1.2.3.4, unknown"}, {"Cookie": "a=" + "b" * 2000},
               {"Content-Language": "x" * 500}, {"Range": "bytes=0-1"}, {"Connection": "close"},
               {"Transfer-Encoding": "identity"}]
SPECIAL_NUMBERS = ["1" * 5000, "-" + "9" * 4400, "1" * 4300, "1e999", "-1e999", "1.7976931348623157e308",
                   "4e-400", "NaN", "Infinity", "-Infinity", "1.0", "-0", "0.0000001", "9" * 30, "-1", "2e2",
                   "00", "0x10", "+1", ".5", "1.", "1e", "--1"]
ODD_STRINGS = ["", " ", "\x00", "\u0000Halo", "Halo\n", "\ud800", "\udfff\ud800", "\ud83d\ude00", "\u202e",
               "Z" * 3000, "Halo 2" + "\u0301" * 50, "&amp;#8482", "<script>", "' OR 1=1 --", "%s%n", "\\",
               "\"", "Zelda", "Halo 2", "\ufeff"]


class HostileRequests:
    def __init__(self, seed: int, titles: list[str], body_limit: int):
        self.rng = random.Random(seed)
        self.titles, self.limit = titles, body_limit

    # ------------------------------------------------------------------ pieces
    def valid_body(self) -> dict:
        rng = self.rng
        history = [rng.randrange(len(self.titles)) if rng.random() < 0.7 else rng.choice(self.titles)
                   for _ in range(rng.randint(1, 8))]
        body = {"history": history, "k": rng.randint(1, 10)}
        if rng.random() < 0.2:
            body["free_generation"] = rng.random() < 0.5
        return body

    def random_string(self) -> str:
        rng = self.rng
        if rng.random() < 0.4:
            return rng.choice(ODD_STRINGS)
        alphabet = [chr(rng.randrange(0x20, 0x7f)) for _ in range(10)] + ["\u00e9", "\u4e2d", "\ud800", "\x07"]
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))

    def random_value(self, depth: int = 0):
        rng = self.rng
        roll = rng.random()
        if depth > 4 or roll < 0.45:
            return rng.choice([None, True, False, rng.randint(-10**6, 10**6), rng.random() * 10**rng.randint(-5, 300),
                               float("nan"), float("inf"), 10**rng.randint(18, 400), self.random_string()])
        if roll < 0.75:
            return [self.random_value(depth + 1) for _ in range(rng.randint(0, 5))]
        return {self.random_string(): self.random_value(depth + 1) for _ in range(rng.randint(0, 4))}

    def encode(self, value) -> bytes:
        """json.dumps, sometimes with raw UTF-8 and surrogates passed through (invalid UTF-8)."""
        text = json.dumps(value, ensure_ascii=self.rng.random() < 0.7)
        return text.encode("utf-8", "surrogatepass")

    # ------------------------------------------------------------------ kinds
    def byte_mutation(self) -> Case:
        rng = self.rng
        data = bytearray(json.dumps(self.valid_body()).encode())
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(5)
            at = rng.randrange(len(data) + 1)
            if op == 0 and data:
                del data[min(at, len(data) - 1)]
            elif op == 1:
                data[at:at] = bytes([rng.randrange(256)])
            elif op == 2:
                data[at:at] = rng.choice([b"[", b"]", b"{", b"}", b",", b":", b'"', b"\\", b"\\u", b"\x00",
                                          b"\xff", b"\xc3", b"NaN", b"-", b"e9999"])
            elif op == 3 and data:
                end = rng.randint(at, len(data))
                data[at:at] = data[at:end]
            else:
                data = data[:at]
        return Case("byte-mutation", bytes(data))

    def field_mutation(self) -> Case:
        rng = self.rng
        body = self.valid_body()
        op = rng.randrange(6)
        if op == 0:
            body[rng.choice(["history", "k", "free_generation"])] = self.random_value()
        elif op == 1:
            body["history"][rng.randrange(len(body["history"]))] = self.random_value()
        elif op == 2:
            body[self.random_string()] = self.random_value()
        elif op == 3:
            body.pop(rng.choice(["history", "k"]), None)
        elif op == 4:
            body["k"] = rng.choice([0, -1, 51, 33, 10**20, -10**20, 2**63, 1.5, "5", True, None])
        else:
            body["history"] = [rng.choice([-1, 32, 33, 10**30, -10**30, 2**64, True, False, None, 1.0, [], {}])]
        return Case("field-mutation", self.encode(body))

    def duplicate_keys(self) -> Case:
        body = self.valid_body()
        key = self.rng.choice(list(body))
        text = json.dumps(body)[:-1] + f', "{key}": {json.dumps(body[key])}}}'
        return Case("duplicate-key", text.encode())

    def random_json(self) -> Case:
        return Case("random-json", self.encode(self.random_value()))

    def deep_nesting(self) -> Case:
        rng = self.rng
        depth = rng.choice([rng.randint(50, 1500), rng.randint(1500, 20000), 20000])
        opener, closer = rng.choice([("[", "]"), ('{"a":', "}"), ('[{"x":', "}]")])
        depth = min(depth, (self.limit - 64) // (len(opener) + len(closer)))
        inner = opener * depth + "1" + closer * (depth if rng.random() < 0.7 else rng.randrange(depth))
        where = rng.randrange(3)
        text = (inner if where == 0 else '{"history": ' + inner + ', "k": 3}' if where == 1
                else '{"history": [1], "k": 3, "extra": ' + inner + "}")
        return Case("deep-nesting", text.encode())

    def big_number(self) -> Case:
        number = self.rng.choice(SPECIAL_NUMBERS)
        template = self.rng.choice(['{"history": [%s], "k": 3}', '{"history": [1], "k": %s}', "%s",
                                    '{"history": [1, 2], "free_generation": %s}', '[%s]'])
        return Case("big-number", (template % number).encode())

    def random_bytes(self) -> Case:
        rng = self.rng
        size = rng.choice([1, 2, 7, 100, 1000, rng.randrange(1, self.limit)])
        data = bytes(rng.randrange(256) for _ in range(size))
        if rng.random() < 0.3:  # a valid body in another encoding, or behind a BOM
            text = json.dumps(self.valid_body())
            data = rng.choice([text.encode("utf-16"), text.encode("utf-32"), b"\xef\xbb\xbf" + text.encode(),
                               text.encode("utf-16-le"), text.encode() + b"\xff"])
        return Case("random-bytes", data)

    def huge_array(self) -> Case:
        rng = self.rng
        item = rng.choice(["1", "31", '"Halo 2"', "999999", '"nope"', "true", "[]"])
        count = (self.limit - 40) // (len(item) + 1) - rng.randrange(10)
        text = '{"history": [' + ",".join([item] * count) + '], "k": 2}'
        return Case("huge-array", text.encode())

    def whitespace_and_empty(self) -> Case:
        return Case("empty", self.rng.choice([b"", b" ", b"\n\t\r ", b"null", b"{}", b"[]", b'""', b"0",
                                              b"\x00", b"{" + b" " * 1000 + b"}"]))

    KINDS = (("byte_mutation", 6), ("field_mutation", 6), ("duplicate_keys", 1), ("random_json", 3),
             ("deep_nesting", 2), ("big_number", 2), ("random_bytes", 3), ("huge_array", 1),
             ("whitespace_and_empty", 1))

    def case(self) -> Case:
        names, weights = zip(*self.KINDS)
        made = getattr(self, self.rng.choices(names, weights)[0])()
        made.body = made.body[:self.limit]
        roll = self.rng.random()
        if roll < 0.5:
            content_type = self.rng.choice(CONTENT_TYPES)
            if content_type is not None:
                made.headers["Content-Type"] = content_type
        elif roll < 0.75:
            made.headers.update(self.rng.choice(ODD_HEADERS))
        elif roll < 0.85:
            made.chunked = True
        return made

    def cases(self, count: int) -> list[Case]:
        return [self.case() for _ in range(count)]
