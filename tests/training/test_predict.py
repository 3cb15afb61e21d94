"""``adaptc predict`` as a function: results against the loaded model's own forward and ``generate``.

The references are computed directly: a fresh model from the same folder, ``adaptlang.load`` of the
bundle, and one forward (or greedy ``generate``) per row, alone, unpadded. Bundles are made by
``adaptlang.training.run.train`` (module scope; about 10 s in all on one thread).
"""

from __future__ import annotations

import json

import pytest
import torch

import adaptlang
from adaptlang.errors import BundleError, DataError, UsageError
from adaptlang.training.predict import PredictConfig, predict, to_jsonl
from adaptlang.training.predict_encode import batches
from tests.training.predict_support import train_classifiers, train_lms
from tests.training.support import minilm, sentiment_rows, write_jsonl

WORDS = [r["text"] for r in sentiment_rows(12, seed=0, offset=400)]  # not among the training words


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    torch.set_num_threads(1)
    return train_classifiers(tmp_path_factory.mktemp("classifiers"))


@pytest.fixture(scope="module")
def lms(tmp_path_factory, llama_folder):
    torch.set_num_threads(1)
    return train_lms(tmp_path_factory.mktemp("lms"), llama_folder)


def direct_logits(bundle, texts):
    """Each text alone through a fresh MiniLM classifier with ``bundle`` loaded."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(7)  # another random head than training's: the bundle must replace it
    model = BertForSequenceClassification.from_pretrained(str(minilm()), num_labels=2, local_files_only=True)
    adapted = adaptlang.load(model, bundle)
    adapted.model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(minilm()))
    with torch.no_grad():
        return [adapted.model(**tokenizer(text, return_tensors="pt")).logits[0] for text in texts]


def test_classification_is_the_argmax_of_the_loaded_models_logits(tmp_path, classifiers):
    data = write_jsonl(tmp_path / "words.jsonl", [{"id": f"w{i}", "text": w} for i, w in enumerate(WORDS)])
    result = predict(PredictConfig(model=str(minilm()), bundles=[classifiers["sentiment"]], data=data,
                                   batch_size=5))  # batches of 5, 5, 2: padded rows meet unpadded references
    assert result.objective == "classification" and result.notes == []
    assert [r["row"] for r in result.rows] == list(range(1, 13))
    assert [r["id"] for r in result.rows] == [f"w{i}" for i in range(12)]
    names = ["negative", "positive"]
    for row, logits in zip(result.rows, direct_logits(classifiers["sentiment"], WORDS)):
        assert row["task"] == "sentiment"
        assert row["label"] == names[int(logits.argmax())]
        expected = torch.softmax(logits.double(), dim=-1)
        assert set(row["probabilities"]) == set(names)
        for name, p in zip(names, expected):
            # Rounded to 6 places; padding in a batch moves float32 logits by ~1e-7.
            assert row["probabilities"][name] == pytest.approx(float(p), abs=2e-6)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=2e-6)
        assert row["score"] == row["probabilities"][row["label"]] == max(row["probabilities"].values())
    # Trained 12 steps: the classifier already tells some words apart (not one label for all).
    assert len({r["label"] for r in result.rows}) == 2


def test_mixed_task_file_gives_each_row_what_its_single_task_run_gives(tmp_path, classifiers):
    rows = [{"text": w, "kind": "sentiment" if i % 3 else "mood"} for i, w in enumerate(WORDS)]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", rows)
    bundles = [classifiers["sentiment"], classifiers["mood"]]
    both = predict(PredictConfig(model=str(minilm()), bundles=bundles, data=mixed, task_field="kind",
                                 batch_size=3))
    for task in ("sentiment", "mood"):
        mine = [r for r in rows if r["kind"] == task]
        alone = predict(PredictConfig(model=str(minilm()), bundles=[classifiers[task]], batch_size=3,
                                      data=write_jsonl(tmp_path / f"{task}.jsonl", mine)))
        got = [{k: v for k, v in r.items() if k != "row"} for r in both.rows if r["task"] == task]
        assert got == [{k: v for k, v in r.items() if k != "row"} for r in alone.rows]
    assert [r["task"] for r in both.rows] == [r["kind"] for r in rows]
    assert {r["label"] for r in both.rows if r["task"] == "mood"} <= {"happy", "sad"}
    # The two classifiers are different tune values of one slot: never in one batch.
    labels = {"sentiment": ("negative", "positive"), "mood": ("happy", "sad")}
    for row in both.rows:
        assert set(row["probabilities"]) == set(labels[row["task"]])


def test_the_jsonl_bytes_are_the_same_every_run(tmp_path, classifiers):
    data = write_jsonl(tmp_path / "words.jsonl", [{"text": w} for w in WORDS[:4]])
    config = PredictConfig(model=str(minilm()), bundles=[classifiers["sentiment"]], data=data)
    first, second = to_jsonl(predict(config).rows), to_jsonl(predict(config).rows)
    assert first == second
    lines = first.splitlines()
    assert len(lines) == 4 and all(list(json.loads(line)) == sorted(json.loads(line)) for line in lines)


def test_csv_and_another_text_field_give_the_same_results(tmp_path, classifiers):
    words = WORDS[:3] + ["42"]  # CSV has no types: a numeral reads as a number, and is text here
    jsonl = write_jsonl(tmp_path / "words.jsonl", [{"text": w} for w in words])
    csv = tmp_path / "words.csv"
    csv.write_text("sentence\n" + "".join(w + "\n" for w in words), encoding="utf-8")
    base = dict(model=str(minilm()), bundles=[classifiers["sentiment"]])
    from_jsonl = predict(PredictConfig(data=jsonl, **base)).rows
    from_csv = predict(PredictConfig(data=csv, text_field="sentence", **base)).rows
    assert from_csv == from_jsonl and len(from_csv) == 4


PROMPTS = ["question one two", "question four five", "the cat", "question one two three four"]


def direct_generate(llama_folder, bundle, prompts, new_tokens):
    from transformers import AutoTokenizer, LlamaForCausalLM

    adapted = adaptlang.load(LlamaForCausalLM.from_pretrained(str(llama_folder)), bundle)
    adapted.model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(llama_folder))
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            tokens = adapted.model.generate(input_ids=ids, max_new_tokens=new_tokens, do_sample=False)
            out.append(tokenizer.decode(tokens[0, ids.shape[1]:].tolist(), skip_special_tokens=True))
    return out


def test_causal_lm_text_is_greedy_generate_of_the_loaded_model(tmp_path, lms, llama_folder):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    result = predict(PredictConfig(model=str(llama_folder), bundles=[lms["lm"]], data=data, batch_size=3,
                                   max_new_tokens=4))  # a batch of three prompts of 2-4 words: left padding
    expected = direct_generate(llama_folder, lms["lm"], PROMPTS, 4)
    assert [r["text"] for r in result.rows] == expected
    assert result.rows[0]["text"].startswith("answer three")  # what it was trained to say
    assert all(set(r) == {"row", "task", "text"} for r in result.rows)


def test_mixed_task_generation_runs_rows_of_both_tasks_in_one_batch(tmp_path, lms, llama_folder):
    rows = [{"prompt": p, "task": t} for p in PROMPTS[:2] for t in ("lm", "echo")]
    data = write_jsonl(tmp_path / "mixed.jsonl", rows)
    config = PredictConfig(model=str(llama_folder), bundles=[lms["lm"], lms["echo"]], data=data,
                           task_field="task", batch_size=4, max_new_tokens=3)
    result = predict(config)
    for task in ("lm", "echo"):
        expected = direct_generate(llama_folder, lms[task], PROMPTS[:2], 3)
        assert [r["text"] for r in result.rows if r["task"] == task] == expected
    assert result.rows[0]["text"] != result.rows[1]["text"]  # the tasks answer differently
    # LoRA-only tasks share a batch (a mixed-task generate); the plan says so.
    from transformers import LlamaForCausalLM

    plan = adaptlang.load(LlamaForCausalLM.from_pretrained(str(llama_folder)),
                          [lms["lm"], lms["echo"]]).plan.to_dict()
    assert batches([r["task"] for r in rows], plan, 4) == [[0, 1, 2, 3]]


def test_a_bundle_without_training_record_needs_head(tmp_path, lms, llama_folder, llama_spec):
    from transformers import LlamaForCausalLM

    adapted = adaptlang.load(LlamaForCausalLM.from_pretrained(str(llama_folder)), lms["lm"])
    (bare,) = adapted.save(tmp_path / "bare", tasks=["lm"])  # saved from Python: no training record
    data = write_jsonl(tmp_path / "p.jsonl", [{"text": PROMPTS[0]}])
    with pytest.raises(UsageError, match="has no training record") as caught:
        predict(PredictConfig(model=str(llama_folder), bundles=[bare], data=data))
    assert "help: pass --head" in caught.value.render()
    result = predict(PredictConfig(model=str(llama_folder), bundles=[bare], data=data, head="causal-lm",
                                   max_new_tokens=2))
    assert [r["text"] for r in result.rows] == direct_generate(llama_folder, lms["lm"], PROMPTS[:1], 2)


# ------------------------------------------------------------------ bad input


def test_bad_bundles(tmp_path, classifiers, lms, llama_folder):
    data = write_jsonl(tmp_path / "words.jsonl", [{"text": w} for w in WORDS[:2]])
    model = str(minilm())
    with pytest.raises(BundleError, match="no such file"):
        predict(PredictConfig(model=model, bundles=[tmp_path / "none.safetensors"], data=data))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(classifiers["sentiment"].read_bytes()[:200])
    with pytest.raises(BundleError, match="truncated"):
        predict(PredictConfig(model=model, bundles=[broken], data=data))
    with pytest.raises(BundleError, match="made for a different model"):  # a MiniLM bundle on a Llama classifier
        predict(PredictConfig(model=str(llama_folder), bundles=[classifiers["sentiment"]], data=data))
    with pytest.raises(UsageError, match="trained with the causal-lm head.*one model has one head"):
        predict(PredictConfig(model=model, bundles=[classifiers["sentiment"], lms["lm"]], data=data,
                              task="sentiment"))
    with pytest.raises(UsageError, match="--num-labels 3, but .* 2 labels"):
        predict(PredictConfig(model=model, bundles=[classifiers["sentiment"]], data=data, num_labels=3))


def test_bundles_with_different_numbers_of_labels_are_refused(tmp_path, classifiers):
    from adaptlang.bundles.bundle import Bundle, read_bundle, write_bundles

    mood = read_bundle(classifiers["mood"])
    manifest = json.loads(json.dumps(mood.manifest))
    manifest["training"]["labels"] = ["happy", "neutral", "sad"]
    (three,) = write_bundles([Bundle(tmp_path / "mood3.safetensors", manifest, mood.tensors)])
    data = write_jsonl(tmp_path / "words.jsonl", [{"text": w, "task": "mood"} for w in WORDS[:2]])
    with pytest.raises(UsageError, match="different numbers of labels") as caught:
        predict(PredictConfig(model=str(minilm()), bundles=[classifiers["sentiment"], three], data=data,
                              task_field="task"))
    assert "2 labels" in caught.value.render() and "3 labels" in caught.value.render()


def test_bad_data(tmp_path, classifiers):
    bundles = [classifiers["sentiment"], classifiers["mood"]]
    model = str(minilm())

    def run(rows, **options):
        data = tmp_path / "data.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return predict(PredictConfig(model=model, data=data, **{"bundles": bundles, **options}))

    with pytest.raises(DataError, match="has no field 'text' \\(the text field of task 'sentiment'\\)"):
        run([{"sentence": "good"}], task="sentiment")
    with pytest.raises(DataError, match="row 2 of .*: task 'sentimnet' .* not one of"):
        run([{"text": "good", "t": "mood"}, {"text": "bad", "t": "sentimnet"}], task_field="t")
    with pytest.raises(UsageError, match="2 tasks are loaded .*") as caught:
        run([{"text": "good", "task": "mood"}])
    assert "--task-field task" in caught.value.render()
    with pytest.raises(UsageError, match="--task moood is not a task"):
        run([{"text": "good"}], task="moood")
    with pytest.raises(UsageError, match="--task and --task-field both given"):
        run([{"text": "good"}], task="mood", task_field="t")
    with pytest.raises(DataError, match="row 2 of .*: field 'text' is empty"):
        run([{"text": "good"}, {"text": "  "}], task="mood")
    with pytest.raises(DataError, match="row 1 of .*: field 'text' holds int 5, not text"):
        run([{"text": 5}], task="mood")
    with pytest.raises(UsageError, match="--max-new-tokens applies to generation"):
        run([{"text": "good"}], task="mood", max_new_tokens=3)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="is empty"):
        predict(PredictConfig(model=model, bundles=bundles[:1], data=empty))


def test_a_prompt_that_would_generate_past_the_positions_is_refused(tmp_path, lms, llama_folder):
    # The tiny Llama has 64 positions: 1 prompt token + 60 new ones fit, 5 + 60 do not.
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "one"}, {"prompt": PROMPTS[3]}])
    with pytest.raises(DataError, match="row 2 of .*: its 5 prompt tokens and --max-new-tokens 60 make 65, "
                                        "more than the model's 64 positions"):
        predict(PredictConfig(model=str(llama_folder), bundles=[lms["lm"]], data=data, max_new_tokens=60))


def test_seq2seq_text_is_greedy_generate_of_the_loaded_model(tmp_path, t5_spec, t5_tokenizer):
    from adaptlang.training.pretrained import load_pretrained
    from adaptlang.training.run import TrainConfig, train

    pairs = [{"source": "translate the cat", "target": "the dog"}, {"source": "translate red car", "target": "blue car"}]
    train(TrainConfig(spec=t5_spec, model="tiny-t5", tokenizer=t5_tokenizer, task="translate", out=tmp_path / "out",
                      data=write_jsonl(tmp_path / "train.jsonl", pairs * 8), epochs=10, lr=5e-2, batch_size=4))
    bundle = tmp_path / "out" / "translate.safetensors"
    sources = ["translate the cat", "translate red car", "translate a big red car"]
    data = write_jsonl(tmp_path / "sources.jsonl", [{"source": s} for s in sources])
    result = predict(PredictConfig(model="tiny-t5", tokenizer=t5_tokenizer, bundles=[bundle], data=data,
                                   max_new_tokens=4, batch_size=3))
    assert any("random weights" in note for note in result.notes)  # a preset: said, not hidden
    # The reference: the preset rebuilt with the training seed (its random base), the bundle, each row alone.
    base = load_pretrained("tiny-t5", "seq2seq-lm", tokenizer=t5_tokenizer, seed=0)
    adapted = adaptlang.load(base.model, bundle)
    adapted.model.eval()
    expected = []
    with torch.no_grad():
        for source in sources:
            ids = base.tokenizer(source, return_tensors="pt")["input_ids"]
            tokens = adapted.model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
            expected.append(base.tokenizer.decode(tokens[0].tolist(), skip_special_tokens=True))
    assert [r["text"] for r in result.rows] == expected
    assert [r["text"] for r in result.rows[:2]] == ["the dog", "blue car"]  # as trained


def test_one_class_is_refused_for_a_bundle_without_record(tmp_path):
    # A one-output head's softmax is 1.0 whatever the logits: every row would get the one label, score 1.
    from adaptlang.training.predict_setup import read_setup

    with pytest.raises(UsageError, match="--num-labels must be at least 2, not 1"):
        read_setup([tmp_path / "any.safetensors"], head="sequence-classification", num_labels=1)
