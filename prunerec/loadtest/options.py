"""The options of `prunerec loadtest` (light to import: the CLI reads its defaults), and the
`prunerec serve` options a load test passes to both servers it starts, in that order."""
from __future__ import annotations

from dataclasses import dataclass, field

from prunerec.options import option_name
from prunerec.serve.options import ServeOptions

SHARED_SERVE_OPTIONS = ["beams", "max_concurrency", "max_queue", "max_batch", "request_timeout", "processes",
                        "enforce_eager"]


@dataclass(frozen=True)
class LoadtestOptions:
    users: tuple[int, ...] = (1, 4, 16, 64)
    duration_s: int = 60                # per level and model (locust takes whole seconds)
    spawn_rate: float | None = None     # users started per second; None: all of a level within 1 s
    k: int = 10
    # both servers' options (engine included); those in SHARED_SERVE_OPTIONS are passed on
    serve: ServeOptions = field(default_factory=ServeOptions)
    port: int = 0                       # 0: a free port for each server started
    ready_timeout: float = 600.0
    allow_remote: bool = False
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
