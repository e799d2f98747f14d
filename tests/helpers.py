"""Builders for tiny models and tokenizers used across tests."""
from contextlib import contextmanager

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from prunerec.model.tokenizer import train_tokenizer

TITLES = ["Halo", "Halo 2", "Halo 2: Anniversary - Xbox One", "Mario Kart 8 - Nintendo Switch",
          "Super Mario Odyssey", "Zelda", "Wireless Controller for Xbox One", "Forza Horizon 4",
          "Gears of War 4", "Minecraft - PC", "The Sims 4", "Portal 2"]


def tiny_tokenizer(titles=TITLES, vocab_size=400):
    corpus = [f'"{t}"\n' for t in titles] * 3 + ["### Instruction: recommend the next games item.\n### Input: "] * 5
    return train_tokenizer(corpus, vocab_size)


def tiny_model(vocab_size, eos_id, seed=0, **overrides):
    torch.manual_seed(seed)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, max_position_embeddings=256)
    shape.update(overrides)
    config = Qwen2Config(vocab_size=vocab_size, eos_token_id=eos_id, pad_token_id=eos_id, bos_token_id=eos_id,
                         tie_word_embeddings=True, **shape)
    return Qwen2ForCausalLM(config).eval()


@contextmanager
def one_thread():
    """For many tiny runs: one torch thread avoids contention on busy 2-core machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def scale_biggest_initializer(folder, factor: float) -> None:
    """Multiply the largest float initializer of folder/model.onnx (external data) by factor."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    path = folder / "model.onnx"
    graph = onnx.load(str(path))
    biggest = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.data_type == 1 else 0)
    biggest.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(biggest) * factor).astype(np.float32),
                                             biggest.name))
    (folder / "model.onnx.data").unlink()
    onnx.save_model(graph, str(path), save_as_external_data=True, location="model.onnx.data")


# --------------------------------------------------------------------------- odd real-world catalogs

# Titles as found in real Amazon catalogs: HTML entities escaped twice (`&amp;#8482` for `&#8482`, the
# trade mark sign). Cleaning must be a fixed point, or the catalog a model saves differs from the
# data's catalog read back.
ENTITY_TITLES = ("XIUstyle&amp;#8482 Wireless Mouse", "Tom &amp;amp; Jerry&amp;#174; Chase",
                 "Caf&amp;eacute; Tycoon &amp;quot;Deluxe&amp;quot;", "Rock&amp;amp;Roll Racing&amp;nbsp; 2")


def entity_data(out, n_items=300, n_users=200, seed=0):
    """A prepared data folder (the demo data set) whose items.jsonl holds ENTITY_TITLES, raw, as
    the first items' titles (each made unique with the original title)."""
    import json
    from pathlib import Path

    from prunerec.data.demo import write_demo

    out = Path(out)
    write_demo(out, seed=seed, n_items=n_items, n_users=n_users)
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    for row, odd in zip(rows, ENTITY_TITLES):
        row["title"] = f"{odd} {row['title']}"
    (out / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def raw_amazon_from(data_dir, out, start=1514764800):
    """Raw Amazon 2018 files (reviews.json.gz, meta.json.gz) that `prepare_amazon` turns back into
    about the samples of the prepared folder `data_dir`; titles are written as they stand (raw)."""
    import gzip
    import json
    from pathlib import Path

    data_dir, out = Path(data_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = [json.loads(line) for line in (data_dir / "items.jsonl").read_text().splitlines()]
    meta = [{"asin": f"B{row['item_id']:06d}", "title": row["title"]} for row in items]
    last = {}  # user -> their full sequence, from the longest history seen
    for split in ("train", "valid", "test"):
        for line in (data_dir / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            sequence = row["history"] + [row["target"]]
            if len(sequence) > len(last.get(row["user"], [])):
                last[row["user"]] = sequence
    reviews = [{"reviewerID": f"U{user}", "asin": f"B{item:06d}", "unixReviewTime": start + 3600 * (i * 50 + user % 50)}
               for user, sequence in sorted(last.items()) for i, item in enumerate(sequence)]
    for name, rows in (("reviews.json.gz", reviews), ("meta.json.gz", meta)):
        (out / name).write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return out / "reviews.json.gz", out / "meta.json.gz"
