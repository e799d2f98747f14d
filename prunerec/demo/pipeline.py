"""`prunerec demo`: every step on the built-in data (data, train, evaluate, compress, evaluate the
pruned model, export, serve + load test per engine), resumable, then one summary table."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prunerec.demo.options import DEMO_ENGINES, DemoPlan  # noqa: F401 (the demo's API)
from prunerec.evaluate.pipeline import run_evaluate
from prunerec.io import weights_bytes, write_json, write_text
from prunerec.train.pipeline import run_train


@dataclass(frozen=True)
class Step:
    name: str
    marker: str  # a file whose presence means the step finished
    run: Callable[[], None]


def loadtest_dir(engine: str) -> str:
    return f"loadtest-{engine}"


def demo_steps(out: Path, plan: DemoPlan, resume: bool = False, overwrite: bool = False) -> list[Step]:
    from prunerec.data.demo import write_demo

    data, model, pruned = out / "data", out / "model", out / "pruned"

    def make_data():
        n_items, n_users = plan.data_size
        write_demo(data, n_items=n_items, n_users=n_users)

    def train():
        options = {"epochs": 20, "batch_size": 32, "eval_every": 100, "patience": 2, "time_budget": plan.minutes,
                   "max_history": 10, **plan.train}
        run_train(data, plan.preset, model, resume=resume, overwrite=overwrite, **options)

    def evaluate():
        run_evaluate(model, data, split="test", grounding=plan.grounding, limit=plan.eval_users,
                     out=out / "eval.json")

    def compress():
        from prunerec.compress.pipeline import CompressOptions, run_compress

        options = CompressOptions(**{"max_steps": plan.distill_steps, "lr": 1e-3,
                                     "eval_every": plan.distill_steps // 3 or 1,
                                     "eval_users": min(plan.eval_users, 100), "valid_limit": 300, **plan.compress})
        run_compress(model, data, pruned, options, resume=resume, overwrite=overwrite)

    def evaluate_pruned():
        run_evaluate(pruned / "final", data, split="test", grounding=plan.grounding, limit=plan.eval_users,
                     out=out / "eval_pruned.json")

    def export():
        from prunerec.export.pipeline import ExportOptions, run_export

        # the demo's own folder (checked by run_demo); an unfinished export is redone
        run_export(str(pruned / "final"), out / "export",
                   ExportOptions(**{"data_dir": str(data), "overwrite": True, **plan.export}))

    def loadtest(engine: str) -> Callable[[], None]:
        def run():
            from prunerec.loadtest.options import LoadtestOptions
            from prunerec.loadtest.runner import run_loadtest
            from prunerec.serve.options import ServeOptions

            options = LoadtestOptions(users=plan.load_users, duration_s=plan.load_seconds,
                                      serve=ServeOptions(**{"engine": engine, "enforce_eager": engine == "vllm",
                                                            **plan.serve}))
            run_loadtest(str(model), str(out / "export"), data, out / loadtest_dir(engine), options)
        return run

    return [Step("data", "data/stats.json", make_data),
            Step("train", "model/training.json", train),
            Step("evaluate", "eval.json", evaluate),
            Step("compress", "pruned/report.json", compress),
            Step("evaluate pruned", "eval_pruned.json", evaluate_pruned),
            Step("export", "export/export-report.json", export),
            *(Step(f"serve + loadtest ({engine})", f"{loadtest_dir(engine)}/report.json", loadtest(engine))
              for engine in plan.engines)]


def run_demo(out, plan: DemoPlan | None = None, *, resume=False, overwrite=False) -> str:
    from prunerec.io import check_fresh_output

    out, plan = Path(out), plan or DemoPlan()
    plan.check()
    steps = demo_steps(out, plan, resume, overwrite)
    check_fresh_output(out, sorted({s.marker.split("/")[0] for s in steps}), resume, overwrite, "a demo run")
    log = []
    for step in steps:
        if resume and (out / step.marker).exists():
            log.append(f"{step.name}: already done")
            continue
        started = time.perf_counter()
        print(f"== demo step: {step.name}", flush=True)
        step.run()
        log.append(f"{step.name}: {time.perf_counter() - started:.0f}s")
    summary = demo_summary(out, plan.engines)
    write_json(out / "summary.json", summary)
    table = format_demo_summary(summary)
    write_text(out / "summary.md", table + "\n")
    return "\n".join(["", "demo finished (" + ", ".join(log) + ")", "", table, "", f"details: {out}/summary.md, "
                      f"{out}/pruned/report.md, {out}/export/export-report.json, "
                      + ", ".join(f"{out}/{loadtest_dir(engine)}/report.md" for engine in plan.engines)])


def demo_summary(out: Path, engines: Sequence[str]) -> dict:
    """Base vs pruned: test quality, parameters, weights on disk, serving speed on each engine (from
    the step outputs)."""
    compress = json.loads((out / "pruned" / "report.json").read_text())
    rows = {}
    for name, eval_file, params, folder in (
            ("base", "eval.json", compress["base"]["parameters"], out / "model"),
            ("pruned", "eval_pruned.json", compress["final"]["parameters"], out / "pruned" / "final")):
        metrics = json.loads((out / eval_file).read_text())["results"]["trie"]["metrics"]
        rows[name] = {"HR@10": metrics["HR@10"], "NDCG@10": metrics["NDCG@10"], "parameters": params,
                      "weights_bytes": weights_bytes(folder)}
    for engine in engines:
        load = json.loads((out / loadtest_dir(engine) / "report.json").read_text())
        for name, role in (("base", "baseline"), ("pruned", "candidate")):
            busiest = load["models"][role]["levels"][-1]
            rows[name].setdefault("speed", {})[engine] = {key: busiest[key] for key in ("rps", "p50_ms", "p99_ms")}
    return {"rows": rows, "non_embedding_removed_share": compress["final"]["non_embedding_removed_share"],
            "speed_level_users": busiest["users"], "engines": list(engines)}


def _ratio(pruned: float, base: float) -> str:
    return f"x{pruned / base:.2f}" if base else "-"


def format_demo_summary(summary: dict) -> str:
    base, pruned = summary["rows"]["base"], summary["rows"]["pruned"]
    rows = [("test HR@10", "HR@10", "{:.4f}"), ("test NDCG@10", "NDCG@10", "{:.4f}")]
    lines = ["| | base | pruned | pruned / base |", "| --- | --- | --- | --- |"]
    lines += [f"| {label} | {fmt.format(base[key])} | {fmt.format(pruned[key])} | {_ratio(pruned[key], base[key])} |"
              for label, key, fmt in rows]
    for label, key in (("non-embedding parameters", "non_embedding"), ("all parameters", "total")):
        b, p = base["parameters"][key], pruned["parameters"][key]
        lines.append(f"| {label} | {b:,} | {p:,} | {_ratio(p, b)} |")
    lines.append(f"| weights on disk | {base['weights_bytes'] / 2**20:.2f} MiB "
                 f"| {pruned['weights_bytes'] / 2**20:.2f} MiB "
                 f"| {_ratio(pruned['weights_bytes'], base['weights_bytes'])} |")
    for engine in summary["engines"]:
        level = f"{summary['speed_level_users']} users, {engine}"
        for label, key, fmt in (("requests/s", "rps", "{:.1f}"), ("p50 latency ms", "p50_ms", "{:.0f}"),
                                ("p99 latency ms", "p99_ms", "{:.0f}")):
            b, p = base["speed"][engine][key], pruned["speed"][engine][key]
            lines.append(f"| {label} ({level}) | {fmt.format(b)} | {fmt.format(p)} | {_ratio(p, b)} |")
    return "\n".join(lines) + f"\n\n{summary['non_embedding_removed_share']:.1%} of non-embedding parameters removed"
