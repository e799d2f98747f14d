"""bench/scoring_cost.py runs end to end on the tiny preset and records every scoring pass."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PASSES = {
    "prunerec/heads", "prunerec/hidden", "prunerec/mlp", "prunerec/layers",
    "wanda-sp/heads", "wanda-sp/hidden", "wanda-sp/mlp",
    "magnitude/heads", "magnitude/hidden", "magnitude/mlp",
    "shortgpt/layers",
}


def test_scoring_cost_tiny(tmp_path):
    out = tmp_path / "scoring_cost.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "bench/scoring_cost.py", "--shape", "tiny", "--samples", "2",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())

    passes = {p["name"]: p for p in result["passes"]}
    assert set(passes) == PASSES
    for name, p in passes.items():
        assert p["seconds"] > 0, name
        assert p["estimated_full_seconds"] > 0, name
        assert p["peak_rss_bytes"] > 0, name
        assert p["peak_rss_delta_bytes"] >= 0, name
        assert p["units_full_run"] >= 0, name
    # the expensive passes are extrapolated from timed units without --full, and say so
    for name in ("prunerec/heads", "prunerec/layers"):
        assert passes[name]["run"].startswith("units only")
        assert passes[name]["estimate_kind"] == "extrapolated from units"
    # tiny: 4 layers x 2 heads (+1 reference); 3 of 4 layers removed greedily: 4 + 3 + 2
    assert passes["prunerec/heads"]["units_full_run"] == 9
    assert passes["prunerec/layers"]["units_full_run"] == 9
    # each stage is scored on the shape compress hands it
    assert passes["prunerec/heads"]["scored_shape"]["heads"] == 2
    assert passes["prunerec/hidden"]["scored_shape"]["heads"] == 1
    assert passes["prunerec/mlp"]["scored_shape"]["hidden"] == 64
    assert passes["prunerec/layers"]["scored_shape"]["mlp"] == 96

    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch_threads"] == 1 and machine["ram_total_bytes"] > 0
    assert result["calibration"]["samples"] == 2 and result["calibration"]["full_run_samples"] == 64
    assert set(result["method_totals"]) and all(v["estimated_full_seconds"] > 0
                                               for v in result["method_totals"].values())
    assert "| prunerec/heads |" in proc.stdout and "(extrapolated)" in proc.stdout
