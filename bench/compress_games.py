"""Benchmark: PruneRec against other pruning criteria and its own ablations on amazon-games.

Base (--base): a folder with model/ and eval.json (its test evaluation; the variants are
evaluated on the same users), by default the `small` preset trained by bench/base_games.py on
the full catalog (bench/out/base_games_full); `--base bench/out/base_games_full_deep --tag _deep`
for the `deep` preset (bench/base_games.py --preset deep --variants full --tag _deep), whose
default targets are the paper's proportions (8 of 24 layers, 4 of 7 query heads over the one KV
head, hidden 128 of 224, MLP 224 of 1,216: 95.4% of non-embedding parameters removed). Every
variant reaches the default target shape (--target-file overrides it) with the same
distillation budget (--max-steps per distillation, or --stage-steps I,II,III; the one-shot
ablation, which distils once, gets the three stages' steps together), then is evaluated on the
same test users as the base with trie-constrained beam search. Quality kept = metric / base
metric, with a 95% paired bootstrap interval (the same resampled users for both).

Variants: prunerec, random, magnitude (+ShortGPT layers), wanda-sp (+ShortGPT layers),
prunerec-shortgpt (PruneRec widths, ShortGPT layers), no-distill, one-shot.

`--curve 100,300,1000` runs PruneRec once per distillation budget (steps per stage; with
`--curve-shape 1,1,4` a budget N is N, N, 4N steps after stages I, II, III) instead, each
evaluated on the base's test users: the curve of quality kept against distillation steps
(bench/out/compress_games<tag>_curve.json and .png). A point with the prunerec variant's
settings reuses that run.

Writes bench/out/compress_games<tag>/<variant>/ (the compress run and eval.json) and
bench/out/compress_games<tag>_<variant>.json; `--summarize` gathers them into
bench/out/compress_games<tag>.json and prints the table for docs/results.md.
Usage: python bench/compress_games.py --variants prunerec,random [--max-steps 300]
       python bench/compress_games.py --summarize
       python bench/compress_games.py --base bench/out/base_games_full_deep --tag _deep --curve 150,300,600,1200 \
           --curve-shape 1,1,4
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import time
from pathlib import Path

import torch

from prunerec.compress.outdir import changed_options
from prunerec.compress.pipeline import CompressOptions, run_compress
from prunerec.data.catalog import load_dataset
from prunerec.evaluate.metrics import (
    average,
    bootstrap_ci,
    paired_ratio_ci,
)
from prunerec.evaluate.pipeline import report_user_rows, run_evaluate
from prunerec.io import write_json
from prunerec.plots import pyplot, save_png

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "amazon-games"
BASE = HERE / "out" / "base_games_full"
METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")
VARIANTS = {
    "prunerec": {},
    "random": {"method": "random"},
    "magnitude": {"method": "magnitude"},
    "wanda-sp": {"method": "wanda-sp"},
    "prunerec-shortgpt": {"layer_method": "shortgpt"},
    "no-distill": {"distill": False},
    "one-shot": {"one_shot": True},
}


@dataclasses.dataclass(frozen=True)
class Paths:
    base: Path  # model/ and eval.json
    data: Path
    tag: str = ""

    @property
    def out(self) -> Path:
        return HERE / "out" / f"compress_games{self.tag}"

    def summary(self, name: str = "") -> Path:
        return HERE / "out" / f"compress_games{self.tag}{'_' + name if name else ''}.json"

    def base_eval(self) -> dict:
        path = self.base / "eval.json"
        if not path.is_file() or not (self.base / "model" / "config.json").is_file():
            raise SystemExit(f"--base {self.base}: expected model/ (a trained recommender) and eval.json "
                             "(its test evaluation, e.g. from bench/base_games.py)")
        return json.loads(path.read_text())


TEACHER_CACHE = HERE / "out" / "teacher_cache"


def bench_options(*, lr: float, eval_every: int, eval_users: int, calib_samples: int = 64, target_file=None,
                  teacher_cache: Path | None = TEACHER_CACHE, **settings) -> CompressOptions:
    """The benchmark's fixed settings around what a run varies (steps, lr, lambda, method, ablation).
    The teacher cache (on unless --no-teacher-cache) changes the work, not the results (up to float
    rounding), so every variant pays for the teacher's forward passes once."""
    cache = str(teacher_cache) if teacher_cache and not settings.get("hidden_distill") else None
    return CompressOptions(lr=lr, eval_every=eval_every, eval_users=eval_users, valid_limit=300,
                           calib_samples=calib_samples, seed=0, target_file=target_file, teacher_cache=cache,
                           **settings)


