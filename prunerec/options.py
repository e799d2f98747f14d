"""Options declared once. A dataclass field made with `flag(...)` carries its command-line help,
bounds and choices; `click_options` turns the fields a command takes into click options (the
same declaration wherever two commands share options), and `check_flags` validates a library
caller's values against the same bounds."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import click

from prunerec.errors import PrunerecError

FLAG = "prunerec.flag"

# values several commands share, declared here once
BEAMS = 20                              # beams of the constrained search = ranked items per user
ENGINES = ("vllm", "torch", "onnx")     # serving engines
EVAL_BATCH = 16                         # users per batch of an evaluation


@dataclass(frozen=True)
class Flag:
    help: str = ""
    low: float | None = None      # smallest value allowed
    open_low: bool = False        # the value must be above `low`, not equal to it
    high: float | None = None     # largest value allowed
    choices: tuple[str, ...] | None = None
    kind: type | None = None      # the value's type where the default (None) does not tell
    default_text: str | None = None  # how --help shows a computed default


def flag(default, help: str = "", **spec):
    return field(default=default, metadata={FLAG: Flag(help=help, **spec)})


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _click_type(spec: Flag, default):
    if spec.choices:
        return click.Choice(list(spec.choices))
    kind = spec.kind or type(default)
    if spec.low is None and spec.high is None:
        return kind
    if kind is int:
        return click.IntRange(min=spec.low, max=spec.high, min_open=spec.open_low)
    if kind is float:
        return click.FloatRange(min=spec.low, max=spec.high, min_open=spec.open_low)
    return kind


def _flags(cls) -> dict[str, tuple[object, Flag]]:
    return {f.name: (f.default, f.metadata[FLAG]) for f in fields(cls) if FLAG in f.metadata}


def click_options(cls, names, *, defaults: dict | None = None, help_suffix: str = ""):
    """A decorator adding one click option per field of `cls` in `names` (in that order);
    `defaults` overrides a field's default for this command."""
    declared = _flags(cls)

    def decorate(command):
        for name in reversed(list(names)):
            default, spec = declared[name]
            default = (defaults or {}).get(name, default)
            text = spec.help + help_suffix
            shown = spec.default_text if spec.default_text and default is None else None
            if shown:
                text += f" [default: {shown}]"
            if isinstance(default, bool) and spec.kind is None:
                command = click.option(option_name(name), is_flag=True, default=default, help=text)(command)
            else:
                command = click.option(option_name(name), type=_click_type(spec, default), default=default,
                                       show_default=default is not None,
                                       help=text)(command)
        return command

    return decorate


def check_flags(options) -> None:
    """The bounds and choices of every flag field of `options`, as the command line enforces them."""
    for name, (_, spec) in _flags(type(options)).items():
        value = getattr(options, name)
        if value is None or isinstance(value, bool):
            continue
        if spec.choices and value not in spec.choices:
            raise PrunerecError(f"{option_name(name)} must be one of {', '.join(spec.choices)}, got {value!r}")
        if spec.low is not None and (value <= spec.low if spec.open_low else value < spec.low):
            relation = ">" if spec.open_low else ">="
            raise PrunerecError(f"{option_name(name)} must be {relation} {spec.low:g}, got {value}")
        if spec.high is not None and value > spec.high:
            raise PrunerecError(f"{option_name(name)} must be <= {spec.high:g}, got {value}")


def check_positive(name: str, value, allow_zero: bool = False) -> None:
    """A library caller's count or amount for flag `--name`: > 0 (>= 0 with allow_zero); None passes."""
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise PrunerecError(f"--{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
