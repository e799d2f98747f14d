"""bench/scoring_speed.py runs end to end on a tiny GQA recommender and compares two labelled runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(model, data, out, label):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "bench/scoring_speed.py", "--model", str(model), "--data", str(data),
                           "--label", label, "--samples", "4", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_scoring_speed_two_runs_compared(tiny_base, gqa_base, tmp_path):
    data, _ = tiny_base
    out = tmp_path / "scoring_speed.json"
    run_bench(gqa_base, data, out, "after")
    run_bench(gqa_base, data, out, "before")
    report = json.loads(out.read_text())
    assert set(report["runs"]) == {"before", "after"}
    for run in report["runs"].values():
        assert run["samples"] == 4 and run["prompt_tokens_max"] >= run["prompt_tokens_mean"] > 0
        assert run["heads"]["seconds"] >= 0 and len(run["heads"]["scores"]) == 3
        assert len(run["layers"]["removal_order"]) >= 1
    same_code = report["comparison"]["after vs before"]
    assert same_code["heads_max_abs_score_diff"] == 0.0
    assert same_code["heads_same_masked"] and same_code["layers_same_order"]
