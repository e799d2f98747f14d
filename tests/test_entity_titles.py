"""A catalog whose titles hold double-escaped HTML entities (as real Amazon catalogs do) goes
through prepare, train, evaluate, compress, export and serve: the catalog saved beside a model
equals the data's catalog read back, at every step, and the server takes the cleaned title."""
import json

import pytest
from click.testing import CliRunner

from prunerec.cli import main
from prunerec.data.catalog import clean_title, load_catalog, load_dataset
from tests.helpers import ENTITY_TITLES, entity_data, raw_amazon_from
from tests.serve.conftest import ready_server


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.mark.parametrize("raw", ENTITY_TITLES + ("a &amp;amp;amp;lt; b", "&#38;#38;#38;", "x&#x20;&#x20;y"))
def test_clean_title_is_a_fixed_point(raw):
    once = clean_title(raw)
    assert clean_title(once) == once


def test_prepare_cleans_double_escaped_titles_once_for_all(tmp_path):
    data = entity_data(tmp_path / "source")
    reviews, meta = raw_amazon_from(data, tmp_path / "raw")
    prepared = tmp_path / "prepared"
    cli("data", "prepare", "amazon", "--reviews", reviews, "--meta", meta, "--out", prepared, "--min-items", "1",
        "--core", "2")
    titles = load_catalog(prepared / "items.jsonl").titles
    written = [json.loads(line)["title"] for line in (prepared / "items.jsonl").read_text().splitlines()]
    assert list(titles) == written  # what prepare wrote is what every later load reads
    assert any("XIUstyle\u2122 Wireless Mouse" in t for t in titles)
    assert any("Caf\u00e9 Tycoon \"Deluxe\"" in t for t in titles)
    assert set(titles) <= set(load_dataset(data).catalog.titles)


def test_double_escaped_catalog_goes_through_train_evaluate_compress_export_serve(tmp_path):
    data = entity_data(tmp_path / "data")
    model, pruned, export = tmp_path / "model", tmp_path / "pruned", tmp_path / "export"
    cli("train", "--data", data, "--model", "tiny", "--out", model, "--max-steps", "4", "--eval-every", "2",
        "--batch-size", "8", "--train-limit", "64", "--valid-limit", "16", "--warmup", "1")
    saved = load_catalog(model / "catalog.jsonl").titles
    assert saved == load_dataset(data, splits=()).catalog.titles
    assert saved[0].startswith("XIUstyle\u2122 Wireless Mouse")
    cli("evaluate", "--model", model, "--data", data, "--limit", "4", "--beams", "4", "--grounding", "trie")
    cli("compress", "--model", model, "--data", data, "--out", pruned, "--max-steps", "2", "--eval-every", "2",
        "--batch-size", "8", "--train-limit", "32", "--valid-limit", "8", "--eval-users", "2", "--beams", "2",
        "--calib-samples", "8", "--calib-batch-size", "4", "--warmup", "1")
    assert load_catalog(pruned / "final" / "catalog.jsonl").titles == saved
    cli("export", "--model", pruned / "final", "--out", export, "--format", "hf", "--data", data, "--users", "2",
        "--beams", "2")
    assert load_catalog(export / "hf" / "catalog.jsonl").titles == saved
    server = ready_server(["--model", export / "hf", "--engine", "torch", "--beams", "4"], tmp_path / "serve.log",
                          timeout=120)
    try:
        answer = server.post({"history": [saved[0], 1], "k": 3})  # the cleaned title, as the catalog holds it
    finally:
        assert server.stop() == 0
    assert answer.status_code == 200, answer.text
    assert {item["title"] for item in answer.json()["items"]} <= set(saved)
