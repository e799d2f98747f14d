"""bench/prune_smollm2.py runs end to end on a tiny base: criteria compared on the base's users,
fidelity measured, points resumed, the summary written."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import prune_smollm2  # noqa: E402


def run_bench(base, data, out, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "bench/prune_smollm2.py", "--base", str(base), "--data", str(data),
                           "--out", str(out), "--users", "12", "--stage-steps", "1,1,2", "--calib-samples", "4",
                           "--kl-rows", "6", "--teacher-cache", str(out / "cache"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_points_compare_criteria_and_fidelity(tiny_base, tmp_path):
    from prunerec.evaluate.pipeline import run_evaluate

    data, model = tiny_base
    base = tmp_path / "base"
    base.mkdir()
    (base / "model").symlink_to(model)
    run_evaluate(model, data, split="test", grounding="trie", beams=20, limit=12, out=base / "eval.json")
    out = tmp_path / "out"
    run_bench(base, data, out, "--parts", "distilled")
    root = out / "prune_smollm2_data"
    names = sorted(p.stem for p in root.glob("*.json"))
    assert names == [f"distilled-{c}" for c in sorted(prune_smollm2.CRITERIA)]
    point = json.loads((root / "distilled-random.json").read_text())
    assert point["users"] == 12 and point["changes"]["method"] == "random"
    assert 0.0 <= point["fidelity"]["overlap@10"] <= 1.0 and point["fidelity"]["response_kl"] > 0
    written = (root / "distilled-random.json").stat().st_mtime
    table = run_bench(base, data, out, "--parts", "distilled")  # finished points are kept, not redone
    assert (root / "distilled-random.json").stat().st_mtime == written
    assert "distilled-wanda-sp" in table and "response KL to base" in table
    summary = json.loads((out / "prune_smollm2_data.json").read_text())
    versus = summary["points"]["distilled-random"]["versus_prunerec"]["NDCG@10"]
    assert set(versus) == {"ratio", "ratio_ci95", "difference", "difference_ci95"}
    assert summary["points"]["distilled-prunerec"]["versus_prunerec"] is None
    assert (out / "prune_smollm2_data.png").stat().st_size > 0
    run_bench(base, data, out, "--parts", "serve", "--serve-users", "2", "--serve-seconds", "3")
    serving = json.loads((root / "distilled-prunerec.json").read_text())["serving"]
    assert serving["engine"] == "torch" and serving["failures"] == 0 and serving["rps"] > 0 < serving["base_rps"]
    assert "serving" not in json.loads((root / "distilled-random.json").read_text())  # PruneRec's points only


def test_every_part_names_its_points_and_their_reference():
    args = type("Args", (), {"parts": "distilled,one-shot,pruned", "stage_steps": (60, 60, 960)})()
    points = dict(prune_smollm2.points(args))
    mildest = next(iter(prune_smollm2.CURVE))
    assert points["one-shot"] == {"one_shot": True, "max_steps": 1080}
    assert points[f"pruned-{mildest}-random"] == {"method": "random", "distill": False, **prune_smollm2.CURVE[mildest]}
    assert "pruned-default-prunerec" in points and "pruned-default-random" not in points
    assert prune_smollm2.reference_of("one-shot") == "distilled-prunerec"
    assert prune_smollm2.reference_of(f"pruned-{mildest}-wanda-sp") == f"pruned-{mildest}-prunerec"
    assert prune_smollm2.overlap_rows({"rankings": [{"trie": ["a", "b"]}]}, {"rankings": [{"trie": ["b", "c"]}]},
                                      k=2) == [{"overlap@2": 0.5}]
