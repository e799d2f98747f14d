"""Benchmark: wall time and peak memory of every PruneRec scoring pass on a Qwen2-0.5B-shaped model.

What a real `prunerec compress` spends on scoring (distillation is not measured here), on a
model of the real Qwen2-0.5B shape (vocab 151936, hidden 896, 24 layers, 14 q / 2 kv heads of
64, MLP 4864, tied embeddings) with random weights, float32, no download. Calibration samples
are random token ids shaped like build_calibration's examples: --seq-len tokens on average
(+-15%), the last 8-20 of them a response ending in EOS, batched by the real build_calibration
(batches of compress's --calib-samples batch size, 16).

Each pass is scored on the shape `prunerec compress` hands it (--shapes pipeline, the default):
head scores on the base model; hidden-dimension scores after the heads were cut (7 q / 1 kv);
MLP scores after the hidden dimension was cut (448); layer scores after the MLP was cut (896).
The cuts are made with the real surgery (prunerec.model.surgery) on the same model, keeping
arbitrary indices (weights are random anyway). --shapes base scores everything on the base shape.

Passes (the real functions of prunerec.compress.importance, called as stages.py calls them):
PruneRec head KL (alpha recursion, sequential masking), hidden gradient x activation, MLP top-k
activation frequency, greedy layer removal by calibration perplexity; the baselines' wanda-sp
and magnitude scorers for heads, hidden and MLP, and ShortGPT for layers.

The two expensive passes are not run in full by default, because on 2 cores they take hours:
- head KL = 1 reference forward + one masked forward per head per layer (24 x 14), each over
  all calibration prompts. We time the reference forward and two masked forwards with the very
  helpers head_importance_kl loops over (importance._last_logp, masked_heads, _mean_kl) and
  multiply by the unit count.
- greedy layer removal = in removal round r (0-based), one calibration_perplexity per remaining
  layer, each with r + 1 layers skipped: 24 + 23 + ... + 9 = 264 perplexity passes for 16
  removals. A pass costs t0 + a * t_layer for a active layers; we time calibration_perplexity
  with all layers and with only the kept number active and fit the line.
Both estimates are extrapolations and are labelled so. Every other pass runs for real on
--samples samples. Times of data passes are scaled linearly to compress's 64 calibration
samples (x 64 / samples); weight-only passes (magnitude) do not depend on the samples.
--full runs the two expensive passes for real too (on --samples samples; hours at 64).

Memory: peak resident set size of the process during each pass (a thread samples psutil's RSS
every 5 ms; resource.getrusage's ru_maxrss gives the exact peak whenever it rises during a
pass), reported absolute and as the rise over the RSS at the start of the pass (freed memory is
handed back to the OS with malloc_trim before each pass). Batches hold min(samples, 16) rows;
use --samples 16 or more for a real run's per-batch memory. torch's own peak counter exists only
on CUDA (--device cuda); on the CPU it is null.

Writes bench/out/scoring_cost.json (atomically) and prints a markdown table.
Usage: python bench/scoring_cost.py [--samples 8] [--seq-len 176] [--full] [--shape qwen2-0.5b|tiny]
                                    [--shapes pipeline|base] [--out PATH] [--device cpu]
Smoke test (seconds): python bench/scoring_cost.py --shape tiny --samples 2 --out /tmp/sc.json
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import sys
import time
from pathlib import Path

import psutil
import torch
import transformers
from meter import measured, merge, ru_maxrss_bytes  # bench/ is on sys.path
from scoring_cost_report import markdown, method_totals, mib
from transformers import Qwen2Config, Qwen2ForCausalLM

from prunerec.compress import hooks
from prunerec.compress import importance as imp
from prunerec.compress.pipeline import CompressOptions
from prunerec.compress.stages import build_calibration
from prunerec.compress.targets import base_shape, resolve_targets
from prunerec.io import write_json
from prunerec.model import surgery
from prunerec.model.encode import Example
from prunerec.model.presets import get_preset

HERE = Path(__file__).resolve().parent
DEFAULTS = CompressOptions()  # compress's own defaults: 64 calibration samples in batches of 16, alpha, mask mode
FULL_SAMPLES = DEFAULTS.calib_samples
QWEN2_05B_EOS = 151643  # <|endoftext|>: Qwen2's EOS and, in this project, its pad token


# ----------------------------------------------------------------------------- model and data


def model_config(shape: str) -> tuple[Qwen2Config, int]:
    """(config, eos/pad id) of the scored model."""
    if shape == "qwen2-0.5b":
        cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                          num_attention_heads=14, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True,
                          max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                          bos_token_id=QWEN2_05B_EOS, eos_token_id=QWEN2_05B_EOS, pad_token_id=QWEN2_05B_EOS)
        return cfg, QWEN2_05B_EOS
    preset = get_preset(shape)
    eos = preset.vocab_size - 1
    return preset.config(preset.vocab_size, eos), eos


def calibration_examples(n: int, seq_len: int, token_hi: int, eos: int, seed: int) -> list[Example]:
    """Random recommender-like examples: ~seq_len tokens (+-15%), the last 8-20 the response
    (a quoted title, a newline and EOS in real data)."""
    rng = random.Random(seed)
    lo, hi = max(4, round(seq_len * 0.85)), max(4, round(seq_len * 1.15))
    out = []
    for _ in range(n):
        total = rng.randint(lo, hi)
        n_response = min(rng.randint(8, 20), total // 2)
        out.append(Example([rng.randrange(token_hi) for _ in range(total - 1)] + [eos], n_response))
    return out


def token_stats(batches: list[dict]) -> dict:
    lengths = [int(x) for b in batches for x in b["attention_mask"].sum(1)]
    return {"mean": round(sum(lengths) / len(lengths), 1), "min": min(lengths), "max": max(lengths),
            "total": sum(lengths), "padded_widths": [int(b["input_ids"].shape[1]) for b in batches]}


# ----------------------------------------------------------------------------- measuring


# ----------------------------------------------------------------------------- passes


class Bench:
    def __init__(self, model, calib, targets, args, device):
        self.model, self.calib, self.targets, self.args, self.device = model, calib, targets, args, device
        self.scale = FULL_SAMPLES / calib.n_samples
        self.passes: list[dict] = []

    def shape(self) -> dict:
        s = base_shape(self.model.config)
        return {k: s[k] for k in ("layers", "heads", "kv_heads", "hidden", "mlp")}

    def add(self, name, stage, function, data, unit, units, rec, *, estimate, basis, run="full pass", extra=None):
        row = {"name": name, "stage": stage, "function": f"prunerec.compress.importance.{function}",
               "scored_shape": self.shape(), "data": data, "unit": unit, "units_full_run": units,
               "run": run, **rec, "estimated_full_seconds": round(estimate, 6),
               "estimate_kind": "extrapolated from units" if run.startswith("units") else
               ("weights only, no calibration data" if data == "weights" else f"measured x {FULL_SAMPLES}/samples"),
               "estimate_basis": basis}
        row.update(extra or {})
        self.passes.append(row)
        est = f"{row['estimated_full_seconds']:.1f} s"
        print(f"  {name:<18} {rec['seconds']:9.2f} s  peak RSS +{mib(rec['peak_rss_delta_bytes'])}  "
              f"-> full run ~{est} ({row['estimate_kind']})", flush=True)

    def data_pass(self, name, stage, function, data, unit, fn):
        """A pass that runs in full: one forward over the calibration set (or weights only)."""
        _, rec = measured(self.device, fn)
        if data == "weights":
            est, basis, units = rec["seconds"], "independent of the calibration set", 0
        else:
            est = rec["seconds"] * self.scale
            basis = f"{rec['seconds']:.3f} s on {self.calib.n_samples} samples x {FULL_SAMPLES}/{self.calib.n_samples}"
            units = 1
        self.add(name, stage, function, data, unit, units, rec, estimate=est, basis=basis)

    # --- Stage I: heads on the base shape

    def heads_kl(self):
        m, prompts = self.model, self.calib.prompts
        n_layers, n_heads = m.config.num_hidden_layers, m.config.num_attention_heads
        n_remove = n_heads - self.targets.heads
        units = 1 + n_layers * n_heads
        unit = "one forward of the calibration prompts with one head masked (last-token KL)"
        b = [hooks.to_model_device(m, x) for x in prompts]
        with hooks.eval_mode(m):
            ref, r_ref = measured(self.device, lambda: [hooks.last_token_logp(m, x) for x in b])
            recs = []
            for layer, head in ((0, 0), (n_layers - 1, n_heads - 1)):
                # the last layer's forward carries the sequential masks of every earlier layer
                masked = {} if layer == 0 else {i: list(range(n_remove)) for i in range(layer)}
                with imp.masked_heads(m, {**masked, layer: [head]}, self.args.mask_mode):
                    recs.append(measured(self.device, lambda: hooks.mean_kl_full_forward(m, b, ref))[1])
        t_unit = sum(r["seconds"] for r in recs) / len(recs)
        est_units = (r_ref["seconds"] + n_layers * n_heads * t_unit) * self.scale
        basis = (f"(reference {r_ref['seconds']:.3f} s + {n_layers} x {n_heads} x {t_unit:.3f} s per masked forward) "
                 f"x {FULL_SAMPLES}/{self.calib.n_samples}")
        rec = merge([r_ref, *recs])
        extra = {"unit_seconds": round(t_unit, 6), "reference_seconds": round(r_ref["seconds"], 6),
                 "units_measured": 1 + len(recs), "estimated_full_seconds_from_units": round(est_units, 6),
                 "units_breakdown": f"1 reference + {n_layers} layers x {n_heads} heads"}
        if not self.args.full:
            self.add("prunerec/heads", "stage1", "head_importance_kl", "prompts", unit, units, rec,
                     estimate=est_units, basis=basis, run="units only (1 reference + 2 masked forwards)", extra=extra)
            return
        _, full = measured(self.device, lambda: imp.head_importance_kl(
            m, prompts, alpha=self.args.alpha, n_remove_per_layer=n_remove, mask_mode=self.args.mask_mode))
        extra["units_run"] = rec
        self.add("prunerec/heads", "stage1", "head_importance_kl", "prompts", unit, units, full,
                 estimate=full["seconds"] * self.scale, run="full pass (--full)", extra=extra,
                 basis=f"{full['seconds']:.3f} s on {self.calib.n_samples} samples x {FULL_SAMPLES}/"
                       f"{self.calib.n_samples} (unit extrapolation: {est_units:.1f} s)")

    # --- Stage III: greedy layer removal

    def greedy_layers(self):
        m, full_b = self.model, self.calib.full
        n_layers, n_remove = m.config.num_hidden_layers, m.config.num_hidden_layers - self.targets.layers
        active_min = n_layers - n_remove
        units = sum(n_layers - r for r in range(n_remove))
        unit = "one calibration-perplexity forward of prompt + response, removed layers skipped"
        _, r_all = measured(self.device, lambda: imp.calibration_perplexity(m, full_b))
        with imp.skipped_layers(m, range(n_remove)):
            _, r_min = measured(self.device, lambda: imp.calibration_perplexity(m, full_b))
        t_all, t_min = r_all["seconds"], r_min["seconds"]
        t_layer = max(0.0, (t_all - t_min) / n_remove) if n_remove else 0.0
        t0 = max(0.0, t_all - n_layers * t_layer)
        per_sample_run = sum((n_layers - r) * (t0 + (n_layers - r - 1) * t_layer) for r in range(n_remove))
        est_units = per_sample_run * self.scale
        basis = (f"sum over rounds r=0..{n_remove - 1} of ({n_layers}-r) passes x (t0 + ({n_layers}-r-1) x t_layer), "
                 f"t0 = {t0:.3f} s, t_layer = {t_layer:.4f} s (fit through {t_all:.3f} s with {n_layers} layers "
                 f"and {t_min:.3f} s with {active_min}), x {FULL_SAMPLES}/{self.calib.n_samples}")
        rec = merge([r_all, r_min])
        extra = {"unit_seconds_all_layers": round(t_all, 6), f"unit_seconds_{active_min}_layers": round(t_min, 6),
                 "fixed_seconds_per_unit": round(t0, 6), "seconds_per_active_layer": round(t_layer, 6),
                 "units_measured": 2, "estimated_full_seconds_from_units": round(est_units, 6),
                 "units_breakdown": f"{' + '.join(str(n_layers - r) for r in range(n_remove))}, {n_remove} rounds"}
        if not self.args.full:
            self.add("prunerec/layers", "stage3", "greedy_layer_removal", "prompt+response", unit, units, rec,
                     estimate=est_units, basis=basis, run="units only (2 perplexity passes)", extra=extra)
            return
        _, full = measured(self.device, lambda: imp.greedy_layer_removal(m, full_b, n_remove))
        extra["units_run"] = rec
        self.add("prunerec/layers", "stage3", "greedy_layer_removal", "prompt+response", unit, units, full,
                 estimate=full["seconds"] * self.scale, run="full pass (--full)", extra=extra,
                 basis=f"{full['seconds']:.3f} s on {self.calib.n_samples} samples x {FULL_SAMPLES}/"
                       f"{self.calib.n_samples} (unit extrapolation: {est_units:.1f} s)")

    # --- the whole sequence, stage by stage, cutting the model as compress does

    def run(self, cut: bool):
        m, c, t = self.model, self.calib, self.targets
        fwd_p = "one forward of the calibration prompts"
        fwd_f = "one forward of the calibration prompts + responses"
        print(f"stage 1, heads, on {self.shape()}", flush=True)
        self.heads_kl()
        self.data_pass("wanda-sp/heads", "stage1", "wanda_head_scores", "prompt+response",
                       f"{fwd_f} (input norms of q/o_proj)", lambda: imp.wanda_head_scores(m, c.full))
        self.data_pass("magnitude/heads", "stage1", "magnitude_head_scores", "weights",
                       "weights only", lambda: imp.magnitude_head_scores(m))
        if cut:
            keep_kv, keep_q = imp.select_heads(imp.random_head_scores(m), m.config.num_key_value_heads,
                                               t.heads, t.kv_heads)
            surgery.keep_attention_heads(m, keep_kv, keep_q)
        print(f"stage 1, hidden, on {self.shape()}", flush=True)
        self.data_pass("prunerec/hidden", "stage1", "hidden_importance", "prompts",
                       f"{fwd_p} (no grad) + d logit_pred/dh through the LM head only",
                       lambda: imp.hidden_importance(m, c.prompts))
        self.data_pass("wanda-sp/hidden", "stage1", "wanda_hidden_scores", "prompt+response",
                       f"{fwd_f} incl. full-vocab LM head (input norms of every linear)",
                       lambda: imp.wanda_hidden_scores(m, c.full))
        self.data_pass("magnitude/hidden", "stage1", "magnitude_hidden_scores", "weights",
                       "weights only", lambda: imp.magnitude_hidden_scores(m))
        if cut:
            surgery.keep_hidden(m, torch.arange(t.hidden))
        print(f"stage 2, MLP, on {self.shape()}", flush=True)
        self.data_pass("prunerec/mlp", "stage2", "mlp_channel_frequency", "prompt+response",
                       f"{fwd_f} (top-{t.mlp} abs(up_proj) channels per token)",
                       lambda: imp.mlp_channel_frequency(m, c.full, k=t.mlp))
        self.data_pass("wanda-sp/mlp", "stage2", "wanda_mlp_scores", "prompt+response",
                       f"{fwd_f} (input norms of up/down_proj)", lambda: imp.wanda_mlp_scores(m, c.full))
        self.data_pass("magnitude/mlp", "stage2", "magnitude_mlp_scores", "weights",
                       "weights only", lambda: imp.magnitude_mlp_scores(m))
        if cut:
            surgery.keep_mlp_channels(m, [torch.arange(t.mlp)] * m.config.num_hidden_layers)
        print(f"stage 3, layers, on {self.shape()}", flush=True)
        self.greedy_layers()
        self.data_pass("shortgpt/layers", "stage3", "shortgpt_layer_scores", "prompt+response",
                       f"{fwd_f} (cosine of each layer's input and output)",
                       lambda: imp.shortgpt_layer_scores(m, c.full))


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vm = psutil.virtual_memory()
    info = {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else os.cpu_count(), "cpu_model": cpu,
            "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"), "ram_total_bytes": vm.total,
            "ram_available_bytes_at_start": vm.available, "load_average_at_start": list(os.getloadavg()),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8, help="calibration samples actually scored (default 8)")
    ap.add_argument("--seq-len", type=int, default=176,
                    help="mean tokens per sample, prompt + response (+-15%%; default 176)")
    ap.add_argument("--full", action="store_true",
                    help="also run head KL and greedy layer removal in full (hours for the 0.5B shape)")
    ap.add_argument("--shape", choices=("qwen2-0.5b", "tiny"), default="qwen2-0.5b",
                    help="qwen2-0.5b (default) or the tiny preset (a smoke test in seconds)")
    ap.add_argument("--shapes", choices=("pipeline", "base"), default="pipeline",
                    help="pipeline: score each stage on the shape compress hands it (default); "
                         "base: every pass on the base shape")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda; torch's peak counter exists only on CUDA")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "out" / "scoring_cost.json"))
    args = ap.parse_args(argv)
    if args.samples < 1 or args.seq_len < 8:
        ap.error("--samples must be >= 1 and --seq-len >= 8")
    args.alpha, args.mask_mode = DEFAULTS.alpha, DEFAULTS.mask_mode
    device = torch.device(args.device)
    machine = machine_info(device)

    config, eos = model_config(args.shape)
    targets = resolve_targets(config)
    torch.manual_seed(args.seed)
    t = time.perf_counter()
    model = Qwen2ForCausalLM(config).to(device).eval()
    build_seconds = time.perf_counter() - t
    params = surgery.count_parameters(model)
    print(f"{args.shape}: {params} built in {build_seconds:.1f} s; targets {targets.to_json()}", flush=True)
    examples = calibration_examples(args.samples, args.seq_len, min(config.vocab_size, eos), eos, args.seed)
    calib = build_calibration(examples, eos, DEFAULTS.calib_batch_size)

    with torch.no_grad():  # one short forward first, so that no pass pays the one-time start-up
        model(input_ids=calib.prompts[0]["input_ids"][:1, :16].to(device), use_cache=False)
    bench = Bench(model, calib, targets, args, device)
    started = time.perf_counter()
    bench.run(cut=args.shapes == "pipeline")
    result = {
        "benchmark": "scoring_cost",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "args": {k: v for k, v in vars(args).items()},
        "machine": {**machine, "load_average_at_end": list(os.getloadavg()),
                    "process_peak_rss_bytes": ru_maxrss_bytes()},
        "model": {"shape": args.shape, "base_shape": base_shape(config), "parameters": params,
                  "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                  "attn_implementation": getattr(model.config, "_attn_implementation", None),
                  "weights": "random init (no download)", "build_seconds": round(build_seconds, 3),
                  "shapes": args.shapes},
        "targets": targets.to_json(),
        "calibration": {"samples": calib.n_samples, "batch_size": DEFAULTS.calib_batch_size,
                        "batches": len(calib.full), "prompt_tokens": token_stats(calib.prompts),
                        "full_tokens": token_stats(calib.full),
                        "response_tokens_mean": round(sum(e.n_response for e in examples) / len(examples), 1),
                        "full_run_samples": FULL_SAMPLES, "time_scale_to_full_run": FULL_SAMPLES / calib.n_samples},
        "benchmark_seconds": round(time.perf_counter() - started, 3),
        "passes": bench.passes,
        "method_totals": method_totals(bench.passes),
        "notes": [
            "Estimates of data passes scale time linearly with the sample count (same token lengths); "
            "batches of the real run hold 16 rows.",
            "prunerec/heads and prunerec/layers without --full are extrapolations from timed units "
            "(see estimate_basis of each).",
            "stage 3 also computes calibration perplexity twice for its report (about 2 more units of "
            "prunerec/layers, whatever the layer method).",
            "--stability doubles every data pass (both halves of the calibration set are scored again).",
            "Distillation after each stage is not part of this benchmark.",
        ],
    }
    write_json(args.out, result)
    print()
    print(markdown(result))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
