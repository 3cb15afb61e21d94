"""Reload a trained sentiment bundle from Python and check it scores what training reported.

Run (the last step of ``make demo``)::

    python examples/check_reload.py RUN/sentiment.safetensors --model MINILM --data test.jsonl

What it does, with the plain Python API a user would write:

1. builds the base model again from its pretrained weights, with the
   classification head and label names the bundle's training record gives
   (the head's random values do not matter: the bundle re-trained it);
2. ``adaptlang.load(model, bundle)`` puts the trained deltas on it;
3. scores the evaluation file in the batches the ``Trainer`` evaluated in
   (same order, same size, padded per batch), and compares the accuracy with
   the one recorded after training.

Exit status 1 when the two differ: a bundle that does not give back what was
trained is a bug.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import adaptlang
from adaptlang.bundles.bundle import read_manifest


def accuracy(model: torch.nn.Module, tokenizer, texts: list[str], labels: list[int], batch_size: int) -> float:
    """Share of rows whose argmax label is right, in batches of ``batch_size`` padded to their longest row."""
    right = 0
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, return_tensors="pt")
            logits = model(**batch).logits  # (B, num_labels)
            right += (logits.argmax(-1) == torch.tensor(labels[start:start + batch_size])).sum().item()
    return right / len(texts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--model", required=True, help="the pretrained model folder the bundle was trained on")
    parser.add_argument("--data", required=True, help="the evaluation file the run scored")
    args = parser.parse_args()

    transformers.logging.set_verbosity_error()  # no load report: the new head is expected
    transformers.logging.disable_progress_bar()
    record = read_manifest(args.bundle)["training"]
    names = record["labels"]  # label names in id order
    fields = record["fields"]
    rows = [json.loads(line) for line in open(args.data, encoding="utf-8") if line.strip()]
    texts = [row[fields["text"]] for row in rows]
    labels = [names.index(row[fields["label"]]) for row in rows]

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, use_safetensors=True, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    adaptlang.load(model, args.bundle)
    model.eval()

    batch_size = int(record["hyperparameters"].get("per_device_eval_batch_size", 8))
    got = accuracy(model, tokenizer, texts, labels, batch_size)
    want = record["metrics"]["after"]["accuracy"]
    print(f"reloaded with adaptlang.load: accuracy {got:.4f} on {len(texts):,} rows "
          f"(the run recorded {want:.4f}): {'identical' if got == want else 'DIFFERENT'}")
    return 0 if got == want else 1


if __name__ == "__main__":
    sys.exit(main())
