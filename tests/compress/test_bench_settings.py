"""The compression benchmarks' settings: a curve point reuses the prunerec run it equals, the
teacher cache stays out of runs that cannot use it and out of the settings comparison."""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import compress_games  # noqa: E402
import distill_budget  # noqa: E402


def bench_args(**changes):
    args = dict(max_steps=300, stage_steps=(600, 600, 2400), lr=1e-3, eval_users=300, calib_samples=64,
                target_file=None, teacher_cache=compress_games.TEACHER_CACHE, curve_shape=(1, 1, 4))
    return argparse.Namespace(**{**args, **changes})


def test_curve_point_equals_the_prunerec_variant_it_reuses():
    args = bench_args()
    assert compress_games.curve_options(600, args) == compress_games.options_for("prunerec", args)
    point = compress_games.curve_options(150, args)
    assert point.stage_steps == (150, 150, 600) and point.eval_every == 50
    even = compress_games.curve_options(300, bench_args(curve_shape=(1, 1, 1)))
    assert even.stage_steps is None and even.max_steps == 300  # as the earlier even curves ran


def test_settings_comparison_ignores_the_teacher_cache():
    args = bench_args()
    saved = json.loads(json.dumps(dataclasses.asdict(compress_games.options_for("prunerec", args))))
    saved["teacher_cache"] = None
    assert compress_games._same_settings(saved, compress_games.options_for("prunerec", args))
    saved["lr"] = 2e-3
    assert not compress_games._same_settings(saved, compress_games.options_for("prunerec", args))
    assert not compress_games._same_settings(None, compress_games.options_for("prunerec", args))


def test_teacher_cache_only_where_it_can_serve():
    assert distill_budget.options("last-heavy").teacher_cache == str(compress_games.TEACHER_CACHE)
    hidden = distill_budget.options("last-heavy-hidden1")
    assert hidden.hidden_distill == 1.0 and hidden.teacher_cache is None
    hidden.check()  # a valid combination
    assert distill_budget.options("last-4800-patience3").patience == 3
    assert compress_games.options_for("one-shot", bench_args()).max_steps == 3600
    off = compress_games.options_for("prunerec", bench_args(teacher_cache=None))
    assert off.teacher_cache is None
