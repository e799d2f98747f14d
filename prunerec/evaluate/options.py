"""The options of `prunerec evaluate` (and of every evaluation other commands run), declared once."""
from __future__ import annotations

from dataclasses import dataclass

from prunerec.evaluate.metrics import DEFAULT_KS
from prunerec.options import BEAMS, EVAL_BATCH, check_flags, flag

GROUNDINGS = ("trie", "l2")


@dataclass(frozen=True)
class EvalOptions:
    """The single declaration of `prunerec evaluate`'s options, and what other commands evaluate with."""
    split: str = flag("test", choices=("valid", "test"))
    grounding: str = flag("both", "trie: constrained beam search; l2: BIGRec's free generation + L2 matching.",
                          choices=(*GROUNDINGS, "both"))
    beams: int = flag(BEAMS, "Beams = ranked items returned by constrained search.", low=1, cli_range=False)
    batch_size: int = flag(EVAL_BATCH, "Users per batch.", low=1, cli_range=False)  # each with `beams` rows
    workers: int = flag(0, "Processes sharing the users (0: one per usable CPU core; 1 on a GPU).", low=0,
                        cli_range=False)
    limit: int | None = flag(None, "Evaluate a seeded random subset of this many users.", kind=int, low=1,
                             cli_range=False)
    seed: int = flag(0)
    ks: tuple[int, ...] = DEFAULT_KS
    bootstrap: int = 1000

    def check(self) -> EvalOptions:
        check_flags(self)
        return self

    @property
    def groundings(self) -> tuple[str, ...]:
        return GROUNDINGS if self.grounding == "both" else (self.grounding,)

    @property
    def num_beams(self) -> int:
        return self.beams
