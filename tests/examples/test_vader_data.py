"""``examples/vader_data.py``: the VADER words task (counts, labels, a fixed split, stable bytes).

The pinned counts were checked by hand on the shipped lexicon with shell tools,
independently of the builder::

    tr -d '\\r' < vader_lexicon.txt | awk -F'\\t' '$1 ~ /^[a-z]+([-'"'"' ][a-z]+)*$/' > words.tsv
    wc -l < words.tsv                               # 7230 word lines
    cut -f1 words.tsv | sort | uniq -d              # fav lmao lol muah ok sob x-d x-p xd xp
    cut -f1 words.tsv | sort -u | wc -l             # 7220 distinct words
    awk -F'\\t' '{m=$2<0?-$2:$2} m<0.5{n++} END{print n}' words.tsv   # 676 near zero
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("vader_data", ROOT / "examples" / "vader_data.py")
vader_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vader_data)

def read(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def column_means(path: Path) -> dict[str, list[float]]:
    """The lexicon's own mean column per token (a token listed twice has two)."""
    out: dict[str, list[float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        token, mean, *_ = line.split("\t")
        out.setdefault(token, []).append(float(mean))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("vader")
    return vader_data.build(out), out


def test_counts_match_the_hand_check(built):
    info, _ = built
    assert info["lines"] == 7520  # wc -l plus the last line, which has no newline
    assert info["words"] == 7220 and info["dropped_near_zero"] == 676 and info["kept"] == 6544
    assert (info["positive"], info["negative"]) == (2849, 3695)
    assert info["n_train"] + info["n_test"] == 6544
    # 20% by hash: within 2 standard deviations of a fair 20% draw (sqrt(6544 * .2 * .8) = 32).
    assert abs(info["n_test"] - 0.2 * 6544) < 64
    train, test = read(info["train"]), read(info["test"])
    assert (len(train), len(test)) == (info["n_train"], info["n_test"])


def test_labels_agree_with_the_sign_of_the_mean(built):
    info, _ = built
    means = column_means(vader_data.lexicon_path())
    for row in read(info["train"]) + read(info["test"]):
        assert set(row) == {"text", "label"}
        signs = {m > 0 for m in means[row["text"]]}
        assert len(signs) == 1  # duplicates agree on the sign (pooled in the builder)
        assert row["label"] == ("positive" if signs.pop() else "negative"), row
    # Spot checks a reader can verify in the file: "abandon" -1.9, "love" 3.2, "ok" 1.6 and 1.2.
    labels = {r["text"]: r["label"] for r in read(info["train"]) + read(info["test"])}
    assert (labels["abandon"], labels["love"], labels["ok"]) == ("negative", "positive", "positive")
    # Near zero dropped ("aboard" 0.1), emoticons left out (":)" 2.0), phrases kept ("fed up" -1.8).
    assert "aboard" not in labels and ":)" not in labels and labels["fed up"] == "negative"


def test_split_is_disjoint_fixed_and_by_hash(built):
    info, _ = built
    train = [r["text"] for r in read(info["train"])]
    test = [r["text"] for r in read(info["test"])]
    assert not set(train) & set(test)
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert train == sorted(train) and test == sorted(test)
    for text in test:  # the rule in the docstring, recomputed here
        assert int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 100 < 20
    for text in train:
        assert int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 100 >= 20


def test_output_does_not_depend_on_file_order(built, tmp_path):
    info, _ = built
    lines = vader_data.lexicon_path().read_text(encoding="utf-8").splitlines()
    shuffled = tmp_path / "shuffled.txt"
    shuffled.write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")  # LF endings too
    again = vader_data.build(tmp_path / "out", lexicon=shuffled)
    for name in ("train", "test"):
        assert again[name].read_bytes() == info[name].read_bytes()


def test_duplicates_are_pooled(tmp_path):
    lexicon = tmp_path / "lex.txt"
    lexicon.write_text("ok\t1.6\t1\t[2, 2, 2, 2, 2, 2, 2, 2, 2, 2]\n"
                       "ok\t-1.0\t1\t[-1, -1, -1, -1, -1, -1, -1, -1, -1, -1]\n"
                       "meh\t-0.4\t1\t[0, 0, 0, 0, 0, 0, -1, -1, -1, -1]\n", encoding="utf-8")
    info = vader_data.build(tmp_path / "out", lexicon=lexicon, test_percent=0)
    # ok: (10 * 2 + 10 * -1) / 20 = 0.5 -> kept, positive; meh: -0.4 -> dropped.
    assert read(info["train"]) == [{"text": "ok", "label": "positive"}]
    assert info["dropped_near_zero"] == 1 and read(info["test"]) == []


def test_bad_line_names_file_and_line(tmp_path):
    lexicon = tmp_path / "lex.txt"
    lexicon.write_text("good\t2.0\t0\t[2, 2, 2, 2, 2, 2, 2, 2, 2, 2]\nbad\t1.0\t0\t[1, 2, nine]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lex\.txt:2: "):
        vader_data.build(tmp_path / "out", lexicon=lexicon)
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_script_prints_the_counts(tmp_path):
    assert vader_data.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "train.jsonl").read_bytes().count(b"\n") + \
        (tmp_path / "test.jsonl").read_bytes().count(b"\n") == 6544
