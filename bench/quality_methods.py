"""The methods the quality bench compares, each as a way to make a model trainable.

Every method trains the new classification head (``classifier``, 384 x 2 +
2 = 770 parameters on all-MiniLM-L6-v2) besides its own parameters: the head
is new, so a method that left it at its random start could not classify.
The adaptlang methods are ``.adapt`` specs applied with ``adaptlang.apply``;
PEFT's LoRA is ``peft.get_peft_model`` with the settings of the LoRA spec.

Learning rates are the ones the papers (or their common reproductions) use
for this model size; each method gets one rate for all of its parameters:

* head only: 1e-3 (a linear probe on frozen features);
* full fine-tuning: 5e-5 (the top of BERT's 2e-5..5e-5 grid, Devlin et al., 2019);
* LoRA, ours and PEFT's: 5e-4 (Hu et al., 2021: 4e-4..5e-4 on RoBERTa-base GLUE);
* bottleneck adapters: 5e-4 (Houlsby et al., 2019 searched 1e-4..1e-3);
* BitFit: 1e-3 (Ben Zaken et al., 2022 searched 1e-4..1e-3);
* (IA)^3: 3e-3 (Liu et al., 2022);
* prompt tuning: 3e-2 (Lester et al., 2021 used 0.3 with Adafactor; 3e-2 is
  the usual AdamW rate, as in PEFT's prompt-tuning examples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["HEAD", "METHODS", "Method", "prepare"]

# Re-train the new classifier (weight and bias): part of every adaptlang spec below.
HEAD = """
tune head {
    params  classifier
}
"""

SPECS = {
    # specs/sentiment.adapt's deltas: LoRA r=8 on the queries and values of every layer.
    "lora": """adaptlang 1
lora qv {
    on      encoder.layer[*].attention.self.{query, value}
    rank    8
    alpha   16
    dropout 0.1
}
""" + HEAD,
    # Houlsby et al. (2019): after each block's attention output and after its MLP, before the
    # residual and LayerNorm (BERT's *.output.dense), size 32.
    "adapter": """adaptlang 1
adapter attn {
    after   encoder.layer[*].attention.output.dense
    size    32
    act     gelu
}
adapter mlp {
    after   encoder.layer[*].output.dense
    size    32
    act     gelu
}
""" + HEAD,
    # Ben Zaken et al. (2022): every bias; the classifier's bias belongs to the head delta.
    "bitfit": """adaptlang 1
tune biases {
    params  **.bias except classifier.bias
}
""" + HEAD,
    # Lester et al. (2021): 20 virtual tokens from random vocabulary embeddings.
    "prompt": """adaptlang 1
prompt soft {
    tokens  20
    init    vocab
}
""" + HEAD,
    # Liu et al. (2022): rescale keys and values, and the MLP's inner activations (the input of
    # each block's output.dense), as PEFT's IA3 defaults for BERT name them.
    "ia3": """adaptlang 1
ia3 scale {
    on          encoder.layer[*].{attention.self.key, attention.self.value, output.dense}
    feedforward true for output.dense
}
""" + HEAD,
    "head": "adaptlang 1\n" + HEAD,
}


@dataclass(frozen=True)
class Method:
    """One row of the table.

    Attributes:
        key: Short name (``--methods`` takes these).
        label: What the table shows.
        lr: Peak learning rate (AdamW, linear decay after warm-up).
        how: ``"spec"`` (adaptlang, ``SPECS[key]``), ``"peft-lora"`` or ``"full"``.
    """

    key: str
    label: str
    lr: float
    how: str


METHODS = (
    Method("head", "frozen encoder + head (adaptlang tune)", 1e-3, "spec"),
    Method("full", "full fine-tuning", 5e-5, "full"),
    Method("lora", "LoRA q,v r=8 (adaptlang)", 5e-4, "spec"),
    Method("peft-lora", "LoRA q,v r=8 (PEFT)", 5e-4, "peft-lora"),
    Method("adapter", "bottleneck adapters, Houlsby, size 32 (adaptlang)", 5e-4, "spec"),
    Method("bitfit", "BitFit (adaptlang)", 1e-3, "spec"),
    Method("ia3", "(IA)^3 k,v,ff (adaptlang)", 3e-3, "spec"),
    Method("prompt", "prompt tuning, 20 tokens (adaptlang)", 3e-2, "spec"),
)


def prepare(method: Method, model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """Makes ``model`` trainable the method's way.

    Args:
        method: The method.
        model: A fresh ``BertForSequenceClassification`` (its classifier newly initialised).

    Returns:
        ``(model to train, trainable parameter count)``; the model is the same object except for
        PEFT, which wraps it.

    Raises:
        AssertionError: adaptlang's own count of trainable parameters differs from the
            ``requires_grad`` parameters the Trainer will optimise.
    """
    if method.how == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model, _requires_grad(model)
    if method.how == "peft-lora":
        import peft

        config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                 target_modules=["query", "value"], modules_to_save=["classifier"])
        wrapped = peft.get_peft_model(model, config)
        return wrapped, _requires_grad(wrapped)
    import adaptlang

    adapted = adaptlang.apply(model, SPECS[method.key])
    count = sum(p.numel() for _, p in adapted.trainable_parameters())
    assert count == _requires_grad(model), (method.key, count, _requires_grad(model))
    return model, count


def _requires_grad(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
