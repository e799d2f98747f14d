"""The options of `prunerec loadtest` (light to import: the CLI reads its defaults), and the
`prunerec serve` options a load test passes to both servers it starts, in that order."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from prunerec.errors import PrunerecError
from prunerec.options import flag, option_name
from prunerec.serve.options import ServeOptions

SHARED_SERVE_OPTIONS = ["beams", "max_concurrency", "max_queue", "max_batch", "request_timeout", "processes",
                        "enforce_eager"]
MAX_USERS = 256             # simulated users (= requests in flight) per level
MAX_DURATION_S = 3600       # seconds of load per level


def parse_duration(text: str) -> int:
    """Seconds from "90", "60s", "2m", "1m30s" or "1h" (1 s .. MAX_DURATION_S)."""
    match = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s?)?\s*", str(text).lower())
    if not match or not any(match.groups()):
        raise PrunerecError(f"--duration {text!r}: write seconds like 90 or 60s, or minutes like 2m")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not 1 <= total <= MAX_DURATION_S:
        raise PrunerecError(f"--duration {text!r}: must be between 1 s and {MAX_DURATION_S // 60} min per level")
    return total


def parse_users(text: str, flag: str = "--users") -> list[int]:
    """Concurrency levels from "1,4,16,64": distinct integers 1..MAX_USERS, run in ascending order."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p.isdigit() for p in parts):
        raise PrunerecError(f"{flag} {text!r}: write a comma-separated list of positive integers, like 1,4,16,64")
    levels = [int(p) for p in parts]
    if any(not 1 <= n <= MAX_USERS for n in levels):
        raise PrunerecError(f"{flag} {text!r}: each level must be between 1 and {MAX_USERS}")
    if len(set(levels)) != len(levels):
        raise PrunerecError(f"{flag} {text!r}: a level is repeated")
    return sorted(levels)


def _levels(text: str) -> tuple[int, ...]:
    return tuple(parse_users(text))


@dataclass(frozen=True)
class LoadtestOptions:
    """The single declaration of `prunerec loadtest`'s own options; the servers' are a ServeOptions."""
    users: tuple[int, ...] = flag((1, 4, 16, 64), "Concurrency levels: simulated users, each sending its next "
                                                  "request when the previous is answered.", parse=_levels,
                                  default_text="1,4,16,64")
    duration_s: int = flag(60, "Load per level and model: 90, 60s, 2m (at most 60m).", cli="--duration",
                           parse=parse_duration, default_text="60s")  # locust takes whole seconds
    spawn_rate: float | None = flag(None, "Users started per second. Default: all users of a level within 1 s.",
                                    kind=float, low=0.01)
    k: int = flag(10, "Items asked for per request.", low=1, high=50)
    # both servers' options (engine included); those in SHARED_SERVE_OPTIONS are passed on
    serve: ServeOptions = field(default_factory=ServeOptions)
    port: int = flag(0, "Loopback port of the servers started (one at a time); 0: a free one.", low=0, high=65535)
    ready_timeout: float = flag(600.0, "Seconds a started server may take to answer GET /ready with 200.", low=1)
    allow_remote: bool = flag(False, "Allow URLs that are not loopback addresses.")
    server_env: dict = field(default_factory=dict)

    @property
    def engine(self) -> str:
        return self.serve.engine

    @property
    def request_timeout(self) -> float:
        return self.serve.request_timeout

    def serve_args(self) -> list[str]:
        """The `prunerec serve` options both models get (identical settings)."""
        args = []
        for name in SHARED_SERVE_OPTIONS:
            value = getattr(self.serve, name)
            if value is True:
                args.append(option_name(name))
            elif value is not None and value is not False:  # unset: the server's own default
                args += [option_name(name), str(value)]
        return args
