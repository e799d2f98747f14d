"""The compress report: OUT/report.json, OUT/report.md and PNG plots (matplotlib, Agg)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prunerec.io import write_json, write_text
from prunerec.plots import pyplot, save_png

REPORT_KS = (5, 10, 20)  # the k of HR@k and NDCG@k in reports

__all__ = ["write_report", "format_report", "PLOTS", "plot_long_tail"]

KS = (5, 10, 20)
PLOTS = ("parameters.png", "quality.png", "distill_loss.png")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x) -> str:
    return "-" if x is None else f"{x:,}"


def _metric(ev: dict | None, key: str) -> str:
    return "-" if not ev else f"{ev['metrics'].get(key, float('nan')):.4f}"


def _shape(s: dict) -> str:
    return f"{s['layers']} x ({s['heads']}q/{s['kv_heads']}kv x {s['head_dim']}, hidden {s['hidden']}, MLP {s['mlp']})"


def _cache_line(stages: list[dict]) -> list[str]:
    caches = [(s["stage"], (s.get("distill") or {}).get("teacher_cache")) for s in stages]
    caches = [(name, c) for name, c in caches if c]
    if not caches:
        return []
    shares = ", ".join(f"{name} {c['hits'] / max(c['hits'] + c['misses'], 1):.0%}" for name, c in caches)
    return [f"- teacher cache: `{caches[0][1]['folder']}`; examples read from it instead of the teacher: {shares}"]


def format_report(report: dict) -> str:
    base, stages, final = report["base"], report["stages"], report["final"]
    opts = report["options"]
    metric_keys = [f"HR@{k}" for k in KS] + [f"NDCG@{k}" for k in KS]
    lines = [
        "# PruneRec compression report", "",
        f"- base model: `{report['model']}`",
        f"- data: `{report['data']}`",
        f"- method: {opts['method']} (layers: {stages[0]['layer_method']}), mode: {stages[0]['mode']}",
        f"- distillation: lambda {opts['lam']}, tau {opts['tau']}, lr {opts['lr']}, {opts['epochs']} epochs, "
        f"batch {opts['batch_size']}"
        + (f", hidden-state term x{opts['hidden_distill']}" if opts.get("hidden_distill") else "")
        + (f", at most {opts['max_steps']} steps" if opts["max_steps"] and not opts.get("stage_steps") else "")
        + (f", {'/'.join(map(str, opts['stage_steps']))} steps after stages I/II/III" if opts.get("stage_steps")
           else "")
        + (f", {opts['time_budget']} min budget" if opts["time_budget"] else ""),
        f"- calibration: {stages[0]['pruning']['calibration_samples']} training prompts",
        *_cache_line(stages),
        f"- final model: `{final['path']}`",
        "",
        "## Result", "",
        f"- non-embedding parameters: {_num(base['parameters']['non_embedding'])} -> "
        f"{_num(final['parameters']['non_embedding'])} (**{_pct(final['non_embedding_removed_share'])} removed**)",
        f"- all parameters: {_num(base['parameters']['total'])} -> {_num(final['parameters']['total'])} "
        f"({_pct(final['total_removed_share'])} removed)",
    ]
    kept = final.get("quality_kept") or {}
    if kept:
        lines.append(f"- base quality kept (candidate / base on validation, mean over HR/NDCG@{{5,10,20}}): "
                     f"**{_pct(kept.get('mean'))}**; "
                     + ", ".join(f"{k} {_pct(kept[k])}" for k in metric_keys if k in kept))
    else:
        lines.append("- base quality kept: not measured (--eval-users 0 or a base score of 0)")
    ev = base.get("eval")
    if ev:
        lines.append(f"- validation: {ev['users']} users, trie-constrained beam search with {ev['num_beams']} beams")
    lines += ["", "## Per stage", ""]
    header = ["stage", "shape", "total params", "non-emb params", "non-emb removed"] + metric_keys + [
        "distilled", "best distill loss", "wall s"]
    rows = [["base", _shape(base["shape"]), _num(base["parameters"]["total"]),
             _num(base["parameters"]["non_embedding"]), "0.0%"] + [_metric(ev, k) for k in metric_keys]
            + ["-", "-", "-"]]
    for s in stages:
        d = s.get("distill")
        rows.append([s["stage"], _shape(s["shape"]), _num(s["parameters"]["total"]),
                     _num(s["parameters"]["non_embedding"]), _pct(s["non_embedding_removed_share"])]
                    + [_metric(s.get("eval"), k) for k in metric_keys]
                    + ["yes" if s["distilled"] else "no", f"{d['best_valid_loss']:.4f}" if d else "-",
                       f"{s['wall_seconds']['total']:.1f}"])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## What each stage did", ""]
    for s in stages:
        p, k = s["pruning"], s["pruning"].get("kept", {})
        parts = []
        if "q_heads" in k:
            parts.append(f"kept query heads per layer {k['q_heads']} (KV groups {k['kv_heads']})")
        if "hidden" in k:
            parts.append(f"kept {len(k['hidden'])} hidden dimensions")
        if "mlp" in k:
            parts.append(f"kept {len(k['mlp'][0])} MLP channels per layer")
        if "layers" in k:
            parts.append(f"kept layers {k['layers']} (removed {k['removed']})")
        if k.get("stability"):
            parts.append("calibration stability (Jaccard overlap of the choices made on the two halves): "
                         + ", ".join(f"{n} {v['jaccard_between_halves']:.2f}" for n, v in k["stability"].items()))
        secs = ", ".join(f"{n} {v:.1f}s" for n, v in p.get("scoring_seconds", {}).items())
        d = s.get("distill")
        dist = (f"distilled {d['steps']} steps, best validation loss {d['best_valid_loss']:.4f} at step "
                f"{d['best_step']} ({d['stop_reason']}), {d['train_seconds']:.1f}s" if d else "not distilled")
        w = s["wall_seconds"]
        lines.append(f"- **{s['stage']}** ({s['pruned']}): " + ("; ".join(parts) or "nothing to prune")
                     + (f"; scoring {secs}" if secs else "") + f"; {dist}; wall: prune {w['prune']:.1f}s, "
                     f"distill {w['distill']:.1f}s, evaluate {w['evaluate']:.1f}s")
    notes = report.get("targets", {}).get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in PLOTS]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots




def plot_parameters(report: dict, path: Path) -> None:
    plt = pyplot()
    names = ["base"] + [s["stage"] for s in report["stages"]]
    params = [report["base"]["parameters"]] + [s["parameters"] for s in report["stages"]]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    emb = [p["embedding"] / 1e6 for p in params]
    non = [p["non_embedding"] / 1e6 for p in params]
    ax.bar(x, non, label="non-embedding", color="tab:blue")
    ax.bar(x, emb, bottom=non, label="embedding", color="tab:gray", alpha=0.6)
    for i, (n, p) in enumerate(zip(non, params)):
        ax.text(i, n, f"{p['non_embedding']:,}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(x), names)
    ax.set_ylabel("parameters (millions)")
    ax.set_title("Parameters per stage")
    ax.legend(fontsize=8)
    save_png(fig, path)


def plot_quality(report: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    names = [s["stage"] for s in report["stages"]]
    base_ev = report["base"].get("eval")
    for key, color in (("HR@10", "tab:blue"), ("NDCG@10", "tab:orange")):
        ys = [s["eval"]["metrics"][key] if s.get("eval") else float("nan") for s in report["stages"]]
        ax.plot(names, ys, marker="o", color=color, label=key)
        if base_ev:
            ax.axhline(base_ev["metrics"][key], color=color, linestyle="--", alpha=0.7, label=f"base {key}")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("validation")
    ax.set_title("Validation quality per stage (dashed: base)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path)


def plot_distill_loss(report: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    drawn = False
    for s in report["stages"]:
        d = s.get("distill")
        if d and d.get("log"):
            ax.plot([r["step"] for r in d["log"]], [r["valid_loss"] for r in d["log"]], marker="o", label=s["stage"])
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no distillation in this run", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("validation distillation loss")
    ax.set_title("Distillation from the original model")
    ax.grid(alpha=0.3)
    save_png(fig, path)


def write_report(out: str | Path, report: dict) -> None:
    out = Path(out)
    write_json(out / "report.json", report)
    write_text(out / "report.md", format_report(report))
    plot_parameters(report, out / PLOTS[0])
    plot_quality(report, out / PLOTS[1])
    plot_distill_loss(report, out / PLOTS[2])


def plot_long_tail(shares, percents, path: str | Path, title: str = "") -> None:
    """Per layer, the share of |up_proj activation| held by the top k% channels."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    layers = list(range(len(shares)))
    for j, p in enumerate(percents):
        ax.plot(layers, [float(row[j]) for row in shares], marker="o", label=f"top {p}%")
    ax.set_xticks(layers if len(layers) <= 32 else layers[::4])
    ax.set_xlabel("layer")
    ax.set_ylabel("share of total |activation|")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "MLP activation long tail (up_proj output)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, Path(path))


