"""Benchmark: PruneRec against random, magnitude and wanda-sp on a real pretrained base (SmolLM2
fine-tuned by bench/base_smollm2.py), and the size/quality curve a user decides with (issue 31).

Points, each one compress run (resumed where it stopped) and one test evaluation on the base's
users, written to bench/out/prune_smollm2_<data><tag>/<point>.json as soon as it ends; a rerun,
on this machine or a fresh one, skips finished points:
  distilled-<criterion>   the default targets (96.3% of SmolLM2's non-embedding parameters
                          removed), distilled after each stage with --stage-steps (batch 8,
                          the teacher cache): prunerec, random, magnitude, wanda-sp
  one-shot                PruneRec, all three stages, then one distillation of the same steps
  pruned-<target>-<criterion>  no distillation, at every --curve target for PruneRec, and for
                          every criterion at the mildest one (where pruning alone leaves
                          something to compare)
  serve                   each finished PruneRec point against the base through `prunerec
                          loadtest` (--serve-engine, --serve-users users, --serve-seconds a model):
                          requests/s of both, measured side by side, and their ratio
Each point holds HR@10/NDCG@10 (and @5/@20) with the share of the base kept, the same against
PruneRec's point of its kind (ratio and difference, paired 95% intervals), and fidelity to the
base: the overlap of its top-10 with the base's top-10 per user (paired intervals) and the
response-token KL(base || point) on --kl-rows validation rows.
`--summarize` gathers the points into bench/out/prune_smollm2_<data><tag>.json (and .md), a markdown
table and a plot of kept NDCG@10 and top-10 overlap against parameters.

Usage: python bench/prune_smollm2.py --base bench/out/base_smollm2_toys_full15 --data toys \\
           [--parts distilled,one-shot,pruned] [--users 1000] [--stage-steps 60,60,960]
       python bench/prune_smollm2.py --base ... --data toys --summarize
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from compress_games import Paths, bench_options, compress_and_test, user_rows  # bench/ is on sys.path

from prunerec.compress.distill import kd_loss
from prunerec.data.catalog import load_dataset
from prunerec.evaluate.metrics import (
    average,
    bootstrap_ci,
    paired_difference_ci,
    paired_ratio_ci,
    top_overlap,
)
from prunerec.evaluate.pipeline import run_evaluate
from prunerec.io import write_json, write_text
from prunerec.model.batching import collate, length_batches, response_logits
from prunerec.model.checkpoint import load_rec_model
from prunerec.model.encode import build_examples
from prunerec.plots import pyplot, save_png

HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parents[1] / "shared" / "data"
CRITERIA = ("prunerec", "random", "magnitude", "wanda-sp")
# target shapes of the curve as shares of the base, mildest first; on SmolLM2 (30 layers, 9 q / 3 kv
# heads, hidden 576, MLP 1,536) about 20%, 50%, 69%, 90% and 96.3% of non-embedding parameters go
CURVE = {
    "layers80": {"layers": 0.8},
    "layers50": {"layers": 0.5},
    "layers50-mlp50": {"layers": 0.5, "mlp": 0.5},
    "layers33-mlp33-heads67": {"layers": 0.334, "mlp": 0.334, "heads": 0.667},
    "default": {},
}
SHOWN = ("HR@10", "NDCG@10")
KEPT_LOW = 0.85  # the goal: PruneRec keeps >= 85% of the base's NDCG@10


def overlap_rows(evaluation: dict, base_eval: dict, k: int = 10) -> list[dict]:
    """Per user, the share of the base's top-k that the point's top-k holds."""
    return [{f"overlap@{k}": top_overlap(mine["trie"], base["trie"], k)}
            for mine, base in zip(evaluation["rankings"], base_eval["rankings"], strict=True)]


@torch.no_grad()
def response_kl(base_model, model, examples, pad_id: int, batch_size: int = 8) -> float:
    """KL(base || model) per response token, averaged over every response token of `examples`."""
    total, tokens = 0.0, 0
    for batch_ids in length_batches([len(e.input_ids) for e in examples], batch_size, seed=0):
        batch = collate([examples[i] for i in batch_ids], pad_id)
        n = len(batch["targets"])
        kl = kd_loss(response_logits(model, batch), response_logits(base_model, batch), batch["targets"], lam=0.0)
        total, tokens = total + kl.item() * n, tokens + n
    return total / max(tokens, 1)


def validation_examples(base, data_dir: Path, rows: int):
    data = load_dataset(data_dir, splits=("valid",))
    return build_examples(base.tokenizer, data["valid"][:rows], data.catalog, base.settings)


def base_evaluation(args, paths: Paths, root: Path) -> dict:
    """The base's test evaluation on --users users: its own eval.json when it has that many, else
    one made here (root/base_eval.json)."""
    own = paths.base_eval()
    if own["users"] == args.users:
        return own
    path = root / "base_eval.json"
    if not path.is_file():
        run_evaluate(paths.base / "model", paths.data, split="test", grounding="trie", beams=20, batch_size=16,
                     limit=args.users, out=path)
    return json.loads(path.read_text())


def points(args) -> list[tuple[str, dict]]:
    """(name, what the point changes in the compress options) for every point of --parts."""
    chosen, steps = args.parts.split(","), args.stage_steps
    found = []
    if "distilled" in chosen:
        found += [(f"distilled-{c}", {"method": c, "stage_steps": steps}) for c in CRITERIA]
    if "one-shot" in chosen:
        found.append(("one-shot", {"one_shot": True, "max_steps": sum(steps)}))
    if "pruned" in chosen:
        mildest = next(iter(CURVE))
        found += [(f"pruned-{mildest}-{c}", {"method": c, "distill": False, **CURVE[mildest]}) for c in CRITERIA]
        found += [(f"pruned-{t}-prunerec", {"distill": False, **shape}) for t, shape in CURVE.items() if t != mildest]
    return found


def run_point(name: str, changes: dict, args, paths: Paths, root: Path, base_eval: dict, kl_data) -> dict:
    path = root / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    # validations every 1/8 of the longest distillation, and patience to run each to its end
    options = bench_options(lr=args.lr, eval_every=max(max(args.stage_steps) // 8, 1), eval_users=0,
                            calib_samples=args.calib_samples, teacher_cache=args.teacher_cache,
                            batch_size=args.batch_size, patience=1000, **changes)
    result, evaluation = compress_and_test(root / name, options, base_eval, paths)
    base, examples = kl_data()
    pruned = load_rec_model(root / name / "run" / "final")
    result["fidelity"] = {"overlap@10": average(overlap_rows(evaluation, base_eval))["overlap@10"],
                          "overlap@10_ci95": bootstrap_ci(overlap_rows(evaluation, base_eval))["overlap@10"],
                          "response_kl": response_kl(base.model.eval(), pruned.model.eval(), examples,
                                                     base.tokenizer.pad_token_id),
                          "kl_rows": len(examples)}
    summary = {"point": name, "changes": changes, "base": str(paths.base), "users": base_eval["users"], **result}
    write_json(path, summary)
    return summary


def serve_point(name: str, args, paths: Paths, root: Path) -> None:
    """Requests/s of a point's model against the base's, one load test of both (added to its JSON)."""
    from prunerec.loadtest.options import LoadtestOptions
    from prunerec.loadtest.runner import run_loadtest
    from prunerec.serve.options import ServeOptions

    path = root / f"{name}.json"
    point = json.loads(path.read_text())
    if "serving" in point:
        return
    options = LoadtestOptions(users=(args.serve_users,), duration_s=args.serve_seconds,
                              serve=ServeOptions(engine=args.serve_engine))
    report = run_loadtest(str(paths.base / "model"), str(root / name / "run" / "final"), paths.data,
                          root / name / f"loadtest_{args.serve_engine}", options)
    base_level, level = (report["models"][role]["levels"][0] for role in ("baseline", "candidate"))
    point["serving"] = {"engine": args.serve_engine, "users": args.serve_users, "base_rps": base_level["rps"],
                        "rps": level["rps"], "ratio": level["rps"] / base_level["rps"] if base_level["rps"] else None,
                        "failures": base_level["failures"] + level["failures"]}
    write_json(path, point)


def _interval(pair) -> str:
    return "-" if pair is None else f"[{pair[0]:.0%}, {pair[1]:.0%}]"


def _difference(pair) -> str:
    return f"[{pair[0]:+.4f}, {pair[1]:+.4f}]"


def against(rows: list[dict], reference: list[dict]) -> dict:
    """A point's per-user rows against the reference point's on the same users: ratio and difference."""
    mean, ref = average(rows), average(reference)
    ratio_ci, diff_ci = paired_ratio_ci(rows, reference), paired_difference_ci(rows, reference)
    return {k: {"ratio": mean[k] / ref[k] if ref[k] else None, "ratio_ci95": ratio_ci[k],
                "difference": mean[k] - ref[k], "difference_ci95": diff_ci[k]} for k in mean}


def reference_of(name: str) -> str:
    """The PruneRec point a point is compared with: the same kind and target."""
    if name.startswith("distilled-") or name == "one-shot":
        return "distilled-prunerec"
    criterion = next(c for c in CRITERIA if name.endswith("-" + c))
    return name[:-len(criterion)] + "prunerec"


def summarize(args, paths: Paths, root: Path) -> str:
    base_eval = base_evaluation(args, paths, root)
    found = {p.stem: json.loads(p.read_text()) for p in sorted(root.glob("*.json")) if p.stem != "base_eval"}
    rows = {name: user_rows(json.loads((root / name / "eval.json").read_text()), paths) for name in found}
    overlaps = {name: overlap_rows(json.loads((root / name / "eval.json").read_text()), base_eval) for name in found}
    header = ["point", "removed", "HR@10", "NDCG@10", "NDCG@10 kept", "vs PruneRec (ratio)",
              "vs PruneRec (difference)", "top-10 overlap with base", "overlap vs PruneRec (difference)",
              "response KL to base", "req/s vs base"]
    lines = [header, ["---"] * len(header)]
    for name, point in found.items():
        test, reference = point["test"], reference_of(name)
        versus = against(rows[name], rows[reference]) if reference in rows and reference != name else None
        overlap_versus = (paired_difference_ci(overlaps[name], overlaps[reference])["overlap@10"]
                          if versus else None)
        point["versus_prunerec"] = versus
        lines.append([name, f"{point['non_embedding_removed_share']:.1%}", f"{test['metrics']['HR@10']:.4f}",
                      f"{test['metrics']['NDCG@10']:.4f}",
                      f"{test['kept']['NDCG@10'] or 0:.0%} {_interval(test['kept_ci95']['NDCG@10'])}",
                      "-" if not versus else f"{versus['NDCG@10']['ratio'] or 0:.0%} "
                                            f"{_interval(versus['NDCG@10']['ratio_ci95'])}",
                      "-" if not versus else _difference(versus["NDCG@10"]["difference_ci95"]),
                      f"{point['fidelity']['overlap@10']:.1%}", "-" if not versus else _difference(overlap_versus),
                      f"{point['fidelity']['response_kl']:.3f}",
                      f"{point['serving']['ratio']:.2f}x" if point.get("serving", {}).get("ratio") else "-"])
    table = "\n".join("| " + " | ".join(line) + " |" for line in lines)
    summary_path = args.out / f"prune_smollm2_{args.label}{args.tag}.json"
    write_json(summary_path, {"base": str(paths.base), "users": base_eval["users"], "points": found, "table": table})
    write_text(summary_path.with_suffix(".md"), table + "\n")
    plot_curve(found, summary_path.with_suffix(".png"))
    return table


def _bars(values: list[float], intervals: list) -> list[list[float]]:
    """Error bar lengths below and above each value (none where its interval is unknown)."""
    pairs = [(v, v) if ci is None else ci for v, ci in zip(values, intervals)]
    return [[max(v - low, 0.0) for v, (low, _) in zip(values, pairs)],
            [max(high - v, 0.0) for v, (_, high) in zip(values, pairs)]]


def plot_curve(found: dict, path: Path) -> None:
    """Kept NDCG@10 and top-10 overlap against the parameters left, PruneRec's points."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for label, prefix in (("pruned only", "pruned-"), ("distilled", "distilled-")):
        chosen = sorted((p for n, p in found.items() if n.startswith(prefix) and n.endswith("-prunerec")),
                        key=lambda p: p["parameters"]["non_embedding"])
        if not chosen:
            continue
        params = [p["parameters"]["non_embedding"] for p in chosen]
        kept = [p["test"]["kept"]["NDCG@10"] or 0.0 for p in chosen]
        axes[0].errorbar(params, kept, yerr=_bars(kept, [p["test"]["kept_ci95"]["NDCG@10"] for p in chosen]),
                         marker="o", capsize=3, label=label)
        overlap = [p["fidelity"]["overlap@10"] for p in chosen]
        axes[1].errorbar(params, overlap, yerr=_bars(overlap, [p["fidelity"]["overlap@10_ci95"] for p in chosen]),
                         marker="s", capsize=3, label=label)
        served = [(n, p["serving"]["ratio"]) for n, p in zip(params, chosen) if p.get("serving", {}).get("ratio")]
        if served:
            axes[2].plot(*zip(*served), marker="^", label=label)
    axes[0].axhline(KEPT_LOW, color="grey", lw=0.8, ls="--")
    for ax, ylabel in zip(axes, ("NDCG@10 kept (95% paired CI)", "top-10 overlap with the base (95% CI)",
                                 "requests/s over the base's (side by side)")):
        ax.set_xscale("log")
        ax.set_xlabel("non-embedding parameters left")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    fig.suptitle("PruneRec on SmolLM2: what each size keeps")
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="folder with model/ and eval.json")
    parser.add_argument("--data", required=True, help="toys, games (the Amazon sets) or a prepared data folder")
    parser.add_argument("--parts", default="distilled,one-shot,pruned")
    parser.add_argument("--users", type=int, default=1000, help="test users (the base's seeded sample)")
    parser.add_argument("--stage-steps", default=(60, 60, 960), type=lambda t: tuple(int(x) for x in t.split(",")),
                        metavar="I,II,III", help="distillation steps after each stage (batch --batch-size)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--kl-rows", type=int, default=200, help="validation rows of the response-token KL")
    parser.add_argument("--teacher-cache", type=Path, default=HERE / "out" / "teacher_cache_smollm2")
    parser.add_argument("--serve-engine", default="torch", choices=("torch", "vllm"))
    parser.add_argument("--serve-users", type=int, default=16)
    parser.add_argument("--serve-seconds", type=int, default=30, help="load per model and point")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="where the points and the summary go")
    parser.add_argument("--summarize", action="store_true")
    args = parser.parse_args()
    named = args.data in ("toys", "games")
    paths = Paths(base=args.base, data=SHARED_DATA / f"amazon-{args.data}" if named else Path(args.data))
    args.label = args.data if named else paths.data.name
    root = args.out / f"prune_smollm2_{args.label}{args.tag}"
    root.mkdir(parents=True, exist_ok=True)
    if args.summarize:
        print(summarize(args, paths, root))
        return
    base_eval = base_evaluation(args, paths, root)
    cache: dict = {}

    def kl_data():
        if not cache:
            base = load_rec_model(paths.base / "model")
            cache["value"] = (base, validation_examples(base, paths.data, args.kl_rows))
        return cache["value"]

    for name, changes in points(args):
        point = run_point(name, changes, args, paths, root, base_eval, kl_data)
        print(name, {k: point["test"]["kept"][k] for k in SHOWN}, point["fidelity"], flush=True)
    if "serve" in args.parts.split(","):
        for path in sorted(root.glob("*-prunerec.json")):
            serve_point(path.stem, args, paths, root)
    print(summarize(args, paths, root))


if __name__ == "__main__":
    main()
