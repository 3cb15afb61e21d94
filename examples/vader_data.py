"""A two-class sentiment task from real human ratings: the words of VADER's lexicon.

Run (a second, writes two small files)::

    python examples/vader_data.py --out data/vader

or import it: ``build(out_dir)`` returns the paths and counts.

The source is ``vader_lexicon.txt`` from the ``vaderSentiment`` package
(Hutto & Gilbert, 2014): 7,520 lines ``token<TAB>mean<TAB>std<TAB>[ten
ratings]``, each token rated for valence from -4 (extremely negative) to +4
(extremely positive) by ten people. The task: given the token, say whether
its valence is ``"positive"`` or ``"negative"``; the label is the sign of
the mean of its human ratings. No rating average is exactly zero.

What is kept, with the counts on the shipped file (the tests redo them):

* **Words only.** A token is kept when it is letters (``a-z``) in one or more
  parts joined by a hyphen, an apostrophe or a space (``fed up``,
  ``can't stand``, ``lol``): 7,230 lines. The 290 others are emoticons
  (``:-)``, ``D:``, ``<3``) and digit slang (``gr8``, ``143``). They are left
  out because the encoder this task is for (all-MiniLM-L6-v2) is uncased:
  it lower-cases its input, so ``:D`` (a grin) and ``D:`` (dismay) become
  ``:d`` and ``d:``, and the lexicon itself rates ``d:`` twice with opposite
  signs (-2.9 and +1.2). A task of English words is also one thing to learn,
  not two.
* **Duplicates pooled.** Ten words are listed twice, rated by two panels
  (``fav``, ``lmao``, ``lol``, ``muah``, ``ok``, ``sob``, ``x-d``, ``x-p``,
  ``xd``, ``xp``); their twenty ratings are pooled and the mean taken over
  all twenty (order-independent; both panels agree on the sign for every
  one): 7,220 distinct words.
* **Near-zero words dropped: |mean| < 0.5.** Raters disagree on the sign of
  such words: of the 676 words below 0.5, 86 have at least as many raters on
  the other side of zero as on the mean's side (on average 1.5 raters
  opposed and 3.3 agreeing; the rest rate 0); of the 6,544 at or above 0.5,
  4 do. The standard error of a ten-rater mean is about std/sqrt(10) = 0.3
  here (std is ~1 for these words), so a mean under 0.5 is within about 1.6
  standard errors of zero: its sign is not settled. Kept: 6,544 words,
  2,849 positive and 3,695 negative.
* **Means from the ratings.** The mean is computed from the listed ratings
  rather than read from the mean column; they agree to 1e-9 except for
  ``lmfao`` (column 2.5, ratings 2.4; the sign is the same).

The split is fixed and independent of the file's order: a word goes to the
test set when the first 8 bytes of the SHA-256 of its UTF-8 text, read as a
big-endian integer, are 0..19 modulo 100 (about 20%). On the shipped file
that is 5,255 training and 1,289 test words (train 2,282 positive / 2,973
negative; test 567 / 722). Each file lists its words sorted by text, one
JSON object a line ``{"text": ..., "label": ...}``, so the bytes are the
same on every run.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

WORD = re.compile(r"[a-z]+(?:[-' ][a-z]+)*")  # letters, parts joined by - ' or a space
THRESHOLD = 0.5  # |mean| below this: the raters' sign is not settled (see the module docstring)
TEST_PERCENT = 20
LABELS = ("negative", "positive")


def lexicon_path() -> Path:
    """The ``vader_lexicon.txt`` shipped in the ``vaderSentiment`` package.

    Raises:
        FileNotFoundError: vaderSentiment is not installed (``pip install vaderSentiment``,
            or the project's ``demo`` extra).
    """
    try:
        path = resources.files("vaderSentiment") / "vader_lexicon.txt"
    except ModuleNotFoundError as exc:
        raise FileNotFoundError("vaderSentiment is not installed: it ships vader_lexicon.txt "
                                "(pip install vaderSentiment, or the 'demo' extra)") from exc
    return Path(str(path))


def read_lexicon(path: Path) -> list[tuple[str, list[int]]]:
    """The lexicon's lines as ``(token, ratings)`` in file order.

    Args:
        path: A file of ``token<TAB>mean<TAB>std<TAB>[r1, ..., r10]`` lines (CRLF or LF).

    Raises:
        ValueError: A line that is not four tab-separated fields with a list of
            integer ratings in -4..4; the message names the file and line.
    """
    rows = []
    text = path.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 4:
                raise ValueError(f"expected 4 tab-separated fields, found {len(fields)}")
            ratings = ast.literal_eval(fields[3])  # a literal list; literal_eval runs no code
            if not (isinstance(ratings, list) and ratings
                    and all(isinstance(r, int) and -4 <= r <= 4 for r in ratings)):
                raise ValueError("the ratings are not a list of integers in -4..4")
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"{path}:{number}: {exc}: {line[:80]!r}") from None
        rows.append((fields[0], ratings))
    return rows


def words(rows: list[tuple[str, list[int]]]) -> dict[str, float]:
    """Word tokens and the mean of their pooled ratings (duplicates pooled, emoticons left out).

    Returns:
        ``{word: mean rating}``; a word listed twice gets the mean of both panels' ratings.
    """
    pooled: dict[str, list[int]] = {}
    for token, ratings in rows:
        if WORD.fullmatch(token):
            pooled.setdefault(token, []).extend(ratings)
    return {token: sum(r) / len(r) for token, r in pooled.items()}


def in_test(text: str, test_percent: int = TEST_PERCENT) -> bool:
    """Whether ``text`` belongs to the test split: SHA-256 of its UTF-8 bytes, first 8 bytes mod 100."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < test_percent


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    """Writes the rows through a temporary file, so a failed write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def build(out_dir: str | Path, lexicon: str | Path | None = None, threshold: float = THRESHOLD,
          test_percent: int = TEST_PERCENT) -> dict[str, object]:
    """Writes ``out_dir/train.jsonl`` and ``out_dir/test.jsonl`` from the lexicon.

    Args:
        out_dir: Folder for the two files (created if missing).
        lexicon: The lexicon file (default: the one vaderSentiment ships).
        threshold: Words with |mean rating| below this are dropped (default 0.5).
        test_percent: Share of words in the test split, 0..100 (default 20).

    Returns:
        ``{"train": Path, "test": Path, "lines": int, "words": int, "dropped_near_zero": int,
        "kept": int, "n_train": int, "n_test": int, "positive": int, "negative": int}``.

    Raises:
        ValueError: A malformed lexicon line (see :func:`read_lexicon`) or an argument out of range.
        FileNotFoundError: No lexicon given and vaderSentiment is not installed.
    """
    if not 0 <= test_percent <= 100:
        raise ValueError(f"test_percent must be in 0..100, got {test_percent}")
    if not (threshold >= 0 and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")
    rows = read_lexicon(Path(lexicon) if lexicon is not None else lexicon_path())
    means = words(rows)
    kept = {w: m for w, m in means.items() if abs(m) >= threshold and m != 0.0}
    splits: dict[str, list[dict[str, str]]] = {"train": [], "test": []}
    for text in sorted(kept):
        label = LABELS[kept[text] > 0]
        splits["test" if in_test(text, test_percent) else "train"].append({"text": text, "label": label})
    out = Path(out_dir)
    for name, split_rows in splits.items():
        _write_jsonl(out / f"{name}.jsonl", split_rows)
    positive = sum(m > 0 for m in kept.values())
    return {"train": out / "train.jsonl", "test": out / "test.jsonl", "lines": len(rows),
            "words": len(means), "dropped_near_zero": len(means) - len(kept), "kept": len(kept),
            "n_train": len(splits["train"]), "n_test": len(splits["test"]),
            "positive": positive, "negative": len(kept) - positive}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for train.jsonl and test.jsonl")
    parser.add_argument("--lexicon", type=Path, default=None, help="lexicon file (default: vaderSentiment's)")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="drop |mean| below this (0.5)")
    parser.add_argument("--test-percent", type=int, default=TEST_PERCENT, help="test share in %% (20)")
    args = parser.parse_args(argv)
    try:
        info = build(args.out, args.lexicon, args.threshold, args.test_percent)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{info['lines']:,} lexicon lines, {info['words']:,} distinct words, "
          f"{info['dropped_near_zero']:,} dropped with |mean| < {args.threshold:g}, {info['kept']:,} kept "
          f"({info['positive']:,} positive, {info['negative']:,} negative)")
    print(f"train: {info['n_train']:,} words -> {info['train']}")
    print(f"test:  {info['n_test']:,} words -> {info['test']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
