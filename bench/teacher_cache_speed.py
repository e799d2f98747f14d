"""Benchmark: a distillation step with the teacher run every step against the teacher cache.

For a base (--base: a model folder) and its default compression target, students of the shape
after each stage (the first heads / dims / channels / layers kept: the step time depends on the
shape, not on which were kept) take --steps training steps (forward, backward, AdamW) on the
same batches of --batch-size training examples (default 32): once with the teacher run every
step, once with its hidden states from a warm cache (both with the trainer's fused AdamW), and
once more from the cache with torch's default AdamW loop (what the trainer ran before), and from the
cache under bf16 autocast (`compress --precision bf16`). Filling the cache (the teacher's forward
alone) is timed too. Side by side in one process, so the modes
see the same machine. Per mode: seconds a step, the process's peak RSS (bench/meter.py; the
teacher and the students stay loaded throughout), and the losses of every step, which the cache
must leave unchanged (the same student weights, step for step: the largest loss difference is
reported).

Writes --out (JSON) and prints a table.
Usage: python bench/teacher_cache_speed.py --base bench/out/base_games_full_deep/model \
           --data ../shared/data/amazon-games --steps 20 --out bench/out/teacher_cache_speed_deep.json
"""
from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from pathlib import Path

import torch
from meter import Meter

from prunerec.compress.distill import DistillSettings, make_loss_fn
from prunerec.compress.pipeline import CompressOptions, load_inputs
from prunerec.compress.teacher_cache import TeacherCache, teacher_logits
from prunerec.io import write_json
from prunerec.model import dtypes, surgery
from prunerec.model.batching import collate, length_batches
from prunerec.train.trainer import fused_adamw


def shaped_students(teacher, targets) -> dict:
    """Copies of the teacher at the shape after stage I, II and III (first units kept)."""
    cfg = teacher.config
    n_layers, n_kv = cfg.num_hidden_layers, cfg.num_key_value_heads
    per_kv = targets.heads // targets.kv_heads
    student = copy.deepcopy(teacher)
    groups = list(range(targets.kv_heads))
    q = [g * (cfg.num_attention_heads // n_kv) + i for g in groups for i in range(per_kv)]
    surgery.keep_attention_heads(student, [groups] * n_layers, [q] * n_layers)
    surgery.keep_hidden(student, torch.arange(targets.hidden))
    shapes = {"stage1": copy.deepcopy(student)}
    surgery.keep_mlp_channels(student, [torch.arange(targets.mlp)] * n_layers)
    shapes["stage2"] = copy.deepcopy(student)
    surgery.remove_layers(student, list(range(targets.layers, n_layers)))
    shapes["stage3"] = student
    return shapes


def time_steps(student, loss_fn, batches, fused: bool = True,
               precision: str = "fp32") -> tuple[float, int, list[float]]:
    """Seconds a step, peak RSS and the loss of every step; AdamW fused as the trainer runs it, or
    torch's default loop over tensors (what the trainer ran before); the loss under `precision`'s
    autocast, as the trainer runs it (`compress --precision`)."""
    student.train()
    for p in student.parameters():
        p.requires_grad_(True)
    params = list(student.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=fused_adamw(torch.device("cpu"), params) if fused else None)
    losses = []
    with Meter(torch.device("cpu")) as meter:
        for batch in batches:
            with dtypes.autocast(precision, torch.device("cpu")):
                loss = loss_fn(student, batch)
            loss.backward()
            losses.append(loss.item())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return meter.seconds / len(batches), meter.peak, losses


def mode_steps(student, teacher, batches, cache: TeacherCache | None = None, **how) -> tuple[float, int, list[float]]:
    """`time_steps` of a fresh copy of `student`, the teacher run every step or read from `cache`."""
    return time_steps(copy.deepcopy(student), make_loss_fn(teacher, DistillSettings(), cache=cache), batches, **how)


def largest_difference(losses: list[float], others: list[float]) -> float:
    return max(abs(a - b) for a, b in zip(losses, others))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="model folder (a trained base)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    options = CompressOptions(train_limit=args.batch_size * args.steps * 4, valid_limit=8, calib_samples=8)
    inputs = load_inputs(args.base, args.data, options)
    teacher, pad = inputs.base.model.eval(), inputs.base.tokenizer.pad_token_id
    for p in teacher.parameters():
        p.requires_grad_(False)
    order = length_batches([len(e.input_ids) for e in inputs.train], args.batch_size, seed=0)[:args.steps]
    batches = [collate([inputs.train[i] for i in ids], pad) for ids in order]
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        cache = TeacherCache(folder, teacher.config.hidden_size)
        started = time.perf_counter()
        for batch in batches:
            teacher_logits(teacher, batch, cache)
        fill = (time.perf_counter() - started) / len(batches)
        for stage, student in shaped_students(teacher, inputs.targets).items():
            live, live_rss, live_losses = mode_steps(student, teacher, batches)
            cached, cached_rss, cached_losses = mode_steps(student, teacher, batches, cache)
            looped, _, looped_losses = mode_steps(student, teacher, batches, cache, fused=False)
            bf16, bf16_rss, bf16_losses = mode_steps(student, teacher, batches, cache, precision="bf16")
            rows[stage] = {"teacher_every_step_s": round(live, 3), "cached_s": round(cached, 3),
                           "speed_up": round(live / cached, 2), "cached_loop_adamw_s": round(looped, 3),
                           "fused_adamw_speed_up": round(looped / cached, 2),
                           "max_loss_difference_fused_vs_loop": largest_difference(cached_losses, looped_losses),
                           "teacher_every_step_peak_rss_gib": round(live_rss / 2**30, 2),
                           "cached_peak_rss_gib": round(cached_rss / 2**30, 2),
                           "max_loss_difference": largest_difference(live_losses, cached_losses),
                           "cached_bf16_s": round(bf16, 3), "cached_bf16_peak_rss_gib": round(bf16_rss / 2**30, 2),
                           "max_loss_difference_bf16_vs_fp32": largest_difference(cached_losses, bf16_losses),
                           "losses_cached": [round(x, 5) for x in cached_losses],
                           "losses_cached_bf16": [round(x, 5) for x in bf16_losses]}
    result = {"base": args.base, "steps": args.steps, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "targets": inputs.targets.to_json(), "cache_fill_s_per_batch": round(fill, 3), "stages": rows}
    write_json(args.out, result)
    print(f"teacher forward (cache fill): {fill:.3f} s a batch")
    print("| student shape | teacher every step | cached | speed-up | cached, loop AdamW | cached, bf16 "
          "| peak RSS (teacher / cached) | max loss diff | bf16 max loss diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for stage, r in rows.items():
        rss = f"{r['teacher_every_step_peak_rss_gib']} / {r['cached_peak_rss_gib']} GiB"
        print(f"| after {stage} | {r['teacher_every_step_s']:.3f} s | {r['cached_s']:.3f} s | {r['speed_up']:.2f}x "
              f"| {r['cached_loop_adamw_s']:.3f} s | {r['cached_bf16_s']:.3f} s | {rss} "
              f"| {r['max_loss_difference']:.2e} "
              f"| {r['max_loss_difference_bf16_vs_fp32']:.2e} |")


if __name__ == "__main__":
    main()
