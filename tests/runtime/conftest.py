"""Shared helpers for runtime tests: tiny models, exact-state snapshots, a tokenizer.

Models are built from configs with random weights (no hub access). State
snapshots compare *objects* (same module and parameter objects at every
path), values (bit-identical), flags, hooks and attribute names, which is
what "the model exactly as before" means.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tests.model_state import assert_same_state, capture_state



@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Two shared cores: keep each test on one thread and deterministic."""
    torch.set_num_threads(1)
    torch.manual_seed(0)


def tiny_llama(seed: int = 0, vocab: int = 64) -> nn.Module:
    """A 2-layer Llama (hidden 32, 4 heads, 2 KV heads), fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0) -> nn.Module:
    """A 2-layer GPT-2 (hidden 32), fp32, eval mode, no dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_bert(seed: int = 0) -> nn.Module:
    """A 2-layer BERT masked LM (hidden 32), fp32, eval mode, no dropout."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForMaskedLM(cfg).eval()


def tiny_t5(seed: int = 0) -> nn.Module:
    """A 2+2-layer T5 (d_model 32), fp32, eval mode, no dropout."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0)
    return T5ForConditionalGeneration(cfg).eval()


def lm_batch(batch: int = 2, length: int = 7, vocab: int = 64, seed: int = 1) -> dict[str, torch.Tensor]:
    """A causal-LM batch with left padding in row 0: input_ids, attention_mask, labels."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, :2] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def changed_params(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    """Names of parameters whose values differ from ``before`` (a named clone)."""
    now = dict(model.named_parameters())
    return {k for k, v in before.items() if k in now and not torch.equal(now[k].detach(), v)}


def clone_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """A clone of every named parameter's value."""
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def word_tokenizer(tmp_path: Any, vocab: int = 64) -> Any:
    """A real HF fast tokenizer (word level, ``vocab`` ids), saved under ``tmp_path``.

    Returns:
        The tokenizer; ``tmp_path / "tok"`` holds it for ``AutoTokenizer``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>"] + [f"w{i}" for i in range(vocab - 7)] + ["answer", "the", "question", ":", "now"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")
    fast.save_pretrained(str(tmp_path / "tok"))
    return fast


class Helpers:
    """The helpers above, handed to tests as the ``rt`` fixture.

    Why a fixture: test directories have no ``__init__.py``, so importing
    ``conftest`` by name could pick up another directory's conftest.
    """

    tiny_llama = staticmethod(tiny_llama)
    tiny_gpt2 = staticmethod(tiny_gpt2)
    tiny_bert = staticmethod(tiny_bert)
    tiny_t5 = staticmethod(tiny_t5)
    lm_batch = staticmethod(lm_batch)
    capture_state = staticmethod(capture_state)
    assert_same_state = staticmethod(assert_same_state)
    changed_params = staticmethod(changed_params)
    clone_params = staticmethod(clone_params)
    word_tokenizer = staticmethod(word_tokenizer)


@pytest.fixture
def rt() -> Helpers:
    """Runtime test helpers (tiny models, exact-state checks, a tokenizer)."""
    return Helpers()
