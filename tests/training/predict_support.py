"""Bundles made by ``adaptc train`` for the ``adaptc predict`` tests (seeded, a few steps each).

* :func:`train_classifiers`: two classification tasks of one spec (the demo's
  LoRA on queries and values plus a tuned classifier), each trained on 48
  words of the VADER lexicon (24 of each sign) for 12 steps on the real all-MiniLM-L6-v2;
  ``sentiment`` labels them ``negative``/``positive``, ``mood`` ``happy``/``sad``
  (sorted: ``happy`` is id 0, so the two heads order their classes oppositely).
* :func:`train_lms`: two LoRA tasks of one spec on a tiny Llama folder,
  trained on different prompt/completion pairs, so they continue prompts differently.
"""

from __future__ import annotations

from pathlib import Path

from adaptlang.training.run import TrainConfig, train
from tests.training.support import LLAMA_SPEC, SENTIMENT_SPEC, minilm, sentiment_rows, write_jsonl

#: The demo spec with a second task made of the same deltas (trained apart, they load as separate values).
TWO_CLASSIFIERS = SENTIMENT_SPEC.read_text(encoding="utf-8") + "task mood = qv + head\n"

#: The tiny Llama spec with a second task.
TWO_LMS = LLAMA_SPEC + "task echo = attn\n"

#: Prompt/completion pairs in the tiny word vocabulary: ``lm`` answers with a number, ``echo`` with a colour.
LM_PAIRS = [{"prompt": "question one two", "completion": "answer three"},
            {"prompt": "question four five", "completion": "answer nine"}]
ECHO_PAIRS = [{"prompt": "question one two", "completion": "red blue"},
              {"prompt": "question four five", "completion": "blue red"}]


def train_classifiers(folder: Path) -> dict[str, Path]:
    """Trains ``sentiment`` and ``mood``; returns task -> bundle."""
    spec = folder / "two.adapt"
    spec.write_text(TWO_CLASSIFIERS, encoding="utf-8")
    pool = sentiment_rows(200, seed=1)
    rows = [r for r in pool if r["label"] == "positive"][:24] + [r for r in pool if r["label"] == "negative"][:24]
    moods = [{"text": r["text"], "label": "happy" if r["label"] == "positive" else "sad"} for r in rows]
    out = {}
    for task, data in (("sentiment", rows), ("mood", moods)):
        file = write_jsonl(folder / f"{task}.jsonl", data)
        result = train(TrainConfig(spec=spec, model=str(minilm()), data=file, task=task, out=folder / "out",
                                   epochs=2, lr=1e-2, batch_size=8, overwrite=True))
        out[task] = result.bundle
    return out


def train_lms(folder: Path, model: Path) -> dict[str, Path]:
    """Trains ``lm`` and ``echo`` on the tiny Llama folder ``model``; returns task -> bundle."""
    spec = folder / "lms.adapt"
    spec.write_text(TWO_LMS, encoding="utf-8")
    out = {}
    for task, pairs in (("lm", LM_PAIRS), ("echo", ECHO_PAIRS)):
        file = write_jsonl(folder / f"{task}.jsonl", pairs * 8)
        result = train(TrainConfig(spec=spec, model=str(model), data=file, task=task, out=folder / "out",
                                   epochs=8, lr=3e-2, batch_size=4, overwrite=True))
        out[task] = result.bundle
    return out
