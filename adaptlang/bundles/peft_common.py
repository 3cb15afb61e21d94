"""What adaptlang and PEFT's adapter format agree on: key names, task types, module patterns.

A PEFT adapter folder is ``adapter_config.json`` plus
``adapter_model.safetensors`` whose keys are the base model's module paths
under ``base_model.model.``, followed by PEFT's parameter names:

=============================  ===========================================  =====================
adaptlang local name           PEFT key suffix                              shape
=============================  ===========================================  =====================
``lora_A``                     ``.lora_A.weight`` (Embedding: ``.lora_embedding_A``)    (r, in)
``lora_B``                     ``.lora_B.weight`` (Embedding: ``.lora_embedding_B``)    (out, r)
``lora_bias``                  ``.lora_B.bias``                             (out,)
``magnitude`` (DoRA)           ``.lora_magnitude_vector``                   (out,)
``ia3_l``                      ``.ia3_l``                                   (out, 1); feedforward (1, in)
prompt ``weight``              ``prompt_embeddings`` (no prefix)            (tokens, dim)
=============================  ===========================================  =====================

(checked against ``peft.get_peft_model_state_dict`` in the tests). The layer
kind (Embedding, GPT-2 ``Conv1D``, Linear) is read from the plan site's
``module`` class name.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable

__all__ = [
    "PREFIX", "is_conv1d", "is_embedding", "match_pattern_key", "most_common", "peft_task_type", "target_modules",
]

#: PEFT's prefix for module paths of the base model.
PREFIX = "base_model.model."


def is_embedding(cls: str | None) -> bool:
    """True for an embedding layer class name (``Embedding`` and named subclasses such as ``*ScaledWordEmbedding``)."""
    return bool(cls) and cls.endswith("Embedding")


def is_conv1d(cls: str | None) -> bool:
    """True for GPT-2's ``Conv1D`` (weights stored (in, out): PEFT's ``fan_in_fan_out``)."""
    return cls == "Conv1D"


def peft_task_type(model_cls: str) -> str | None:
    """Returns PEFT's ``task_type`` for a model class name, or None for a bare model.

    Only the task types whose PEFT wrapper leaves a LoRA/IA3 forward
    unchanged are named; others (classification heads, which PEFT would
    also re-train) get None, which ``PeftModel`` accepts.
    """
    if model_cls.endswith(("ForCausalLM", "LMHeadModel")):
        return "CAUSAL_LM"
    if model_cls.endswith(("ForConditionalGeneration", "ForSeq2SeqLM")):
        return "SEQ_2_SEQ_LM"
    return None


#: A module path as torch names them: dotted identifiers and list indices, nothing a regex repeats.
MODULE_PATH = re.compile(r"[\w.-]*\Z")


def match_pattern_key(patterns: Iterable[str], module: str) -> str | None:
    """Returns the first ``rank_pattern``/``alpha_pattern`` key that matches a module path, as PEFT does.

    PEFT (``peft.utils.other.get_pattern_key``) matches ``(.*\\.)?(KEY)$``
    with ``re.match``, in the dict's order.
    """
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def _suffix_matches(name: str, path: str) -> bool:
    """PEFT's rule for a ``target_modules`` list entry: the whole path or its last segments."""
    return path == name or path.endswith("." + name)


def target_modules(paths: list[str], structure: dict[str, str] | None) -> list[str]:
    """Returns the shortest exact ``target_modules`` list for these module paths.

    The module names (last segments) are used when, in the recorded model
    structure, they match exactly these paths; otherwise the full paths
    (each matching only itself).
    """
    names = sorted({path.rsplit(".", 1)[-1] for path in paths})
    if structure:
        hit = {p for p in structure if any(_suffix_matches(n, p) for n in names)}
        if hit == set(paths):
            return names
    return sorted(paths)


def pattern_key(path: str, structure: dict[str, str] | None) -> str:
    """Returns a rank/alpha pattern key that matches exactly ``path`` among the model's modules."""
    others = [p for p in (structure or {}) if p != path]
    if not MODULE_PATH.match(path):  # a forged bundle: a path used as a pattern must not be one
        return "^" + re.escape(path)
    if not any(re.match(rf"(.*\.)?({path})$", p) for p in others):
        return path
    return "^" + re.escape(path)


def most_common(values: Iterable[Any]) -> Any:
    """Returns the most frequent value (ties: the smallest), for the config's global ``r``/``lora_alpha``."""
    counts = Counter(values)
    best = max(counts.values())
    return min(v for v, c in counts.items() if c == best)
