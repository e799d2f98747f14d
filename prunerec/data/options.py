"""The options of `prunerec data prepare amazon` and `prunerec data demo`, declared once."""
from __future__ import annotations

from dataclasses import dataclass

from prunerec.options import check_flags, flag


@dataclass(frozen=True)
class PrepareOptions:
    """How raw Amazon 2018 files become a prepared data set (the BIGRec protocol's knobs)."""
    window_end: str = flag("2018-11-01", "End of the time window (exclusive).")
    min_items: int = flag(10_000, "Widen the window a year at a time until this many items remain.", low=1,
                          cli_range=False)
    core: int = flag(5, "Iterative k-core on users and items.", low=1, cli_range=False)
    max_history: int = flag(10, "History items kept per sample.", low=1, cli_range=False)

    def check(self) -> PrepareOptions:
        check_flags(self)
        return self


@dataclass(frozen=True)
class DemoDataOptions:
    """The built-in synthetic store: its seed and size."""
    seed: int = flag(0)
    n_items: int = flag(1200, cli="--items", low=1, cli_range=False)
    n_users: int = flag(1600, cli="--users", low=1, cli_range=False)

    def check(self) -> DemoDataOptions:
        check_flags(self)
        return self