def kept_ratios(candidate: dict | None, base: dict | None, ks=REPORT_KS) -> dict:
    """Candidate / base of each HR@k and NDCG@k (and their mean)."""
    if not candidate or not base:
        return {}
    out = {}
    for k in ks:
        for m in ("HR", "NDCG"):
            key = f"{m}@{k}"
            b, c = base["metrics"].get(key), candidate["metrics"].get(key)
            if b is not None and c is not None and b > 0:
                out[key] = c / b
    if out:
        out["mean"] = sum(out.values()) / len(out)
    return out


def build_report(model_ref, data_dir, out: Path, opts, targets, plan: dict,
                 base_record: dict, records: list[dict], wall_s: float) -> dict:
    """report.json of a finished run: every stage against the base (`opts`: CompressOptions)."""
    base_params = base_record["parameters"]
    stages = []
    for r in records:
        p = r["parameters"]
        stages.append({**r, "non_embedding_removed_share": 1 - p["non_embedding"] / base_params["non_embedding"],
                       "total_removed_share": 1 - p["total"] / base_params["total"],
                       "quality_kept": kept_ratios(r["eval"], base_record["eval"])})
    final = stages[-1]
    return {
        "model": str(model_ref), "data": str(data_dir), "out": str(out),
        "options": asdict(opts), "targets": targets.to_json(), "plan": plan,
        "base": base_record, "stages": stages,
        "final": {"path": str(out / "final"), "shape": final["shape"], "parameters": final["parameters"],
                  "non_embedding_removed_share": final["non_embedding_removed_share"],
                  "total_removed_share": final["total_removed_share"],
                  "quality_kept": final["quality_kept"], "eval": final["eval"]},
        "wall_seconds_this_run": round(wall_s, 1),
        "wall_seconds_stages": round(sum(s["wall_seconds"]["total"] for s in stages), 1),
    }
