from transformers import AutoTokenizer

from tests.helpers import TITLES, tiny_tokenizer


def test_round_trip_through_stock_loader_encodes_identically(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == "Qwen2Tokenizer"
    texts = TITLES + ["Price 19.99, edition 2019 (1234 units)", "Ünïcödé – 日本語 ☃", '"Halo 2"\n']
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert reloaded(text, add_special_tokens=False)["input_ids"] == ids
        assert reloaded.decode(ids) == text
    assert reloaded.eos_token == "<|endoftext|>" and reloaded.eos_token_id == tokenizer.eos_token_id
    assert reloaded.pad_token_id == reloaded.eos_token_id


def test_digits_are_split_one_per_token_like_qwen2():
    tokenizer = tiny_tokenizer()
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("2019", add_special_tokens=False)["input_ids"])
    assert tokens == ["2", "0", "1", "9"]
