"""Target shapes of a compressed model (pure: config in, numbers out).

By default the paper's proportions (Qwen2-0.5B: 7 of 14 query heads, hidden 448 of 896, MLP 896
of 4864, 8 of 24 layers) are applied to the model's own shape and rounded to hardware-friendly
sizes:

- query heads: the feasible count nearest to the proportion (every kept KV group must keep the
  same number of its own query heads, so e.g. 9 of 14 heads over 2 KV groups of 7 is impossible);
  KV groups kept: the same proportion of the KV heads, moved to the nearest count that the kept
  query heads divide evenly over;
- hidden: kept heads x head_dim when the base model has hidden == heads x head_dim (so the pruned
  model keeps that identity, which vLLM's native Qwen2 needs: it ignores config.head_dim); otherwise the
  proportion rounded to a multiple of head_dim;
- MLP: the proportion rounded to a multiple of 64 (32 below 256 channels), at least 32;
- layers: the proportion rounded, at least 1.

Each of ``heads``, ``kv_heads``, ``hidden``, ``mlp`` and ``layers`` can be overridden by a count
(int, kept exactly, refused when impossible) or a ratio (float in (0, 1], rounded as above), on
the command line or in a JSON/YAML file. Every problem raises a PrunerecError up front.
"""
from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from prunerec.errors import PrunerecError
from prunerec.model.surgery import count_parameters_from_config
from prunerec.model.validate import head_dim

__all__ = [
    "PAPER_PROPORTIONS",
    "KEYS",
    "Targets",
    "base_shape",
    "parse_amount",
    "load_target_file",
    "resolve_targets",
    "feasible_heads",
    "target_config",
    "target_summary",
]

Amount = int | float

# Qwen2-0.5B -> PruneRec's compressed model (the paper's shape).
PAPER_PROPORTIONS = {
    "heads": Fraction(7, 14),
    "hidden": Fraction(448, 896),
    "mlp": Fraction(896, 4864),
    "layers": Fraction(8, 24),
}
KEYS = ("heads", "kv_heads", "hidden", "mlp", "layers")


@dataclass(frozen=True)
class Targets:
    """Counts kept in every layer (and the number of layers kept)."""

    layers: int
    heads: int
    kv_heads: int
    hidden: int
    mlp: int
    notes: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> dict:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


# ----------------------------------------------------------------------------- shapes


def base_shape(config) -> dict:
    """The shape fields of a Qwen2 config that pruning changes (plus vocab and tying)."""
    n_q = int(config.num_attention_heads)
    return {
        "layers": int(config.num_hidden_layers),
        "heads": n_q,
        "kv_heads": int(config.num_key_value_heads or n_q),
        "head_dim": head_dim(config),
        "hidden": int(config.hidden_size),
        "mlp": int(config.intermediate_size),
        "vocab": int(config.vocab_size),
        "tied": bool(config.tie_word_embeddings),
    }


def target_config(config, targets: Targets):
    """A copy of ``config`` with the target shape (what the surgery will write)."""
    shape = base_shape(config)
    new = copy.deepcopy(config)
    new.num_hidden_layers = targets.layers
    new.num_attention_heads = targets.heads
    new.num_key_value_heads = targets.kv_heads
    new.head_dim = shape["head_dim"]
    new.hidden_size = targets.hidden
    new.intermediate_size = targets.mlp
    return new


def target_summary(config, targets: Targets) -> dict:
    """Shape and parameter counts of the target, beside those of the base."""
    base_counts = count_parameters_from_config(config)
    new = target_config(config, targets)
    counts = count_parameters_from_config(new)
    return {
        "base_shape": base_shape(config),
        "target_shape": base_shape(new),
        "base_parameters": base_counts,
        "target_parameters": counts,
        "non_embedding_removed_share": 1 - counts["non_embedding"] / base_counts["non_embedding"],
    }


# ----------------------------------------------------------------------------- parsing


