"""End to end for the language-model objectives: causal LM (text; prompt/completion) and seq2seq.

The models are tiny (a 2-layer Llama saved as a pretrained folder; the tiny-t5 preset) and the data
repeats a few sentences, so a dozen steps of LoRA lower the evaluation loss clearly. Perplexity is
checked against its definition, exp(mean token cross-entropy).
"""

from __future__ import annotations

import math

import pytest
import torch

import adaptlang
from adaptlang.bundles.bundle import read_bundle
from adaptlang.training.run import TrainConfig, train
from tests.training.support import write_jsonl

TEXT = [{"text": "the cat sat on the mat"}, {"text": "the dog ran on the road"}, {"text": "a red car is fast"}]
PAIRS = [{"prompt": "question one two", "completion": "answer three"},
         {"prompt": "question four five", "completion": "answer nine"}]
SEQ2SEQ = [{"source": "translate the cat", "target": "the dog"}, {"source": "translate red car", "target": "blue car"}]


def run(tmp_path, spec, model, rows, **options):
    data = write_jsonl(tmp_path / "train.jsonl", rows * 8)
    held = write_jsonl(tmp_path / "eval.jsonl", rows)
    config = TrainConfig(spec=spec, model=str(model), data=data, eval_data=held, task=options.pop("task", "lm"),
                         out=tmp_path / "out", epochs=3, lr=2e-2, batch_size=4, **options)
    return train(config)


def check_lm_metrics(record):
    before, after = record["metrics"]["before"], record["metrics"]["after"]
    for metrics in (before, after):
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-12)
    assert after["loss"] < before["loss"] - 0.1, (before, after)


def test_causal_lm_on_text(tmp_path, llama_spec, llama_folder):
    result = run(tmp_path, llama_spec, llama_folder, TEXT)
    record = result.record
    assert record["objective"] == "causal-lm" and record["completion_only"] is False
    assert record["fields"] == {"text": "text"} and record["labels"] is None
    assert record["model"]["head"] == "causal-lm" and record["model"]["new_parameters"] == []
    assert record["steps"] == 18  # 24 rows / 4 per batch x 3 epochs
    check_lm_metrics(record)
    # The bundle reloads onto a fresh copy of the pretrained folder with identical logits.
    from transformers import LlamaForCausalLM

    fresh = adaptlang.load(LlamaForCausalLM.from_pretrained(str(llama_folder)), result.bundle)
    ids = result.tokenizer(["the cat sat on the road"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(fresh.model.eval()(input_ids=ids).logits, result.adapted.model.eval()(input_ids=ids).logits)


def test_causal_lm_on_prompt_completion_trains_the_completion(tmp_path, llama_spec, llama_folder):
    result = run(tmp_path, llama_spec, llama_folder, PAIRS)
    assert result.record["completion_only"] is True
    assert result.record["fields"] == {"prompt": "prompt", "completion": "completion"}
    check_lm_metrics(result.record)
    # The loss counted the completion (and </s>) only: recompute it by hand on the trained model for one row.
    tok, model = result.tokenizer, result.adapted.model.eval()
    prompt = tok("question one two")["input_ids"]
    completion = tok("answer three", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    # Position t predicts token t+1: the completion's tokens sit at len(prompt) .. end.
    start = len(prompt)
    by_hand = torch.nn.functional.cross_entropy(logits[start - 1:-1], ids[0, start:])
    labels = torch.tensor([[-100] * len(prompt) + completion])
    with torch.no_grad():
        assert model(input_ids=ids, labels=labels).loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_seq2seq_on_tiny_t5(tmp_path, t5_spec, t5_tokenizer):
    result = run(tmp_path, t5_spec, "tiny-t5", SEQ2SEQ, task="translate", tokenizer=t5_tokenizer)
    record = result.record
    assert record["objective"] == "seq2seq" and record["fields"] == {"source": "source", "target": "target"}
    assert record["model"] == {"name": "tiny-t5", "kind": "preset", "head": "seq2seq-lm", "new_parameters": []}
    check_lm_metrics(record)
    assert read_bundle(result.bundle).manifest["training"]["train"]["rows"] == 16


def test_eval_split_holds_out_rows_of_the_training_file(tmp_path, llama_spec, llama_folder):
    data = write_jsonl(tmp_path / "train.jsonl", [{"text": f"the {w} sat"} for w in "cat dog bird fish".split()] * 5)
    config = TrainConfig(spec=llama_spec, model=str(llama_folder), data=data, eval_split=0.25, task="lm",
                         out=tmp_path / "out", epochs=1, batch_size=5)
    record = train(config).record
    assert record["train"]["used"] == 15 and record["eval"]["used"] == 5
    assert record["eval"]["split"] == 0.25 and record["eval"]["file"] == "train.jsonl"
    assert record["eval"]["sha256"] == record["train"]["sha256"]
