"""Gradient accumulation trains as one big batch, whatever the head's loss does with ``num_items_in_batch``.

The ``Trainer`` divides each micro-batch's loss by ``gradient_accumulation_steps`` only when it
believes the model does not normalise the loss itself, and it believes that whenever ``forward``
takes ``**kwargs``. BERT's classification head and T5's seq2seq head take ``**kwargs`` but average
their loss per micro-batch (transformers issue #47688), so without care two micro-batches of 4 rows
give twice the gradient and twice the logged loss of one batch of 8. Reference: the same rows in one
batch (``--grad-accum 1``); one optimizer step each (8 rows, 1 epoch), no dropout, equal-length rows,
so the mean of the two micro-batch means is the mean over all 8 rows exactly.
"""

from __future__ import annotations

import pytest
import torch

from adaptlang.bundles.bundle import read_bundle
from adaptlang.training.run import TrainConfig, train
from tests.training.support import LLAMA_SPEC, tokenizer_folder, write_jsonl

BERT_SPEC = """adaptlang 1
model bert-base

lora qv {
    on      encoder.layer[*].attention.self.{query, value}
    rank    4
}

tune head {
    params  classifier
}

task main = qv + head
"""

T5_SPEC = """adaptlang 1
model t5-base

lora attn {
    on      block[*].layer[0].SelfAttention.{q, v}
    rank    4
}

task main = attn
"""

#: Eight rows of equal length (three words each, and two-word targets).
WORDS = "cat dog sat ran mat rug fast slow".split()
CLASSIFY = [{"text": f"the {w} is", "label": ["bad", "good"][i % 2]} for i, w in enumerate(WORDS)]
TRANSLATE = [{"source": f"translate the {w}", "target": f"a {w}"} for w in WORDS]
#: Llama's head does normalise by num_items_in_batch (its loss_function): the control case.
TEXT = [{"text": f"the {w} is"} for w in WORDS]


@pytest.mark.parametrize("preset, spec, rows, eos", [("tiny-bert", BERT_SPEC, CLASSIFY, False),
                                                     ("tiny-t5", T5_SPEC, TRANSLATE, True),
                                                     ("tiny-llama", LLAMA_SPEC, TEXT, False)],
                         ids=["bert-classification", "t5-seq2seq", "llama-causal-lm"])
def test_two_micro_batches_train_like_one_batch(tmp_path, preset, spec, rows, eos):
    spec_file = tmp_path / "s.adapt"
    spec_file.write_text(spec, encoding="utf-8")
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    tokenizer = tokenizer_folder(tmp_path / "tok", eos_after=eos)
    results = {}
    for batch, accum in ((8, 1), (4, 2)):
        result = train(TrainConfig(spec=spec_file, model=preset, data=data, task="lm" if spec is LLAMA_SPEC else "main", tokenizer=tokenizer,
                                   out=tmp_path / f"out{accum}", epochs=1, batch_size=batch, grad_accum=accum))
        assert result.record["steps"] == 1
        results[accum] = result.record["train_loss"], read_bundle(result.bundle).tensors
    (loss1, tensors1), (loss2, tensors2) = results[1], results[2]
    assert loss2 == pytest.approx(loss1, rel=1e-5)  # unscaled: twice loss1
    for key in tensors1:  # one AdamW step with gradient clipping: a doubled gradient is clipped differently
        assert torch.allclose(tensors1[key], tensors2[key], atol=1e-6), key
