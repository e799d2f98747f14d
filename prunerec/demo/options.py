"""The options of `prunerec demo` (light to import: the CLI reads them before any model code)."""
from __future__ import annotations

from dataclasses import dataclass, field

from prunerec.errors import PrunerecError
from prunerec.loadtest.options import parse_users
from prunerec.options import check_flags, flag

DEMO_ENGINES = ("vllm", "torch")  # the engines the demo can load-test (ONNX is checked by its export)


def _load_levels(text: str) -> tuple[int, ...]:
    return tuple(parse_users(text, flag="--load-users"))


@dataclass(frozen=True)
class DemoPlan:
    # on 2 idle cores the tiny preset's best validation loss comes at step 1,788 (~4 min; a
    # 5-minute budget early-stops at 261 s with the same weights), so the minute goes to
    # distillation: 600 steps a stage keep 96% of the base's HR@10, 150 kept 71%
    minutes: float = flag(4.0, "Training budget in minutes.", low=0, open_low=True, cli_range=False)
    eval_users: int = flag(300, "Test users evaluated.", cli="--users", low=0, open_low=True, cli_range=False)
    distill_steps: int = flag(600, "Distillation steps after each pruning stage.", low=0, open_low=True,
                              cli_range=False)
    # vLLM and PyTorch side by side: on models this small vLLM's per-step work, not the model,
    # sets the pace, so the pruned model's speed-up shows in full only on the torch engine
    engines: tuple[str, ...] = flag(DEMO_ENGINES, "Serving engine of the load test; repeat it for several (each "
                                                  "gets its rows in the table).", cli="--engine", choices=DEMO_ENGINES,
                                    multiple=True)
    load_users: tuple[int, ...] = flag((1, 4), "Concurrent users of the load test, one level after another.",
                                       parse=_load_levels, default_text="1,4")
    load_seconds: float = flag(10.0, "Seconds of load per level, model and engine.", low=0, open_low=True,
                               cli_range=False)
    # what other runs of the same steps change (bench/gpu_check.py: the small preset on a GPU)
    preset: str = "tiny"
    data_size: tuple[int, int] = (1200, 1600)  # demo store: items, users
    grounding: str = "both"                    # of the two evaluations
    train: dict = field(default_factory=dict)     # run_train options over the demo's
    compress: dict = field(default_factory=dict)  # CompressOptions fields over the demo's
    export: dict = field(default_factory=dict)    # ExportOptions fields over the demo's
    serve: dict = field(default_factory=dict)     # ServeOptions fields of the load test over the demo's

    def check(self) -> None:
        check_flags(self)
        if not self.load_users or min(self.load_users) <= 0:
            raise PrunerecError(f"--load-users must be positive counts, got {self.load_users}")
        if not self.engines:
            raise PrunerecError("--engine: name at least one serving engine")
