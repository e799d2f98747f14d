"""`prunerec compress` / `prunerec analyze` end to end on a tiny base (about a minute on 1-2 cores).

Covers: stage folders are stock Qwen2 checkpoints with the target shapes (config and real
weights), shrinking parameter counts, report files, --resume after a stop between stages and
after a kill inside a distillation (ends with the same weights as an unbroken run), every
--method, --layer-method shortgpt, the --no-distill / --one-shot ablations, GQA head choice,
and inputs refused up front with a clean message.
"""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

from prunerec.cli import main
from prunerec.model.checkpoint import load_rec_model
from prunerec.model.surgery import count_parameters
from prunerec.train import checkpoints
from prunerec.train.trainer import Trainer

FAST = ["--max-steps", "3", "--eval-every", "2", "--batch-size", "8", "--train-limit", "48", "--valid-limit", "16",
        "--eval-users", "4", "--beams", "4", "--calib-samples", "8", "--calib-batch-size", "4", "--warmup", "1"]
STAGES = ("stage1", "stage2", "stage3")
# tiny preset (4 layers, 2q/1kv x 64, hidden 128, MLP 512) -> paper proportions
EXPECTED = {
    "stage1": dict(layers=4, heads=1, kv_heads=1, hidden=64, mlp=512),
    "stage2": dict(layers=4, heads=1, kv_heads=1, hidden=64, mlp=96),
    "stage3": dict(layers=1, heads=1, kv_heads=1, hidden=64, mlp=96),
}


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def compress(base, data, out, *extra):
    result = cli("compress", "--model", base, "--data", data, "--out", out, *FAST, *extra)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{a.name}: {k} differs"


@pytest.fixture(scope="module")
def full_run(tiny_base, tmp_path_factory):
    data, base = tiny_base
    out = tmp_path_factory.mktemp("full") / "out"
    result = compress(base, data, out)
    assert "removed" in result.output and "report" in result.output
    return out


# ----------------------------------------------------------------------------- outputs


def test_stage_folders_are_stock_checkpoints(full_run, tiny_base):
    data, base = tiny_base
    base_model = load_rec_model(str(base)).model
    prev_params = count_parameters(base_model)
    prev_size = (base / "model.safetensors").stat().st_size
    for name in STAGES + ("final",):
        folder = full_run / name
        for f in ("config.json", "model.safetensors", "tokenizer.json", "catalog.jsonl", "prunerec.json",
                  "compress.json"):
            assert (folder / f).is_file(), f"{name}/{f} missing"
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["architectures"] == ["Qwen2ForCausalLM"] and "auto_map" not in cfg
        model = AutoModelForCausalLM.from_pretrained(folder)  # stock class, no trust_remote_code
        assert type(model) is Qwen2ForCausalLM
        want = EXPECTED["stage3" if name == "final" else name]
        c = model.config
        assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.hidden_size,
                c.intermediate_size, c.head_dim) == (want["layers"], want["heads"], want["kv_heads"],
                                                     want["hidden"], want["mlp"], 64)
        # the weights themselves have the target shape, identical in every layer
        layer_shapes = {tuple((n, tuple(p.shape)) for n, p in layer.named_parameters())
                        for layer in model.model.layers}
        assert len(layer_shapes) == 1
        shapes = dict(next(iter(layer_shapes)))
        assert shapes["self_attn.q_proj.weight"] == (want["heads"] * 64, want["hidden"])
        assert shapes["self_attn.k_proj.weight"] == (want["kv_heads"] * 64, want["hidden"])
        assert shapes["self_attn.o_proj.weight"] == (want["hidden"], want["heads"] * 64)
        assert shapes["mlp.down_proj.weight"] == (want["hidden"], want["mlp"])
        assert model.model.embed_tokens.weight.shape[1] == want["hidden"]
        with safe_open(str(folder / "model.safetensors"), "pt") as f:  # on disk too
            assert f.get_slice("model.layers.0.mlp.up_proj.weight").get_shape() == [want["mlp"], want["hidden"]]
        params = count_parameters(model)
        if name != "final":
            assert params["non_embedding"] < prev_params["non_embedding"] and params["total"] < prev_params["total"]
            size = (folder / "model.safetensors").stat().st_size
            assert size < prev_size
            prev_params, prev_size = params, size
        rec = load_rec_model(str(folder), need_catalog=True)
        assert rec.catalog.titles == load_rec_model(str(base)).catalog.titles
    assert_same_weights(full_run / "final", full_run / "stage3")
    assert not (full_run / ".state/stage1").exists() and (full_run / ".state/run.json").is_file()


