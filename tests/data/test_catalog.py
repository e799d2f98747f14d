import json

import pytest

from prunerec.data.catalog import Catalog, DataError, Sample, clean_title, load_dataset, write_dataset


def _write(folder, items, rows_by_split):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    for split in ("train", "valid", "test"):
        lines = rows_by_split.get(split, ['{"user": 0, "history": [0], "target": 1}'])
        (folder / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))


ITEMS = [{"item_id": 0, "title": "Halo"}, {"item_id": 1, "title": "Halo 2"}, {"item_id": 2, "title": "Tom &amp; Jerry"}]


def test_round_trip_and_title_cleaning(tmp_path):
    catalog = Catalog.from_titles(["A", "B", "B"])
    splits = {s: [Sample(1, (0, 1), 2)] for s in ("train", "valid", "test")}
    write_dataset(tmp_path, catalog, splits)
    data = load_dataset(tmp_path)
    assert data.catalog.titles == ("A", "B", "B")
    assert data.catalog.ids_by_title["B"] == (1, 2)
    assert data["test"] == [Sample(1, (0, 1), 2)]
    assert clean_title("Tom &amp; Jerry  \n 2") == "Tom & Jerry 2"


@pytest.mark.parametrize("line, message", [
    ('{"user": 0, "history": [0], "target": 1', "train.jsonl:2: malformed JSON"),
    ('{"user": 0, "history": [0, 7], "target": 1}', "train.jsonl:2: unknown item id 7 in 'history'"),
    ('{"user": 0, "history": [], "target": 1}', "train.jsonl:2: empty history"),
    ('{"user": 0, "history": [0], "target": 9}', "train.jsonl:2: unknown item id 9 in 'target'"),
    ('{"user": "x", "history": [0], "target": 1}', "train.jsonl:2: 'user' must be an integer"),
    ('[1, 2]', "train.jsonl:2: expected a JSON object"),
])
def test_bad_rows_are_reported_with_file_and_line(tmp_path, line, message):
    _write(tmp_path, ITEMS, {"train": ['{"user": 0, "history": [0], "target": 1}', line]})
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_dataset(tmp_path)


def test_duplicate_and_missing_item_ids(tmp_path):
    _write(tmp_path, ITEMS + [{"item_id": 1, "title": "again"}], {})
    with pytest.raises(DataError, match="items.jsonl:4: duplicate item_id 1"):
        load_dataset(tmp_path)
    _write(tmp_path, [ITEMS[0], {"item_id": 5, "title": "gap"}], {})
    with pytest.raises(DataError, match="item ids must be 0..1"):
        load_dataset(tmp_path)
    _write(tmp_path, [{"item_id": 0, "title": "  "}], {})
    with pytest.raises(DataError, match="items.jsonl:1: item 0 has no title"):
        load_dataset(tmp_path)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_dataset(tmp_path / "nope")
    _write(tmp_path, ITEMS, {})
    (tmp_path / "valid.jsonl").unlink()
    with pytest.raises(DataError, match="valid.jsonl: file not found"):
        load_dataset(tmp_path)
