"""Tokenized rows and collated batches per objective, checked token by token; length limits.

The word-level tokenizer of ``support.py`` maps word ``w`` to ``4 + WORDS.index(w)`` (ids 0-3 are
``[PAD] [UNK] <s> </s>``), so every expected batch below is written out from that definition.
"""

from __future__ import annotations

import pytest
import torch

from adaptlang.errors import DataError, UsageError
from adaptlang.training.data import read_data
from adaptlang.training.encode import IGNORE, collator, encode
from adaptlang.training.objective import Fields, Labels, choose_objective
from tests.training.support import WORDS, word_tokenizer, write_jsonl

PAD, EOS = 0, 3


def ids(text: str) -> list[int]:
    return [4 + WORDS.index(w) for w in text.split()]


def encoded(tmp_path, rows, tokenizer=None, **options):
    data = read_data(write_jsonl(tmp_path / "d.jsonl", rows))
    objective = choose_objective(data, Fields())
    tokenizer = tokenizer or word_tokenizer()
    return encode(data, data.dataset, objective, tokenizer, **options), objective, tokenizer


def batch(result, objective, tokenizer):
    rows = [result.dataset[i] for i in range(len(result.dataset))]
    return collator(objective, tokenizer)(rows)


def test_prompt_completion_puts_minus_100_on_prompt_and_padding_tokens(tmp_path):
    rows = [{"prompt": "question one two", "completion": "answer three"},
            {"prompt": "question four", "completion": "answer five six seven"}]
    result, objective, tok = encoded(tmp_path, rows)
    got = batch(result, objective, tok)
    first = ids("question one two answer three") + [EOS]
    second = ids("question four answer five six seven") + [EOS]
    assert got["input_ids"].tolist() == [first + [PAD], second]
    assert got["attention_mask"].tolist() == [[1] * 6 + [0], [1] * 7]
    assert got["labels"].tolist() == [[IGNORE] * 3 + ids("answer three") + [EOS, IGNORE],
                                      [IGNORE] * 2 + ids("answer five six seven") + [EOS]]


def test_causal_text_learns_every_token_and_the_end(tmp_path):
    result, objective, tok = encoded(tmp_path, [{"text": "the cat sat"}, {"text": "a dog"}])
    got = batch(result, objective, tok)
    assert got["input_ids"].tolist() == [ids("the cat sat") + [EOS], ids("a dog") + [EOS, PAD]]
    assert got["labels"].tolist() == [ids("the cat sat") + [EOS], ids("a dog") + [EOS, IGNORE]]


def test_classification_pads_per_batch_and_carries_label_ids(tmp_path):
    rows = [{"text": "good day", "label": "pos"}, {"text": "bad", "label": "neg"}]
    labels = Labels(("neg", "pos"))
    result, objective, tok = encoded(tmp_path, rows, labels=labels)
    got = batch(result, objective, tok)
    assert got["input_ids"].tolist() == [ids("good day"), ids("bad") + [PAD]]  # the batch's longest, not max_length
    assert got["labels"].tolist() == [1, 0]
    assert got["labels"].dtype == torch.long


def test_seq2seq_labels_are_the_target_padded_with_minus_100(tmp_path):
    rows = [{"source": "translate the cat", "target": "the dog"}, {"source": "translate red", "target": "big red car"}]
    result, objective, tok = encoded(tmp_path, rows, tokenizer=word_tokenizer(eos_after=True))
    got = batch(result, objective, tok)
    assert got["input_ids"].tolist() == [ids("translate the cat") + [EOS], ids("translate red") + [EOS, PAD]]
    assert got["labels"].tolist() == [ids("the dog") + [EOS, IGNORE], ids("big red car") + [EOS]]


def test_a_row_longer_than_the_model_is_refused_naming_the_row_and_lengths(tmp_path):
    rows = [{"text": "the cat"}, {"text": "one two three four five six"}]
    with pytest.raises(DataError) as err:
        encoded(tmp_path, rows, limit=5, limit_note="tiny has 5 positions")
    diag = err.value.diagnostics[0]
    assert diag.message.endswith("d.jsonl is 7 tokens long; the model takes at most 5")  # 6 words + </s>
    assert diag.message.startswith("row 2 of ")
    assert diag.hint == "pass --max-length 5 (or less) to truncate long rows"
    assert diag.notes == ("tiny has 5 positions",)


def test_max_length_truncates_and_counts(tmp_path):
    rows = [{"text": "the cat"}, {"text": "one two three four five six"}]
    result, _, _ = encoded(tmp_path, rows, max_length=4, limit=5)
    assert result.truncated == 1 and result.longest == 7
    assert result.dataset[1]["input_ids"] == ids("one two three four")
    with pytest.raises(UsageError, match=r"--max-length 6 is more than the model takes \(5 tokens\)"):
        encoded(tmp_path, rows, max_length=6, limit=5)


def test_truncation_keeps_the_tokenizers_closing_token(tmp_path):
    rows = [{"text": "the cat sat on the mat", "label": 1}]
    result, _, _ = encoded(tmp_path, rows, tokenizer=word_tokenizer(eos_after=True), labels=Labels((0, 1)),
                           max_length=3)
    assert result.dataset[0]["input_ids"] == ids("the cat") + [EOS]


def test_a_prompt_filling_max_length_is_refused(tmp_path):
    rows = [{"prompt": "one two three four", "completion": "five"}]
    with pytest.raises(DataError, match="row 1 of .*: the prompt fills all 3 tokens of --max-length"):
        encoded(tmp_path, rows, max_length=3)
