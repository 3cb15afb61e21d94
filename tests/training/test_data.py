"""Reading data files: the three formats, row numbers, and every refusal with its message."""

from __future__ import annotations

import hashlib

import pytest

from adaptlang.errors import DataError, UsageError
from adaptlang.training.data import ROW, check_text, drop_empty, file_sha256, read_data, require_fields, split_eval
from tests.training.support import write_jsonl

ROWS = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}, {"text": "fine", "label": "pos"}]


def test_jsonl_csv_and_parquet_read_the_same_rows_numbered_from_one(tmp_path):
    import pandas as pd

    jsonl = write_jsonl(tmp_path / "d.jsonl", ROWS)
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\ngood,pos\nbad,neg\nfine,pos\n", encoding="utf-8")
    parquet = tmp_path / "d.parquet"
    pd.DataFrame(ROWS).to_parquet(parquet)
    for path in (jsonl, csv, parquet):
        data = read_data(path)
        assert data.fields == ["text", "label"]
        assert data.rows == 3
        assert data.dataset[ROW] == [1, 2, 3]
        assert data.dataset["text"] == ["good", "bad", "fine"]
        assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(jsonl) == hashlib.sha256(jsonl.read_bytes()).hexdigest()


def test_missing_file_and_unsupported_suffix_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match=r"no such data file: .*nope\.jsonl"):
        read_data(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("good\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"unsupported data file type '\.txt'") as err:
        read_data(tmp_path / "d.txt")
    assert ".jsonl" in err.value.diagnostics[0].hint and ".parquet" in err.value.diagnostics[0].hint


@pytest.mark.parametrize("name, text", [("e.jsonl", ""), ("w.jsonl", "\n  \n"), ("h.csv", "text,label\n")])
def test_empty_files_are_data_errors(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match="is empty|holds no rows") as err:
        read_data(path)
    assert err.value.exit_code == 1 and str(path) in str(err.value)


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "good"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"cannot read .*bad\.jsonl as JSON Lines"):
        read_data(path)


def test_a_missing_field_names_the_field_the_file_and_the_fields_it_has(tmp_path):
    data = read_data(write_jsonl(tmp_path / "d.jsonl", ROWS))
    with pytest.raises(DataError) as err:
        require_fields(data, {"text": "sentence", "label": "label"})
    diag = err.value.diagnostics[0]
    assert diag.message == f"{data.path} has no field 'sentence' (the text field)"
    assert diag.notes == ("fields: text, label",)
    assert "--text-field" in diag.hint
    with pytest.raises(DataError) as err:
        require_fields(data, {"label": "lable"})
    assert err.value.diagnostics[0].hint == "did you mean 'label'?"


def test_rows_with_an_empty_field_are_dropped_and_counted(tmp_path):
    rows = ROWS + [{"text": "  ", "label": "pos"}, {"text": None, "label": "neg"}, {"text": "ok"}]
    data = read_data(write_jsonl(tmp_path / "d.jsonl", rows))
    kept, dropped = drop_empty(data.dataset, ["text", "label"])
    assert dropped == 3 and kept[ROW] == [1, 2, 3]


def test_text_fields_must_hold_text_in_json_but_csv_numerals_become_text(tmp_path):
    data = read_data(write_jsonl(tmp_path / "d.jsonl", [{"text": "good"}, {"text": 7}]))
    with pytest.raises(DataError, match=r"row 2 of .*d\.jsonl: field 'text' holds int 7, not text"):
        check_text(data, data.dataset, "text")
    csv = tmp_path / "n.csv"
    csv.write_text("text,label\n1,a\n22,b\n", encoding="utf-8")
    data = read_data(csv)
    assert check_text(data, data.dataset, "text")["text"] == ["1", "22"]


def test_eval_split_is_seeded_and_checked(tmp_path):
    data = read_data(write_jsonl(tmp_path / "d.jsonl", [{"text": f"w{i}"} for i in range(20)]))
    train, held = split_eval(data.dataset, 0.25, seed=3)
    again = split_eval(data.dataset, 0.25, seed=3)
    other = split_eval(data.dataset, 0.25, seed=4)
    assert len(held) == 5 and len(train) == 15
    assert sorted(list(train[ROW]) + list(held[ROW])) == list(range(1, 21))
    assert list(held[ROW]) == list(again[1][ROW]) and list(held[ROW]) != list(other[1][ROW])
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(UsageError, match="between 0 and 1"):
            split_eval(data.dataset, bad, seed=0)
    with pytest.raises(UsageError, match="leaves no evaluation rows"):
        split_eval(data.dataset, 0.01, seed=0)
