"""Loading real weights with a head, the tokenizer checks, and the refusal to train with a frozen random head."""

from __future__ import annotations

import json

import pytest
import torch

import adaptlang
from adaptlang.errors import BindError, UsageError
from adaptlang.plan.models import load_model
from adaptlang.training.objective import Labels
from adaptlang.training.pretrained import check_new_trained, load_pretrained, max_positions
from tests.training.support import SENTIMENT_SPEC, minilm

NEW_HEAD = ("classifier.bias", "classifier.weight")


def classifier_plan(spec: str):
    """The plan of ``spec`` on a BERT with a classification head (meta device: structure only)."""
    model, _ = load_model("tiny-bert", head="sequence-classification", num_labels=2)
    return adaptlang.compile(spec, model=model).to_dict()


def test_a_task_must_train_the_new_head_whole():
    # The demo spec tunes the classifier: accepted.
    check_new_trained(classifier_plan(SENTIMENT_SPEC.read_text()), "sentiment", NEW_HEAD, "bert")
    without = "adaptlang 1\nlora qv { on encoder.layer[*].attention.self.{query, value}\n rank 4 }\ntask s = qv\n"
    with pytest.raises(BindError) as err:
        check_new_trained(classifier_plan(without), "s", NEW_HEAD, "bert")
    diag = err.value.diagnostics[0]
    assert diag.message == "task 's' does not train the new parameters of bert: classifier.bias, classifier.weight"
    assert "tune head { params classifier }" in diag.hint
    assert err.value.exit_code == 1
    # A frozen tune delta, or LoRA on the random head (the random weight stays), do not count.
    frozen = ("adaptlang 1\ntune head { params classifier }\nlora l { on classifier\n rank 2 }\n"
              "task a = frozen(head)\ntask b = l\n")
    plan = classifier_plan(frozen)
    for task in ("a", "b"):
        with pytest.raises(BindError, match="does not train the new parameters"):
            check_new_trained(plan, task, NEW_HEAD, "bert")


def test_minilm_gets_a_new_labelled_head_and_its_tokenizer():
    loaded = load_pretrained(str(minilm()), "sequence-classification", labels=Labels(("neg", "pos")), seed=0)
    assert type(loaded.model).__name__ == "BertForSequenceClassification"
    assert loaded.new_parameters == NEW_HEAD and loaded.kind == "directory" and loaded.name == "model"
    assert loaded.model.config.id2label == {0: "neg", 1: "pos"} and loaded.model.config.num_labels == 2
    assert loaded.model.classifier.weight.dtype == torch.float32
    assert max_positions(loaded.model, loaded.tokenizer) == 512
    again = load_pretrained(str(minilm()), "sequence-classification", labels=Labels(("neg", "pos")), seed=0)
    assert torch.equal(loaded.model.classifier.weight, again.model.classifier.weight)  # seeded new head
    # The encoder's weights are the checkpoint's, not random (the bare-encoder load agrees).
    from transformers import BertModel

    bare = BertModel.from_pretrained(str(minilm()), local_files_only=True)
    assert torch.equal(loaded.model.bert.encoder.layer[0].attention.self.query.weight,
                       bare.encoder.layer[0].attention.self.query.weight)


def test_full_size_presets_are_refused_and_tiny_ones_need_a_tokenizer(tmp_path, t5_tokenizer):
    with pytest.raises(UsageError, match="preset 'llama' has no weights"):
        load_pretrained("llama", "causal-lm")
    with pytest.raises(UsageError, match="model 'tiny-t5' has no tokenizer of its own") as err:
        load_pretrained("tiny-t5", "seq2seq-lm")
    assert err.value.diagnostics[0].hint.startswith("pass --tokenizer DIR")
    loaded = load_pretrained("tiny-t5", "seq2seq-lm", tokenizer=t5_tokenizer)
    assert loaded.kind == "preset" and "random weights" in loaded.notes[0]
    assert max_positions(loaded.model, loaded.tokenizer) is None  # T5: relative positions, no table


def test_folders_without_safetensors_or_with_custom_code_are_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    with pytest.raises(UsageError, match="has no safetensors weights"):
        load_pretrained(str(folder), "causal-lm")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(UsageError, match="needs custom code"):
        load_pretrained(str(folder), "causal-lm")


def test_a_head_the_model_type_lacks_and_a_tokenizer_too_large(llama_folder):
    with pytest.raises(UsageError, match="model type 'llama' has no seq2seq-lm head"):
        load_pretrained(str(llama_folder), "seq2seq-lm")
    with pytest.raises(UsageError, match="the tokenizer has 30522 tokens but model .* embeds only 64"):
        load_pretrained(str(llama_folder), "causal-lm", tokenizer=minilm())


def test_unknown_models_get_the_compilers_error():
    with pytest.raises(UsageError, match="unknown model 'tiny-lama'") as err:
        load_pretrained("tiny-lama", "causal-lm")
    assert err.value.diagnostics[0].hint == "did you mean 'tiny-llama'?"


