"""Tokenisation and loss masking with the real bundled tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.data import Examples, build_examples, load_table
from finetune.demo import DEMO_FILENAME, demo_csv_bytes
from finetune.prep import IGNORE_INDEX, format_prompt, tokenize_examples


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert tok.eos_token_id is not None
    return tok


def pairs(prompts: list[str], completions: list[str]) -> Examples:
    return Examples(prompts=prompts, completions=completions, texts=None, dropped=0)


def texts(items: list[str]) -> Examples:
    return Examples(prompts=None, completions=None, texts=items, dropped=0)


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_completion_only_masks_exactly_the_prompt(tokenizer):
    prompt, completion = "What is 2 plus 3?", "2 plus 3 is 5."
    out = tokenize_examples(pairs([prompt], [completion]), tokenizer, max_length=256, completion_only=True)
    [ids], [labels] = out["input_ids"], out["labels"]
    p_ids, c_ids = ids_of(tokenizer, format_prompt(prompt)), ids_of(tokenizer, completion)
    eos = tokenizer.eos_token_id

    assert ids == p_ids + c_ids + [eos]
    assert len(labels) == len(ids)
    assert labels[: len(p_ids)] == [IGNORE_INDEX] * len(p_ids)  # every prompt token masked
    assert labels[len(p_ids):] == c_ids + [eos]  # every completion token (and eos) trained
    trained = [t for t in labels if t != IGNORE_INDEX]
    assert tokenizer.decode(trained, skip_special_tokens=True) == completion
    assert out["truncated"] == 0 and out["dropped_all_masked"] == 0


def test_full_text_mode_labels_everything(tokenizer):
    ex = pairs(["What colour is snow?", "Spell cat backwards."], ["Snow is white.", "cat backwards is tac."])
    out = tokenize_examples(ex, tokenizer, max_length=256, completion_only=False)
    assert len(out["input_ids"]) == 2
    for ids, labels in zip(out["input_ids"], out["labels"], strict=True):
        assert labels == ids
        assert IGNORE_INDEX not in labels
    masked = tokenize_examples(ex, tokenizer, max_length=256, completion_only=True)
    assert masked["input_ids"] == out["input_ids"]  # masking changes labels only


def test_plain_text_is_trained_whole_and_ends_with_eos(tokenizer):
    out = tokenize_examples(texts(["The quick brown fox.", "A model learns."]), tokenizer, max_length=256)
    for text, ids, labels in zip(["The quick brown fox.", "A model learns."], out["input_ids"], out["labels"], strict=True):
        assert ids == ids_of(tokenizer, text) + [tokenizer.eos_token_id]
        assert labels == ids


def test_truncation_is_counted_and_applied(tokenizer):
    long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)
    out = tokenize_examples(texts([long_text, "short one"]), tokenizer, max_length=16)
    assert out["truncated"] == 1
    assert len(out["input_ids"][0]) == 16 and len(out["labels"][0]) == 16
    assert out["input_ids"][0] == ids_of(tokenizer, long_text)[:16]
    assert len(out["input_ids"][1]) < 16


def test_examples_whose_labels_are_all_masked_are_dropped(tokenizer):
    long_prompt = "What is " + " plus ".join(str(i) for i in range(60)) + "?"
    assert len(ids_of(tokenizer, format_prompt(long_prompt))) > 32
    ex = pairs([long_prompt, "What is 1 plus 1?"], ["A lot.", "1 plus 1 is 2."])
    out = tokenize_examples(ex, tokenizer, max_length=32, completion_only=True)
    assert out["dropped_all_masked"] == 1
    assert out["truncated"] == 1
    assert len(out["input_ids"]) == len(out["labels"]) == 1
    assert out["input_ids"][0][: len(ids_of(tokenizer, "What is 1 plus 1?"))] == ids_of(tokenizer, "What is 1 plus 1?")
    assert any(t != IGNORE_INDEX for t in out["labels"][0])

    # Without masking the same long example keeps trainable tokens, so nothing is dropped.
    full = tokenize_examples(ex, tokenizer, max_length=32, completion_only=False)
    assert full["dropped_all_masked"] == 0 and len(full["input_ids"]) == 2


def test_demo_dataset_tokenises_without_loss(tokenizer, tmp_path: Path):
    path = tmp_path / DEMO_FILENAME
    path.write_bytes(demo_csv_bytes())
    examples = build_examples(load_table(path))
    out = tokenize_examples(examples, tokenizer, max_length=256)
    assert len(out["input_ids"]) == len(examples.prompts or []) > 100
    assert out["truncated"] == 0 and out["dropped_all_masked"] == 0
    unk = tokenizer.unk_token_id
    assert all(unk not in ids for ids in out["input_ids"])  # the tokenizer covers the demo text
