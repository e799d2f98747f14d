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