def parse_amount(value, name: str) -> Amount | None:
    """A count (int) or a ratio (float in (0, 1]) from a CLI string or a config-file value.

    "7" -> 7 (count); "0.5", "5e-1", "50%" -> 0.5 (ratio). None stays None.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise PrunerecError(f"{name}: expected a count or a ratio, got {value!r}")
    if isinstance(value, int):
        amount: Amount = value
    elif isinstance(value, float):
        amount = value
    else:
        text = str(value).strip()
        try:
            if re.fullmatch(r"[+-]?\d+", text):
                amount = int(text)
            elif text.endswith("%"):
                amount = float(text[:-1]) / 100
            else:
                amount = float(text)
        except ValueError:
            raise PrunerecError(f"{name}: expected a count (e.g. 7) or a ratio (e.g. 0.5), got {value!r}") from None
    if isinstance(amount, float):
        if not math.isfinite(amount) or not 0 < amount <= 1:
            raise PrunerecError(f"{name}: a ratio must lie in (0, 1], got {value!r}")
    elif amount <= 0:
        raise PrunerecError(f"{name}: must keep at least 1, got {amount}")
    return amount


def load_target_file(path: str | Path) -> dict:
    """Targets from a JSON or YAML file: a mapping with any of heads, kv_heads, hidden, mlp, layers."""
    path = Path(path)
    if not path.is_file():
        raise PrunerecError(f"target config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as err:  # noqa: BLE001 - any parse error becomes a clear message
        raise PrunerecError(f"cannot read target config {path}: {err}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PrunerecError(f"target config {path} must be a mapping of {', '.join(KEYS)}")
    if isinstance(raw.get("targets"), dict):
        raw = raw["targets"]
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise PrunerecError(f"target config {path}: unknown keys {unknown} (allowed: {', '.join(KEYS)})")
    return {k: parse_amount(v, f"{path.name}:{k}") for k, v in raw.items() if v is not None}


# ----------------------------------------------------------------------------- rounding


def _round(x: Fraction | float) -> int:
    """Round half up (Python's round() rounds half to even)."""
    return math.floor(Fraction(x) + Fraction(1, 2))


def _round_to(x: Fraction, multiple: int, lo: int, hi: int) -> int:
    """Nearest multiple of ``multiple`` to x, clamped to [lo, hi]."""
    v = _round(Fraction(x) / multiple) * multiple
    return int(min(max(v, lo), hi))


def _mlp_round(x: Fraction, n: int) -> int:
    if n < 32:
        return max(1, min(n, _round(x)))
    multiple = 64 if x >= 256 else 32
    v = _round_to(x, multiple, multiple, n)
    return v if v <= n else n


def _hidden_round(x: Fraction, n: int, head_dim: int) -> int:
    multiple = head_dim if head_dim <= n and x >= head_dim else 8
    return max(1, _round_to(x, multiple, min(multiple, n), n))


def feasible_heads(n_q: int, n_kv: int) -> list[int]:
    """Query-head counts that some number of kept KV groups can hold evenly."""
    group = n_q // n_kv
    return [q for q in range(1, n_q + 1) if _kv_options(q, n_kv, group)]


def _kv_options(q: int, n_kv: int, group: int) -> list[int]:
    return [kv for kv in range(1, n_kv + 1) if q % kv == 0 and q // kv <= group]


def _amount_text(amount: Amount | None) -> str:
    return "paper proportion" if amount is None else (
        f"ratio {amount:g}" if isinstance(amount, float) else f"count {amount}")


# ----------------------------------------------------------------------------- resolution


def _given_amounts(config_file: str | Path | None, overrides: dict[str, Amount | None]) -> dict[str, Amount]:
    given: dict[str, Amount] = dict(load_target_file(config_file)) if config_file is not None else {}
    for key, value in overrides.items():
        value = parse_amount(value, f"--{key.replace('_', '-')}")
        if value is not None:
            given[key] = value
    return given


def _count(key: str, amount: int, total: int, what: str) -> int:
    if amount > total:
        raise PrunerecError(f"--{key.replace('_', '-')} {amount}: the model has only {total} {what}")
    return amount


def _target_layers(a: Amount | None, n_l: int) -> int:
    if isinstance(a, int):
        return _count("layers", a, n_l, "layers")
    return max(1, min(n_l, _round(n_l * Fraction(a if a is not None else PAPER_PROPORTIONS["layers"]))))


def _target_heads(a: Amount | None, n_q: int, n_kv: int, notes: list[str]) -> int:
    options = feasible_heads(n_q, n_kv)
    if isinstance(a, int):
        t_heads = _count("heads", a, n_q, "query heads per layer")
        if t_heads not in options:
            raise PrunerecError(
                f"--heads {t_heads}: {t_heads} query heads cannot be spread evenly over kept KV groups "
                f"(the model has {n_kv} KV groups of {n_q // n_kv} query heads); possible counts: "
                f"{', '.join(map(str, options))}")
        return t_heads
    want = n_q * Fraction(a if a is not None else PAPER_PROPORTIONS["heads"])
    t_heads = min(options, key=lambda q: (abs(q - want), -q))
    if t_heads != want:
        notes.append(f"heads: {float(want):g} ({_amount_text(a)}) rounded to {t_heads}, "
                     "a count the KV groups hold evenly")
    return t_heads


def _target_kv_heads(a: Amount | None, t_heads: int, n_q: int, n_kv: int) -> int:
    group = n_q // n_kv
    kv_ok = _kv_options(t_heads, n_kv, group)
    if isinstance(a, int):
        t_kv = _count("kv_heads", a, n_kv, "KV heads per layer")
        if t_kv not in kv_ok:
            raise PrunerecError(
                f"--kv-heads {t_kv}: {t_heads} query heads are not divisible over {t_kv} KV heads with at most "
                f"{group} query heads each; possible: {', '.join(map(str, kv_ok))}")
        return t_kv
    ratio = Fraction(a) if a is not None else Fraction(t_heads, n_q)
    want = max(1, _round(n_kv * ratio))
    return min(kv_ok, key=lambda kv: (abs(kv - want), kv))


def _target_hidden(a: Amount | None, t_heads: int, shape: dict, notes: list[str]) -> int:
    n_h, n_q, hd = shape["hidden"], shape["heads"], shape["head_dim"]
    if isinstance(a, int):
        t_hidden = _count("hidden", a, n_h, "hidden dimensions")
    elif a is None and n_h == n_q * hd:
        t_hidden = t_heads * hd
    else:
        t_hidden = _hidden_round(n_h * (Fraction(a) if a is not None else PAPER_PROPORTIONS["hidden"]), n_h, hd)
    if t_hidden != t_heads * hd:
        notes.append(f"hidden {t_hidden} != heads x head_dim ({t_heads} x {hd} = {t_heads * hd}): transformers "
                     "loads it, vLLM's native Qwen2 does not (`prunerec serve` switches vLLM to its "
                     "transformers backend for such models by itself)")
    return t_hidden


def _target_mlp(a: Amount | None, n_i: int) -> int:
    if isinstance(a, int):
        return _count("mlp", a, n_i, "MLP channels per layer")
    return _mlp_round(n_i * Fraction(a if a is not None else PAPER_PROPORTIONS["mlp"]), n_i)


def resolve_targets(config, *, heads: Amount | None = None, kv_heads: Amount | None = None,
                    hidden: Amount | None = None, mlp: Amount | None = None, layers: Amount | None = None,
                    config_file: str | Path | None = None) -> Targets:
    """Target counts for ``config``: paper proportions, then the file, then explicit overrides.

    Counts (int) are kept exactly and refused when impossible; ratios (float) and the defaults
    are rounded to hardware-friendly sizes. Raises PrunerecError with the reason.
    """
    given = _given_amounts(config_file, {"heads": heads, "kv_heads": kv_heads, "hidden": hidden, "mlp": mlp,
                                         "layers": layers})
    shape = base_shape(config)
    n_q, n_kv = shape["heads"], shape["kv_heads"]
    if n_kv <= 0 or n_q % n_kv:
        raise PrunerecError(f"the base model has {n_q} query heads over {n_kv} KV heads: not a valid GQA shape")
    notes: list[str] = []
    t_layers = _target_layers(given.get("layers"), shape["layers"])
    t_heads = _target_heads(given.get("heads"), n_q, n_kv, notes)
    t_kv = _target_kv_heads(given.get("kv_heads"), t_heads, n_q, n_kv)
    t_hidden = _target_hidden(given.get("hidden"), t_heads, shape, notes)
    t_mlp = _target_mlp(given.get("mlp"), shape["mlp"])
    return Targets(layers=t_layers, heads=t_heads, kv_heads=t_kv, hidden=t_hidden, mlp=t_mlp, notes=tuple(notes))
