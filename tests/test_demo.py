"""`prunerec demo` end to end with small budgets: every step runs, the final table compares base
and pruned from the steps' own outputs, and --resume reuses finished work."""
import json

from click.testing import CliRunner

from prunerec.cli import main

STEPS = ("data", "train", "evaluate", "compress", "evaluate pruned", "export", "serve + loadtest (torch)")


def test_demo_runs_every_step_and_compares_base_with_pruned(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--minutes", "0.1", "--users", "20", "--distill-steps", "6",
            "--engine", "torch", "--load-users", "1,2", "--load-seconds", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for step in STEPS:
        assert f"== demo step: {step}" in result.output
    summary = json.loads((out / "summary.json").read_text())
    base, pruned = summary["rows"]["base"], summary["rows"]["pruned"]
    compress = json.loads((out / "pruned" / "report.json").read_text())
    assert pruned["parameters"] == compress["final"]["parameters"]
    assert summary["non_embedding_removed_share"] >= 0.95
    assert pruned["weights_bytes"] < base["weights_bytes"] / 4
    base_eval = json.loads((out / "eval.json").read_text())["results"]["trie"]["metrics"]
    assert base["HR@10"] == base_eval["HR@10"]
    load = json.loads((out / "loadtest-torch" / "report.json").read_text())
    assert load["complete"] and summary["speed_level_users"] == 2
    for role, name in (("baseline", "base"), ("candidate", "pruned")):
        assert load["models"][role]["catalog_share"] == 1.0
        assert pruned["speed"]["torch"]["rps"] > 0 and summary["rows"][name]["speed"] == {"torch": {
            k: load["models"][role]["levels"][-1][k] for k in ("rps", "p50_ms", "p99_ms")}}
    table = (out / "summary.md").read_text()
    assert "| test HR@10 |" in table and "| requests/s (2 users, torch) |" in table and "vllm" not in table
    assert table.strip() in result.output

    again = CliRunner().invoke(main, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert all(f"{step}: already done" in again.output for step in STEPS)
    assert json.loads((out / "summary.json").read_text()) == summary


def test_demo_refuses_bad_load_users(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "d"), "--load-users", "1,x"])
    assert result.exit_code != 0 and "--load-users" in result.output and "Traceback" not in result.output
