"""Train the tiny preset briefly on demo data through the CLI and beat popularity."""
import json

from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from prunerec.cli import main


def test_tiny_preset_learns_demo_data_and_beats_popularity(tmp_path):
    runner = CliRunner()
    data, model, report = tmp_path / "data", tmp_path / "model", tmp_path / "eval.json"
    result = runner.invoke(main, ["data", "demo", "--out", str(data), "--items", "1200", "--users", "1600"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["train", "--data", str(data), "--model", "tiny", "--out", str(model),
                                  "--max-steps", "240", "--eval-every", "120", "--valid-limit", "100",
                                  "--epochs", "10"])
    assert result.exit_code == 0, result.output
    for name in ("config.json", "model.safetensors", "tokenizer.json", "catalog.jsonl", "prunerec.json",
                 "training.json", "training.png"):
        assert (model / name).is_file(), name
    assert AutoModelForCausalLM.from_pretrained(model).config.model_type == "qwen2"
    result = runner.invoke(main, ["evaluate", "--model", str(model), "--data", str(data), "--limit", "150",
                                  "--grounding", "both", "--out", str(report)])
    assert result.exit_code == 0, result.output
    assert "constrained beam" in result.output and "popularity" in result.output
    results = json.loads(report.read_text())["results"]
    trie, popularity = results["trie"]["metrics"], results["popularity"]["metrics"]
    assert trie["HR@10"] > popularity["HR@10"]
    assert trie["NDCG@10"] > popularity["NDCG@10"]
    over = results["trie"]["over_popularity"]["HR@10"]
    assert over["ratio"] == trie["HR@10"] / popularity["HR@10"]
    assert over["ci95"][0] <= over["ratio"] <= over["ci95"][1]
    assert f"constrained beam / popularity: HR@10 {over['ratio']:.2f}x" in result.output
    assert 0.0 <= json.loads(report.read_text())["out_of_catalog_rate"] <= 1.0
    assert (tmp_path / "eval.md").is_file()
