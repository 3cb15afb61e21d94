"""Choosing the objective from the data's fields, and mapping labels to ids."""

from __future__ import annotations

import pytest

from adaptlang.errors import DataError, UsageError
from adaptlang.training.data import read_data
from adaptlang.training.objective import CAUSAL_LM, CLASSIFICATION, SEQ2SEQ, Fields, choose_objective, label_set
from tests.training.support import write_jsonl


def data(tmp_path, rows, name="d.jsonl"):
    return read_data(write_jsonl(tmp_path / name, rows))


@pytest.mark.parametrize("row, name, fields", [
    ({"text": "a", "label": 1}, CLASSIFICATION, {"text": "text", "label": "label"}),
    ({"prompt": "a", "completion": "b"}, CAUSAL_LM, {"prompt": "prompt", "completion": "completion"}),
    ({"source": "a", "target": "b"}, SEQ2SEQ, {"source": "source", "target": "target"}),
    ({"text": "a"}, CAUSAL_LM, {"text": "text"}),
    ({"text": "a", "prompt": "p", "completion": "c"}, CAUSAL_LM, {"prompt": "prompt", "completion": "completion"}),
])
def test_the_objective_follows_the_fields(tmp_path, row, name, fields):
    objective = choose_objective(data(tmp_path, [row]), Fields())
    assert (objective.name, objective.fields) == (name, fields)
    assert objective.completion_only == ("completion" in fields)


def test_renamed_fields_and_the_objective_flag(tmp_path):
    d = data(tmp_path, [{"sentence": "a", "y": "pos"}])
    assert choose_objective(d, Fields(text="sentence", label="y")).fields == {"text": "sentence", "label": "y"}
    # --objective causal-lm on data with a label field: the label is ignored, the text is the sequence.
    assert choose_objective(d, Fields(text="sentence"), "causal-lm").fields == {"text": "sentence"}
    with pytest.raises(UsageError, match="unknown objective 'clasification'") as err:
        choose_objective(d, Fields(), "clasification")
    assert err.value.diagnostics[0].hint == "did you mean 'classification'?"


def test_data_no_objective_reads_is_refused_with_its_fields(tmp_path):
    with pytest.raises(DataError, match="has none of the fields an objective reads") as err:
        choose_objective(data(tmp_path, [{"question": "a", "answer": "b"}]), Fields())
    assert err.value.diagnostics[0].notes == ("fields: question, answer",)


def test_labels_map_to_sorted_ids(tmp_path):
    text = data(tmp_path, [{"label": "pos"}, {"label": "neg"}, {"label": "neutral"}, {"label": "neg"}])
    labels = label_set([(text, text.dataset)], "label")
    assert labels.names == ("neg", "neutral", "pos")
    assert labels.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    assert labels.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    numbers = data(tmp_path, [{"label": 10}, {"label": 2}, {"label": 1}], "n.jsonl")
    assert label_set([(numbers, numbers.dataset)], "label").names == (1, 2, 10)  # numerically, not "10" < "2"


def test_mixed_label_types_name_the_row(tmp_path):
    mixed = data(tmp_path, [{"label": 1}, {"label": 0}, {"label": "pos"}])
    with pytest.raises(DataError) as err:
        label_set([(mixed, mixed.dataset)], "label")
    assert err.value.diagnostics[0].message == (
        f"row 3 of {mixed.path}: label 'pos' is text, but row 1 of {mixed.path} has integer label 1")


def test_labels_that_are_neither_text_nor_integers_are_refused(tmp_path):
    floats = data(tmp_path, [{"label": 0.5}])
    with pytest.raises(DataError, match=r"row 1 of .*: label 0.5 is a float, not text or an integer"):
        label_set([(floats, floats.dataset)], "label")


def test_eval_labels_must_occur_in_training(tmp_path):
    train = data(tmp_path, [{"label": "pos"}, {"label": "neg"}])
    held = data(tmp_path, [{"label": "neg"}, {"label": "meh"}], "e.jsonl")
    with pytest.raises(DataError, match=r"row 2 of .*e\.jsonl: label 'meh' does not occur in the training data"):
        label_set([(train, train.dataset), (held, held.dataset)], "label")


def test_num_labels(tmp_path):
    ints = data(tmp_path, [{"label": 0}, {"label": 2}])
    # Integer labels are class ids: --num-labels 4 keeps ids 0..3 (classes 1 and 3 absent from the data).
    assert label_set([(ints, ints.dataset)], "label", num_labels=4).names == (0, 1, 2, 3)
    with pytest.raises(DataError, match=r"label 2 .* is outside 0 \.\. 1 \(--num-labels 2\)"):
        label_set([(ints, ints.dataset)], "label", num_labels=2)
    text = data(tmp_path, [{"label": "a"}, {"label": "b"}], "t.jsonl")
    assert label_set([(text, text.dataset)], "label", num_labels=2).names == ("a", "b")
    with pytest.raises(UsageError, match="--num-labels 3 but the training data has 2 text labels"):
        label_set([(text, text.dataset)], "label", num_labels=3)


def test_a_single_class_is_refused(tmp_path):
    # One class would build a one-output head, which transformers trains as regression (MSE on the class id 0):
    # the run "succeeds" with a near-zero loss and every prediction is that class with probability 1.
    one = data(tmp_path, [{"label": "pos"}, {"label": "pos"}])
    with pytest.raises(DataError, match=r"1 class \('pos'\): classification needs at least 2") as err:
        label_set([(one, one.dataset)], "label")
    assert err.value.diagnostics[0].obj == str(one.path)
    ints = data(tmp_path, [{"label": 0}, {"label": 0}], "i.jsonl")
    with pytest.raises(UsageError, match="--num-labels must be at least 2, not 1"):
        label_set([(ints, ints.dataset)], "label", num_labels=1)
    # --num-labels 2 with integer ids names the absent class: two outputs, a real classifier.
    assert label_set([(ints, ints.dataset)], "label", num_labels=2).names == (0, 1)
