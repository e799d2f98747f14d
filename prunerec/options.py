"""Options declared once. A dataclass field made with `flag(...)` carries its command-line help,
bounds and choices; `click_options` turns the fields a command takes into click options (the
same declaration wherever two commands share options), and `check_flags` validates a library
caller's values against the same bounds."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields

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
    cli: str | None = None        # the option's name where it is not the field's (e.g. "--lambda")
    negate: bool = False          # a bool field the flag turns off (e.g. --no-distill sets distill False)
    path: str | None = None       # "dir" or "file": the value names a folder or a file
    exists: bool = False          # ... that must exist already
    parse: Callable | None = None  # command-line text -> value (a ValueError is a usage error)
    metavar: str | None = None
    multiple: bool = False        # the option may be repeated; the value is the tuple of its choices
    envvar: str | None = None     # an environment variable that sets it too (shown in --help)
    hidden: bool = False          # left out of --help (testing aids)
    cli_range: bool = True        # False: bounds are checked by check_flags (a PrunerecError), not by click


def flag(default, help: str = "", **spec):
    return field(default=default, metadata={FLAG: Flag(help=help, **spec)})


def flag_of(cls, name: str, default=MISSING):
    """`cls`'s declaration of flag `name` (help, bounds) for another options class, with that
    command's own default where given."""
    declared = {f.name: f for f in fields(cls)}[name]
    return field(default=declared.default if default is MISSING else default, metadata=declared.metadata)


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _click_type(spec: Flag, default):
    if spec.choices:
        return click.Choice(list(spec.choices))
    if spec.path:
        return click.Path(exists=spec.exists, file_okay=spec.path == "file", dir_okay=spec.path == "dir")
    kind = spec.kind or type(default)
    if (spec.low is None and spec.high is None) or not spec.cli_range:
        return kind
    if kind is int:
        return click.IntRange(min=spec.low, max=spec.high, min_open=spec.open_low)
    if kind is float:
        return click.FloatRange(min=spec.low, max=spec.high, min_open=spec.open_low)
    return kind


def _flags(cls) -> dict[str, tuple[object, Flag]]:
    return {f.name: (f.default, f.metadata[FLAG]) for f in fields(cls) if FLAG in f.metadata}


def _parsing(spec: Flag):
    """A click callback turning the option's text into the field's value with `spec.parse`."""
    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return spec.parse(value)
        except (ValueError, PrunerecError) as err:
            raise click.BadParameter(str(err)) from None
    return callback


def _option(name: str, default, spec: Flag, help_suffix: str):
    text = spec.help + help_suffix
    cli = spec.cli or option_name(name)
    if spec.parse is not None:  # the default as a user would type it (parse turns it into the value)
        typed = spec.default_text if spec.default_text is not None else default
        kind = click.Choice(list(spec.choices)) if spec.choices else None
        return click.option(cli, name, type=kind, default=typed, callback=_parsing(spec), metavar=spec.metavar,
                            show_default=typed is not None, help=text)
    if spec.default_text and default is None:
        text += f" [default: {spec.default_text}]"
    env = {"envvar": spec.envvar, "show_envvar": True} if spec.envvar else {}
    if isinstance(default, bool) and spec.kind is None:
        if spec.negate:
            return click.option(cli, name, is_flag=True, flag_value=not default, default=default, help=text, **env)
        return click.option(cli, name, is_flag=True, default=default, help=text, **env)
    return click.option(cli, name, type=_click_type(spec, default), default=default, metavar=spec.metavar,
                        multiple=spec.multiple, show_default=default is not None, hidden=spec.hidden, help=text,
                        **env)


def click_options(cls, names, *, defaults: dict | None = None, help_suffix: str = ""):
    """A decorator adding one click option per field of `cls` in `names` (in that order);
    `defaults` overrides a field's default for this command."""
    declared = _flags(cls)

    def decorate(command):
        for name in reversed(list(names)):
            default, spec = declared[name]
            command = _option(name, (defaults or {}).get(name, default), spec, help_suffix)(command)
        return command

    return decorate


def check_flags(options) -> None:
    """The bounds and choices of every flag field of `options`, as the command line enforces them."""
    for name, (_, spec) in _flags(type(options)).items():
        value = getattr(options, name)
        if value is None or isinstance(value, bool):
            continue
        if spec.parse is not None or spec.path:
            continue
        label = spec.cli or option_name(name)
        chosen = value if spec.multiple else (value,)
        if spec.choices and any(v not in spec.choices for v in chosen):
            raise PrunerecError(f"{label} must be one of {', '.join(spec.choices)}, got {value!r}")
        if spec.multiple:
            continue
        if spec.low is not None and (value <= spec.low if spec.open_low else value < spec.low):
            relation = ">" if spec.open_low else ">="
            raise PrunerecError(f"{label} must be {relation} {spec.low:g}, got {value}")
        if spec.high is not None and value > spec.high:
            raise PrunerecError(f"{label} must be <= {spec.high:g}, got {value}")