def test_hub_ids_load_the_folder_the_hub_layer_gives(monkeypatch, llama_folder):
    import adaptlang.plan.hub as hub

    asked = []

    def local_model_dir(ref, *, weights=False):
        asked.append((ref, weights))
        return llama_folder if ref == "org/tiny-llama" else None

    monkeypatch.setattr(hub, "local_model_dir", local_model_dir)
    loaded = load_pretrained("org/tiny-llama", "causal-lm")
    assert (loaded.kind, loaded.name) == ("hub", "org/tiny-llama")  # the hub id: portable, unlike the cache path
    assert asked == [("org/tiny-llama", True)]  # weights and tokenizer wanted, not only config.json


def test_a_factory_model_with_a_tokenizer_folder(llama_folder):
    ref = "tests.training.support:tiny_llama_model"
    with pytest.raises(UsageError, match="has no tokenizer of its own"):
        load_pretrained(ref, "causal-lm")
    loaded = load_pretrained(ref, "causal-lm", tokenizer=llama_folder)
    assert (loaded.kind, loaded.name, loaded.new_parameters) == ("factory", ref, ())
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and loaded.model.training


@pytest.mark.parametrize("problem", ["regression", "multi_label_classification"])
def test_classification_trains_single_label_whatever_the_config_says(tmp_path, problem):
    # A config's problem_type picks the loss (MSE, BCE): with class ids as labels, training failed deep in torch.
    folder = tmp_path / "model"
    folder.mkdir()
    for item in minilm().iterdir():
        if item.name != "config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((minilm() / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps({**config, "problem_type": problem}), encoding="utf-8")
    loaded = load_pretrained(str(folder), "sequence-classification", labels=Labels(("neg", "pos")), seed=0)
    assert loaded.model.config.problem_type == "single_label_classification"
    batch = loaded.tokenizer(["good", "bad"], return_tensors="pt", padding=True)
    out = loaded.model.eval()(**batch, labels=torch.tensor([1, 0]))
    # The loss is cross-entropy over the two logits (torch's definition).
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 0])).item())


def classifier_folder(folder, id2label):
    """A seeded tiny Llama classifier saved as if fine-tuned for ``id2label`` (its head is in the checkpoint)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tests.training.support import tokenizer_folder

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                         num_labels=len(id2label), id2label=dict(enumerate(id2label)),
                         label2id={n: i for i, n in enumerate(id2label)})
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(str(folder))
    tokenizer_folder(folder)
    return model.score.weight.detach().clone()


def test_a_trained_head_keeps_its_own_label_order(tmp_path):
    # The checkpoint's head scores "pos" in row 0; the data's sorted order would call row 0 "neg": a silent swap.
    saved = classifier_folder(tmp_path / "clf", ["pos", "neg"])
    loaded = load_pretrained(str(tmp_path / "clf"), "sequence-classification", labels=Labels(("neg", "pos")))
    assert loaded.labels == Labels(("pos", "neg"))
    assert loaded.model.config.id2label == {0: "pos", 1: "neg"}
    assert "score.weight" not in loaded.new_parameters
    assert torch.equal(loaded.model.score.weight, saved)  # the trained rows, in their own order
    assert any("order ['pos', 'neg']" in note for note in loaded.notes)


def test_a_trained_head_for_other_labels_is_reused_in_sorted_order_with_a_note(tmp_path):
    classifier_folder(tmp_path / "clf", ["anger", "joy"])
    loaded = load_pretrained(str(tmp_path / "clf"), "sequence-classification", labels=Labels(("neg", "pos")))
    assert loaded.labels == Labels(("neg", "pos"))
    assert loaded.model.config.id2label == {0: "neg", 1: "pos"}
    assert any("not the data's ['neg', 'pos']" in note for note in loaded.notes)


def test_training_maps_labels_to_a_trained_heads_rows(tmp_path):
    from adaptlang.training.run import TrainConfig, train
    from tests.training.support import write_jsonl

    classifier_folder(tmp_path / "clf", ["pos", "neg"])
    spec = tmp_path / "clf.adapt"
    spec.write_text("adaptlang 1\n\nlora attn {\n    on layers[*].self_attn.{q_proj, v_proj}\n    rank 2\n}\n\n"
                    "task clf = attn\n", encoding="utf-8")
    rows = [{"text": w, "label": lab} for w, lab in (("good", "pos"), ("bad", "neg"), ("happy", "pos"),
                                                    ("sad", "neg"))]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    result = train(TrainConfig(spec=spec, model=str(tmp_path / "clf"), data=data, task="clf", out=tmp_path / "out",
                               epochs=1, batch_size=4))
    # The record (which predict reads) names the head's rows in the checkpoint's order.
    assert result.record["labels"] == ["pos", "neg"]


def test_a_factory_classifier_keeps_its_label_order_and_must_fit_the_labels(tmp_path):
    from tests.training.support import tokenizer_folder

    tok = tokenizer_folder(tmp_path / "tok")
    loaded = load_pretrained("tests.training.support:tiny_llama_classifier", "sequence-classification",
                             labels=Labels(("neg", "pos")), tokenizer=tok)
    assert loaded.labels == Labels(("pos", "neg"))
    assert loaded.model.config.id2label == {0: "pos", 1: "neg"}
    # Three outputs for two labels: one output would never be trained, and nothing would say so.
    with pytest.raises(UsageError, match="3 outputs, but the data has 2 labels"):
        load_pretrained("tests.training.support:tiny_llama_classifier3", "sequence-classification",
                        labels=Labels(("neg", "pos")), tokenizer=tok)
