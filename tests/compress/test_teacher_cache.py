"""The teacher cache: the teacher's logits from cached hidden states equal a full forward's, nothing
is computed twice, and what a killed append leaves behind is never read (seconds)."""

import torch

from prunerec.compress.distill import DistillSettings, make_loss_fn
from prunerec.compress.teacher_cache import DATA, INDEX, TeacherCache, example_keys, teacher_logits
from prunerec.model.batching import collate, response_logits
from tests.compress.test_distill_stages import examples, tiny


class CountingForward:
    """Counts the rows that go through the teacher's decoder."""

    def __init__(self, model):
        self.rows, inner = 0, model.model.forward

        def forward(*args, **kwargs):
            self.rows += len(kwargs["input_ids"])
            return inner(*args, **kwargs)

        model.model.forward = forward


def test_cached_logits_equal_a_full_forward(tmp_path):
    teacher = tiny(0)
    counter = CountingForward(teacher)
    batch = collate(examples(6), pad_id=0)
    want = response_logits(teacher, batch)
    cache = TeacherCache(tmp_path, teacher.config.hidden_size)
    first = teacher_logits(teacher, batch, cache)
    assert torch.equal(first, want) and counter.rows == 12  # 6 for `want`, 6 to fill the cache
    again = teacher_logits(teacher, batch, TeacherCache(tmp_path, teacher.config.hidden_size))  # from disk
    assert torch.equal(again, want) and counter.rows == 12
    # a batch with cached and new rows: only the new rows go through the teacher
    mixed_examples = examples(6)[:3] + examples(9, seed=5)[:2]
    mixed = collate(mixed_examples, pad_id=0)
    got = teacher_logits(teacher, mixed, cache)
    assert counter.rows == 14
    assert torch.allclose(got, response_logits(teacher, mixed), atol=1e-5)  # other batch widths: rounding
    assert cache.hits == 3 and cache.misses == 8


def test_keys_name_the_tokens_and_the_predicted_positions():
    batch = collate(examples(4), pad_id=0)
    keys = example_keys(batch)
    assert len(set(keys)) == 4
    assert keys[:2] == example_keys(collate(examples(4)[:2], pad_id=0))  # padding does not count
    shifted = examples(4)[0]
    other = type(shifted)(shifted.input_ids, shifted.n_response + 1)  # same tokens, one more response token
    assert example_keys(collate([other], pad_id=0))[0] != keys[0]


def test_a_killed_append_is_never_read(tmp_path):
    teacher = tiny(0)
    batch = collate(examples(4), pad_id=0)
    cache = TeacherCache(tmp_path, teacher.config.hidden_size)
    want = teacher_logits(teacher, batch, cache)
    # killed while appending: half a row of data and a cut index line
    with open(tmp_path / DATA, "ab") as data:
        data.write(b"\1" * (2 * teacher.config.hidden_size))
    with open(tmp_path / INDEX, "a") as index:
        index.write("deadbeef\t99")
    reopened = TeacherCache(tmp_path, teacher.config.hidden_size)
    assert len(reopened.index) == 4
    assert torch.equal(teacher_logits(teacher, batch, reopened), want)
    # an index line whose rows never reached the disk is ignored
    with open(tmp_path / INDEX, "a") as index:
        index.write("\nfeedface\t100000\t3\n")
    assert "feedface" not in TeacherCache(tmp_path, teacher.config.hidden_size).index
    # appending after the debris keeps every entry readable
    more = collate(examples(9, seed=5)[:3], pad_id=0)
    appended = teacher_logits(teacher, more, reopened)
    final = TeacherCache(tmp_path, teacher.config.hidden_size)
    assert torch.equal(teacher_logits(teacher, more, final), appended)
    assert torch.equal(teacher_logits(teacher, batch, final), want)


def test_distillation_loss_is_the_same_with_the_cache(tmp_path):
    teacher, student = tiny(0), tiny(1)
    batch = collate(examples(6), pad_id=0)
    plain = make_loss_fn(teacher, DistillSettings())(student, batch)
    cache = TeacherCache(tmp_path, teacher.config.hidden_size)
    cached = make_loss_fn(teacher, DistillSettings(), cache=cache)
    assert torch.equal(cached(student, batch), plain)
    assert torch.equal(cached(student, batch), plain)  # second time from the cache
    assert cache.hits == 6


def test_a_bf16_run_fills_the_cache_in_fp32(tmp_path):
    """`compress --precision bf16` runs the loss under bf16 autocast; what it caches must be what an
    fp32 run caches, since both read the same folder. The LM head on top may run in bf16."""
    teacher = tiny(0)
    batch = collate(examples(6), pad_id=0)
    hidden = teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    want = hidden[batch["predict_rows"], batch["predict_cols"]]
    cache = TeacherCache(tmp_path, teacher.config.hidden_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = teacher_logits(teacher, batch, cache)
    assert logits.dtype == torch.bfloat16  # the head ran under autocast
    cached = torch.cat([cache.get(key) for key in example_keys(batch)])
    assert torch.equal(cached, want.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # without the fp32 fill they differ by bf16 rounding
        rounded = teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert not torch.equal(rounded[batch["predict_rows"], batch["predict_cols"]].float(), want)