def test_report(full_run):
    report = json.loads((full_run / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == list(STAGES)
    base_non = report["base"]["parameters"]["non_embedding"]
    assert base_non == 985_216
    for s in report["stages"]:
        assert s["shape"]["layers"] == EXPECTED[s["stage"]]["layers"]
        assert set(s["parameters"]) == {"total", "embedding", "non_embedding"}
        for key in ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20"):
            assert 0 <= s["eval"]["metrics"][key] <= 1
        assert s["distilled"] and s["distill"]["steps"] == 3
        log = s["distill"]["log"]
        assert log[0]["step"] == 0 and [r["step"] for r in log[1:]] == [2, 3]
        assert s["wall_seconds"]["total"] > 0
    final = report["final"]
    assert final["parameters"]["non_embedding"] == report["plan"]["target_parameters"]["non_embedding"] == 35_200
    assert final["non_embedding_removed_share"] == pytest.approx(1 - 35_200 / base_non)
    assert report["base"]["eval"]["users"] == 4
    md = (full_run / "report.md").read_text()
    assert "| stage1 |" in md and "removed" in md and "NDCG@10" in md
    for png in ("parameters.png", "quality.png", "distill_loss.png"):
        assert (full_run / png).read_bytes()[:4] == b"\x89PNG"
    kept = report["stages"][0]["pruning"]["kept"]
    assert len(kept["q_heads"]) == 4 and len(kept["hidden"]) == 64
    assert len(report["stages"][2]["pruning"]["kept"]["layers"]) == 1


# ----------------------------------------------------------------------------- resume


def test_resume_after_stop_between_stages(full_run, tiny_base, tmp_path):
    data, base = tiny_base
    out = tmp_path / "out"
    result = compress(base, data, out, "--stop-after", "stage1")
    assert "--resume" in result.output
    assert (out / "stage1").is_dir() and not (out / "stage2").exists() and not (out / "report.json").exists()
    result = compress(base, data, out, "--resume")
    assert "already finished" in result.output
    for name in STAGES + ("final",):
        assert_same_weights(out / name, full_run / name)


def test_resume_after_kill_inside_distillation(full_run, tiny_base, tmp_path, monkeypatch):
    data, base = tiny_base
    out = tmp_path / "out"
    calls = {"n": 0}
    real_step = Trainer._train_step

    def dying_step(self, indices):
        calls["n"] += 1
        if calls["n"] == 6:  # stage 1 takes 3 steps; die at step 3 of stage 2 (its step-2 state is saved)
            raise KeyboardInterrupt
        return real_step(self, indices)

    monkeypatch.setattr(Trainer, "_train_step", dying_step)
    result = cli("compress", "--model", base, "--data", data, "--out", out, *FAST)
    assert result.exit_code == 130 and "--resume" in result.output
    assert (out / "stage1").is_dir() and not (out / "stage2").exists()
    assert checkpoints.read_state(out / ".state/stage2/train")["step"] == 2
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    compress(base, data, out, "--resume")
    for name in STAGES + ("final",):
        assert_same_weights(out / name, full_run / name)
    report = json.loads((out / "report.json").read_text())
    assert report["stages"][1]["distill"]["steps"] == 3


def test_resume_with_other_options_refused(full_run, tiny_base):
    data, base = tiny_base
    result = cli("compress", "--model", base, "--data", data, "--out", full_run, *FAST, "--lambda", "0.5", "--resume")
    assert result.exit_code != 0 and "different settings" in result.output and "--lam" in result.output


def test_run_from_before_a_new_option_resumes(full_run, tiny_base, tmp_path):
    """A run whose saved settings lack options added later still resumes while they are at their defaults."""
    data, base = tiny_base
    out = tmp_path / "out"
    shutil.copytree(full_run, out)
    saved = out / ".state" / "run.json"
    info = json.loads(saved.read_text())
    for added in ("stage_steps", "hidden_distill"):  # defaults None and 0.0
        del info["options"][added]
    saved.write_text(json.dumps(info))
    compress(base, data, out, "--resume")
    saved.write_text(json.dumps(info))
    result = cli("compress", "--model", base, "--data", data, "--out", out, *FAST, "--resume",
                 "--hidden-distill", "0.5")
    assert result.exit_code != 0 and "different settings (--hidden-distill)" in result.output, result.output


def test_stage_steps_set_each_distillation(tiny_base, tmp_path):
    data, base = tiny_base
    out = tmp_path / "out"
    compress(base, data, out, "--stage-steps", "2,1,4", "--eval-users", "0")
    report = json.loads((out / "report.json").read_text())
    assert [s["distill"]["steps"] for s in report["stages"]] == [2, 1, 4]
    assert "2/1/4 steps after stages I/II/III" in (out / "report.md").read_text()
    compress(base, data, out, "--stage-steps", "2,1,4", "--eval-users", "0", "--resume")  # same settings


def test_hidden_distill_runs_through_every_stage(tiny_base, tmp_path):
    data, base = tiny_base
    out = tmp_path / "out"
    compress(base, data, out, "--hidden-distill", "0.5", "--stage-steps", "1,1,2", "--eval-users", "0")
    report = json.loads((out / "report.json").read_text())
    assert [s["distill"]["settings"]["hidden_weight"] for s in report["stages"]] == [0.5] * 3
    assert "hidden-state term x0.5" in (out / "report.md").read_text()
    result = cli("compress", "--model", base, "--data", data, "--out", tmp_path / "bad", *FAST,
                 "--hidden-distill", "-1")
    assert result.exit_code != 0 and "--hidden-distill must be >= 0" in result.output, result.output


def test_teacher_cache_changes_nothing_but_the_work(full_run, tiny_base, tmp_path):
    data, base = tiny_base
    cache = tmp_path / "teacher"
    compress(base, data, tmp_path / "a", "--teacher-cache", cache)
    for name in STAGES:  # the same weights as without the cache, bit for bit
        assert_same_weights(full_run / name, tmp_path / "a" / name)
    first = json.loads((tmp_path / "a" / "report.json").read_text())["stages"]
    # stage I's distillation fills the cache; the later ones walk the same examples in the same order
    assert first[0]["distill"]["teacher_cache"]["misses"] > 0
    assert all(s["distill"]["teacher_cache"]["misses"] == 0 for s in first[1:])
    assert "stage2 100%, stage3 100%" in (tmp_path / "a" / "report.md").read_text()
    compress(base, data, tmp_path / "b", "--teacher-cache", cache, "--method", "random")
    second = json.loads((tmp_path / "b" / "report.json").read_text())["stages"]
    assert all(s["distill"]["teacher_cache"]["misses"] == 0 for s in second)  # another compression, same base
    result = cli("compress", "--model", base, "--data", data, "--out", tmp_path / "c", *FAST,
                 "--teacher-cache", cache, "--hidden-distill", "1")
    assert result.exit_code != 0 and "use one or the other" in result.output, result.output


def test_bf16_distillation_shares_the_fp32_cache(tiny_base, tmp_path):
    data, base = tiny_base
    cache, steps = tmp_path / "teacher", ("--stage-steps", "2,1,2", "--eval-users", "0")
    compress(base, data, tmp_path / "bf16", "--precision", "bf16", "--teacher-cache", cache, *steps)
    stages = json.loads((tmp_path / "bf16" / "report.json").read_text())["stages"]
    assert [s["distill"]["config"]["precision"] for s in stages] == ["bf16"] * 3
    compress(base, data, tmp_path / "fp32", "--teacher-cache", cache, *steps)
    stages = json.loads((tmp_path / "fp32" / "report.json").read_text())["stages"]
    assert all(s["distill"]["teacher_cache"]["misses"] == 0 for s in stages)  # the bf16 run's fill serves fp32
    bf16, fp32 = weights(tmp_path / "bf16" / "final"), weights(tmp_path / "fp32" / "final")
    assert any(not torch.equal(bf16[k], fp32[k]) for k in fp32)  # the steps themselves ran in bf16
    result = cli("compress", "--model", base, "--data", data, "--out", tmp_path / "bf16", *FAST, *steps,
                 "--teacher-cache", cache, "--resume")
    assert result.exit_code != 0 and "different settings (--precision)" in result.output, result.output


@pytest.mark.parametrize("value, extra, message", [
    ("1,2", (), "three step counts"),
    ("a,b,c", (), "three step counts"),
    ("0,1,1", (), "three step counts >= 1"),
    ("1,1,1", ("--no-distill",), "cannot be combined with --no-distill"),
])
def test_bad_stage_steps_refused(tiny_base, tmp_path, value, extra, message):
    data, base = tiny_base
    result = cli("compress", "--model", base, "--data", data, "--out", tmp_path / "out", *FAST,
                 "--stage-steps", value, *extra)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- methods and ablations


@pytest.mark.parametrize("extra", [
    ("--method", "random"),
    ("--method", "magnitude"),
    ("--method", "wanda-sp"),
    ("--layer-method", "shortgpt"),
    ("--no-distill",),
    ("--one-shot",),
])
def test_methods_and_ablations_reach_the_same_shapes(extra, tiny_base, full_run, tmp_path):
    data, base = tiny_base
    out = tmp_path / "out"
    compress(base, data, out, *extra)
    report = json.loads((out / "report.json").read_text())
    reference = json.loads((full_run / "report.json").read_text())
    assert report["final"]["shape"] == reference["final"]["shape"]
    assert report["final"]["parameters"] == reference["final"]["parameters"]
    distilled = [s["distilled"] for s in report["stages"]]
    if "--no-distill" in extra:
        assert distilled == [False] * 3
        assert all(s["distill"] is None for s in report["stages"])
    elif "--one-shot" in extra:
        assert distilled == [False, False, True]
        assert report["stages"][2]["distill"]["steps"] == 3
    else:
        assert distilled == [True] * 3
        # the same distillation budget as the PruneRec run
        assert [s["distill"]["steps"] for s in report["stages"]] == [3, 3, 3]
    method = extra[1] if extra[0] == "--method" else "prunerec"
    assert report["stages"][0]["method"] == method
    layer_method = {"random": "random", "magnitude": "shortgpt", "wanda-sp": "shortgpt"}.get(method, "greedy-ppl")
    if "--layer-method" in extra:
        layer_method = "shortgpt"
    assert report["stages"][2]["layer_method"] == layer_method
    AutoModelForCausalLM.from_pretrained(out / "final")


def test_gqa_base_keeps_whole_kv_groups(gqa_base, tiny_base, tmp_path):
    data, _ = tiny_base
    out = tmp_path / "out"
    compress(gqa_base, data, out, "--eval-users", "0", "--stability")
    report = json.loads((out / "report.json").read_text())
    kept = report["stages"][0]["pruning"]["kept"]
    for q, kv in zip(kept["q_heads"], kept["kv_heads"]):
        assert len(q) == 2 and len(kv) == 1 and {h // 2 for h in q} == set(kv)
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    c = model.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (
        2, 1, 32, 32, 1)
    md = (out / "report.md").read_text()
    assert report["stages"][0]["eval"] is None and "not measured" in md
    assert set(kept["stability"]) == {"heads", "hidden"} and "calibration stability" in md


# ----------------------------------------------------------------------------- refusals


def _refused(args, message, out):
    result = cli("compress", *args, "--out", out, *FAST)
    assert result.exit_code not in (0, None), result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (AssertionError, TypeError))
    assert not out.exists(), "work started before the input was checked"


def test_impossible_targets_refused_up_front(tiny_base, gqa_base, tmp_path):
    data, base = tiny_base
    out = tmp_path / "out"
    common = ["--model", base, "--data", data]
    _refused(common + ["--heads", "3"], "only 2 query heads", out)
    _refused(common + ["--kv-heads", "2"], "only 1 KV heads", out)
    _refused(common + ["--layers", "0"], "at least 1", out)
    _refused(common + ["--hidden", "0"], "at least 1", out)
    _refused(common + ["--mlp", "1.5"], "ratio must lie in", out)
    _refused(["--model", gqa_base, "--data", data, "--heads", "3"], "cannot be spread evenly", out)
    _refused(["--model", gqa_base, "--data", data, "--heads", "1", "--kv-heads", "2"], "not divisible", out)
    _refused(common + ["--one-shot", "--no-distill"], "--one-shot", out)
    _refused(common + ["--epochs", "0"], "0 is not in the range x>=1", out)


def test_bad_or_missing_base_refused_up_front(tiny_base, tmp_path):
    data, base = tiny_base
    out = tmp_path / "out"
    _refused(["--model", tmp_path / "nope", "--data", data], "model folder not found", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(["--model", empty, "--data", data], "no config.json", out)
    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    (broken / "config.json").write_text("{not json")
    _refused(["--model", broken, "--data", data], "config.json: not JSON (line 1, column 2", out)
    no_catalog = tmp_path / "no_catalog"
    shutil.copytree(base, no_catalog)
    (no_catalog / "catalog.jsonl").unlink()
    _refused(["--model", no_catalog, "--data", data], "catalog.jsonl", out)
    _refused(["--model", base, "--data", tmp_path / "no_data"], "data folder not found", out)


def test_dry_run_prints_the_plan(tiny_base, tmp_path):
    data, base = tiny_base
    out = tmp_path / "out"
    result = cli("compress", "--model", base, "--data", data, "--out", out, "--dry-run", "--layers", "2")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output[result.output.index("{"):result.output.rindex("}") + 1])
    assert plan["targets"]["layers"] == 2 and plan["target_shape"]["hidden"] == 64
    assert not out.exists()


# ----------------------------------------------------------------------------- analyze


def test_analyze_long_tail(tiny_base, tmp_path):
    data, base = tiny_base
    png = tmp_path / "tail.png"
    result = cli("analyze", "--model", base, "--data", data, "--out", png, "--samples", "8", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    numbers = json.loads(png.with_suffix(".json").read_text())
    assert numbers["percents"] == [1, 5, 10, 20, 50] and len(numbers["share"]) == 4
    for row in numbers["share"]:
        assert all(0 < a <= b <= 1 for a, b in zip(row, row[1:]))
    bad = cli("analyze", "--model", tmp_path / "nope", "--data", data, "--out", png)
    assert bad.exit_code != 0 and "model folder not found" in bad.output