def options_for(variant: str, args, steps: int | None = None) -> CompressOptions:
    changes = VARIANTS[variant]
    stage_steps = None if steps is not None else args.stage_steps
    steps = args.max_steps if steps is None else steps
    common = dict(lr=args.lr, eval_users=args.eval_users, calib_samples=args.calib_samples,
                  target_file=args.target_file, teacher_cache=args.teacher_cache, **changes)
    if stage_steps and not changes.get("one_shot") and changes.get("distill", True):
        return bench_options(stage_steps=stage_steps, eval_every=min(stage_steps) // 3, **common)
    total = (sum(stage_steps) if stage_steps else steps * 3) if changes.get("one_shot") else steps
    return bench_options(max_steps=total, eval_every=steps // 3, **common)


@functools.cache
def _titles(data: Path) -> tuple[str, ...]:
    return load_dataset(data, splits=()).catalog.titles


def user_rows(report: dict, paths: Paths) -> list[dict]:
    return report_user_rows(report, _titles(paths.data))


def quality_rows(report: dict, base_eval: dict, paths: Paths) -> dict:
    if [r["user"] for r in report["rankings"]] != [r["user"] for r in base_eval["rankings"]]:
        raise SystemExit("the variant was evaluated on other users than the base")
    rows, base_rows = user_rows(report, paths), user_rows(base_eval, paths)
    means, cis = average(rows), bootstrap_ci(rows)
    kept = {k: means[k] / b if (b := average(base_rows)[k]) else None for k in METRICS}
    return {"metrics": {k: means[k] for k in METRICS}, "ci95": {k: cis[k] for k in METRICS},
            "kept": kept, "kept_ci95": {k: v for k, v in paired_ratio_ci(rows, base_rows).items() if k in METRICS}}


def _earlier_evaluation(folder: Path, base_eval: dict) -> dict | None:
    """folder/eval.json when it was made from the final model as it is now, on the base's users."""
    path, final = folder / "eval.json", folder / "run" / "final" / "model.safetensors"
    if not path.is_file() or path.stat().st_mtime < final.stat().st_mtime:
        return None
    evaluation = json.loads(path.read_text())
    return evaluation if evaluation.get("users") == base_eval["users"] else None


def _machine(folder: Path, did_work: bool) -> str:
    """The machine that made folder's run: this one when this invocation did the work, else the one
    recorded then (a finished run reused under other thread settings keeps its own)."""
    record = folder / "machine.json"
    if did_work or not record.is_file():
        write_json(record, {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads"})
    return json.loads(record.read_text())["machine"]


def compress_and_test(folder: Path, options: CompressOptions, base_eval: dict, paths: Paths) -> tuple[dict, dict]:
    """One compress run into folder/run (resumed where it exists), evaluated on the base's users."""
    report = run_compress(paths.base / "model", paths.data, folder / "run", options, resume=(folder / "run").exists())
    evaluation = _earlier_evaluation(folder, base_eval)
    reused = evaluation is not None  # the final model is older than its evaluation: nothing was redone
    if evaluation is None:
        evaluation, table = run_evaluate(folder / "run" / "final", paths.data, split="test", grounding="trie",
                                         beams=20, batch_size=16, limit=base_eval["users"], out=folder / "eval.json")
        print(table, flush=True)
    return {"options": dataclasses.asdict(options), "machine": _machine(folder, did_work=not reused),
            "stage_seconds": report["wall_seconds_stages"],
            "shape": report["final"]["shape"], "parameters": report["final"]["parameters"],
            "non_embedding_removed_share": report["final"]["non_embedding_removed_share"],
            "validation_kept": report["final"].get("quality_kept"),
            "test": quality_rows(evaluation, base_eval, paths)}, evaluation


def run_variant(variant: str, args, base_eval: dict, paths: Paths) -> dict:
    result, _ = compress_and_test(paths.out / variant, options_for(variant, args), base_eval, paths)
    summary = {"variant": variant, "base": str(paths.base), **result}
    write_json(paths.summary(variant), summary)
    return summary


def curve_budget(steps: int, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(steps * share for share in shape)


def curve_options(steps: int, args) -> CompressOptions:
    stage_steps = curve_budget(steps, args.curve_shape)
    if len(set(stage_steps)) == 1:  # even budgets run as --max-steps, as the earlier curves did
        return options_for("prunerec", args, steps)
    return options_for("prunerec", argparse.Namespace(**{**vars(args), "stage_steps": stage_steps}))


def _run_options(folder: Path) -> dict | None:
    saved = folder / "run" / ".state" / "run.json"
    return json.loads(saved.read_text())["options"] if saved.is_file() else None


def _same_settings(saved: dict | None, options: CompressOptions) -> bool:
    """Whether `compress --resume` would take a run saved with these options (see outdir)."""
    return saved is not None and not changed_options(saved, options)


def run_curve(budgets: list[int], args, base_eval: dict, paths: Paths) -> dict:
    """PruneRec at each distillation budget (steps after each stage: a budget times --curve-shape),
    on the base's test users. The prunerec variant's run is reused where its settings match."""
    points = []
    for steps in budgets:
        stage_steps = curve_budget(steps, args.curve_shape)
        options = curve_options(steps, args)
        name = f"steps_{steps}" if len(set(stage_steps)) == 1 else "steps_" + "-".join(map(str, stage_steps))
        folder = paths.out / "curve" / name
        if not folder.exists() and _same_settings(_run_options(paths.out / "prunerec"), options):
            folder = paths.out / "prunerec"
        result, _ = compress_and_test(folder, options, base_eval, paths)
        points.append({"steps_per_stage": steps, "stage_steps": list(stage_steps), "total_steps": sum(stage_steps),
                       "rows_per_stage": steps * 32, "folder": str(folder), **result})
        curve = {"base": str(paths.base), "users": base_eval["users"], "shape": list(args.curve_shape),
                 "points": points}
        write_json(paths.summary("curve"), curve)  # after every point: a long run keeps what it has
    plot_curve(points, paths.summary("curve").with_suffix(".png"))
    return curve


def plot_curve(points: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    steps = [p.get("total_steps", 3 * p["steps_per_stage"]) for p in points]
    for metric, marker in (("NDCG@10", "o"), ("HR@10", "s")):
        kept = [p["test"]["kept"][metric] or 0.0 for p in points]
        lows = [k - p["test"]["kept_ci95"][metric][0] for k, p in zip(kept, points)]
        highs = [p["test"]["kept_ci95"][metric][1] - k for k, p in zip(kept, points)]
        ax.errorbar(steps, kept, yerr=[lows, highs], marker=marker, capsize=3, label=f"{metric} kept",
                    alpha=0.9)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(steps, [f"{s:,}" for s in steps])
    ax.minorticks_off()
    ax.set_xlabel("distillation steps, three stages together (batch 32)")
    ax.set_ylabel("share of the base's quality (95% paired CI)")
    ax.set_title("PruneRec: quality kept against distillation budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)  # never over a point
    save_png(fig, path)


def _cell(value: float, ci) -> str:
    return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def _kept_cell(value, ci) -> str:
    if value is None:
        return "-"
    return f"{value:.0%} [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else f"{value:.0%}"


def _versus(rows: list[dict], prunerec_rows: list[dict] | None) -> str:
    """NDCG@10 of a variant over PruneRec's on the same users, with its paired 95% interval."""
    if prunerec_rows is None or rows is prunerec_rows:
        return "-"
    mean, baseline = average(rows)["NDCG@10"], average(prunerec_rows)["NDCG@10"]
    return _kept_cell(mean / baseline if baseline else None, paired_ratio_ci(rows, prunerec_rows)["NDCG@10"])


def summarize(paths: Paths) -> str:
    base_eval = paths.base_eval()
    base_rows = user_rows(base_eval, paths)
    assert average(base_rows)["HR@10"] == base_eval["results"]["trie"]["metrics"]["HR@10"]
    results = {v: json.loads(p.read_text()) for v in VARIANTS if (p := paths.summary(v)).is_file()}
    variant_rows = {v: user_rows(json.loads((paths.out / v / "eval.json").read_text()), paths) for v in results}
    prunerec_rows = variant_rows.get("prunerec")
    popularity = base_eval["results"]["popularity"]
    header = ["variant", "removed", *METRICS, "kept HR@10", "kept NDCG@10", "kept (mean of 6)", "NDCG@10 / PruneRec's"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    base_ci = bootstrap_ci(base_rows)
    settings = paths.base / "model" / "prunerec.json"
    base_name = json.loads(settings.read_text()).get("preset", {}).get("name") if settings.is_file() else None
    lines.append(" | ".join([f"base ({base_name or paths.base.name})", "0%",
                             *(_cell(average(base_rows)[k], base_ci[k]) for k in METRICS),
                             "100%", "100%", "100%", "-"]))
    for variant, result in results.items():
        test = result["test"]
        mean_kept = [test["kept"][k] for k in METRICS if test["kept"][k] is not None]
        lines.append(" | ".join([variant, f"{result['non_embedding_removed_share']:.1%}",
                                 *(_cell(test["metrics"][k], test["ci95"][k]) for k in METRICS),
                                 _kept_cell(test["kept"]["HR@10"], test["kept_ci95"]["HR@10"]),
                                 _kept_cell(test["kept"]["NDCG@10"], test["kept_ci95"]["NDCG@10"]),
                                 f"{sum(mean_kept) / len(mean_kept):.0%}",
                                 _versus(variant_rows[variant], prunerec_rows)]))
    lines.append(" | ".join(["popularity", "-", *(_cell(popularity["metrics"][k], popularity["ci95"][k])
                                                  for k in METRICS), "-", "-", "-", "-"]))
    table = "| " + " |\n| ".join(lines) + " |"
    write_json(paths.summary(), {"users": base_eval["users"], "base": str(paths.base), "variants": results,
                                 "table": table})
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--max-steps", type=int, default=300, help="steps per distillation (batch 32)")
    parser.add_argument("--stage-steps", default=None, metavar="I,II,III",
                        type=lambda text: tuple(int(x) for x in text.split(",")),
                        help="steps after each stage (replaces --max-steps; one-shot gets their sum)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-users", type=int, default=300, help="validation users per stage inside compress")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--target-file", default=None, help="target shape (JSON/YAML); default: paper proportions")
    parser.add_argument("--base", type=Path, default=BASE, help="folder with model/ and eval.json")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--tag", default="", help="suffix of the output names (e.g. _deep)")
    parser.add_argument("--curve", default=None, metavar="STEPS,...",
                        help="distillation budgets for PruneRec's kept-quality curve: steps per stage, times "
                             "--curve-shape")
    parser.add_argument("--curve-shape", default=(1, 1, 1), metavar="I,II,III",
                        type=lambda text: tuple(int(x) for x in text.split(",")),
                        help="how a curve budget N is spread: N*I, N*II, N*III steps after stage I, II, III "
                             "(1,1,4 follows the README's 600,600,2400)")
    parser.add_argument("--no-teacher-cache", dest="teacher_cache", action="store_const", const=None,
                        default=TEACHER_CACHE, help=f"run the teacher every step (default: cache in {TEACHER_CACHE})")
    parser.add_argument("--summarize", action="store_true")
    args = parser.parse_args()
    paths = Paths(args.base, args.data, args.tag)
    if args.summarize:
        print(summarize(paths))
        return
    base_eval = paths.base_eval()
    if args.curve:
        try:
            budgets = sorted({int(x) for x in args.curve.split(",")})
        except ValueError:
            raise SystemExit(f"--curve {args.curve}: expected steps per stage, e.g. 100,300,1000") from None
        if not budgets or budgets[0] <= 0:
            raise SystemExit(f"--curve {args.curve}: budgets must be > 0")
        if len(args.curve_shape) != 3 or min(args.curve_shape) <= 0:
            raise SystemExit("--curve-shape takes three positive integers, e.g. 1,1,4")
        print(json.dumps(run_curve(budgets, args, base_eval, paths)["points"][-1]["test"]["kept"]))
        return
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        started = time.time()
        run_variant(variant, args, base_eval, paths)
        print(f"{variant} finished in {time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
