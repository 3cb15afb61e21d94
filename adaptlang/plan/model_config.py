"""Reading a model folder's ``config.json`` within the plan limits.

A model folder may come from a stranger (a hub download, a pull request), so
its ``config.json`` is read like every such file (:mod:`adaptlang.textfile`:
a regular file, at most ``MAX_CONFIG_BYTES``), must be a JSON object nested
at most ``MAX_CONFIG_DEPTH`` deep, and may not name more layers or experts
than ``MAX_CONFIG_LAYERS`` or a width past ``MAX_CONFIG_WIDTH``: building
10**8 layers on the meta device would not finish (:mod:`adaptlang.limits`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adaptlang.errors import Diagnostic, UsageError
from adaptlang.limits import (MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_CONFIG_LAYERS, MAX_CONFIG_WIDTH,
                              MAX_NUM_LABELS)
from adaptlang.textfile import FileProblem, read_text_file

__all__ = ["read_config"]


#: ``config.json`` fields that count layers or experts (each costs modules to build).
_COUNT_FIELDS = frozenset({
    "num_hidden_layers", "num_layers", "n_layer", "n_layers", "num_decoder_layers", "num_encoder_layers",
    "encoder_layers", "decoder_layers", "num_local_experts", "num_experts", "n_routed_experts",
    "n_shared_experts", "num_experts_per_tok", "moe_num_experts", "num_attention_heads", "num_key_value_heads",
    "n_head", "num_heads", "encoder_attention_heads", "decoder_attention_heads",
})
#: ``config.json`` fields that are widths or lengths (each sizes a tensor).
_WIDTH_FIELDS = frozenset({
    "hidden_size", "intermediate_size", "vocab_size", "d_model", "d_ff", "d_kv", "n_embd", "n_inner",
    "head_dim", "moe_intermediate_size", "shared_expert_intermediate_size", "embedding_size",
    "max_position_embeddings", "n_positions", "n_ctx", "type_vocab_size", "encoder_ffn_dim", "decoder_ffn_dim",
    "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
    "relative_attention_num_buckets", "relative_attention_max_distance", "sliding_window",
})


def read_config(config_file: Path, shown: str) -> dict[str, Any]:
    """Reads a model folder's ``config.json`` within the plan limits (:mod:`adaptlang.limits`).

    The folder may come from a stranger (a hub download, a pull request), so
    the file must be a regular file of at most ``MAX_CONFIG_BYTES``, a JSON
    object nested at most ``MAX_CONFIG_DEPTH`` deep, with every layer or
    expert count at most ``MAX_CONFIG_LAYERS`` and every width at most
    ``MAX_CONFIG_WIDTH`` (building 10**8 layers on meta would not finish).

    Raises:
        UsageError: Naming the file, and the field and limit where one is past.
    """
    try:
        text = read_text_file(config_file, MAX_CONFIG_BYTES, what="a config.json (MAX_CONFIG_BYTES)")
    except FileProblem as problem:
        raise UsageError(Diagnostic(f"cannot read {shown}: {problem.message}", obj=shown,
                                    hint=problem.hint)) from None
    try:
        raw = json.loads(text)
    except RecursionError:  # the C parser recurses per level: ~1,000 levels end here
        raise UsageError(Diagnostic(
            f"{shown} is nested too deep (more than {MAX_CONFIG_DEPTH} levels, MAX_CONFIG_DEPTH)", obj=shown,
            hint="a transformers config.json is a few levels deep; this file is damaged or hostile")) from None
    except ValueError as exc:
        raise UsageError(Diagnostic(f"cannot read {shown}: not JSON ({exc})", obj=shown)) from None
    if not isinstance(raw, dict):
        raise UsageError(Diagnostic(f"{shown} is not a JSON object (it is a {type(raw).__name__})", obj=shown,
                                    hint="a transformers config.json is an object: {\"model_type\": ...}"))
    _check_config_sizes(raw, shown)
    return raw


def _shown_number(value: float) -> str:
    """A number for a message: never converted to float (a 400-digit integer overflows)."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"


def _check_config_sizes(raw: dict[str, Any], shown: str) -> None:
    """Checks nesting depth, counts and widths over every object in a config (iteratively).

    Raises:
        UsageError: The first field past its limit, by its dotted path.
    """
    todo: list[tuple[Any, str, int]] = [(raw, "", 1)]
    while todo:
        node, where, depth = todo.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise UsageError(Diagnostic(
                f"{shown} is nested too deep at '{where}' (more than {MAX_CONFIG_DEPTH} levels, "
                "MAX_CONFIG_DEPTH)", obj=shown, hint="a transformers config.json is a few levels deep"))
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            field = f"{where}.{key}" if where else str(key)
            if isinstance(value, (dict, list)):
                todo.append((value, field, depth + 1))
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            limit = (MAX_CONFIG_LAYERS, "MAX_CONFIG_LAYERS") if key in _COUNT_FIELDS else \
                (MAX_CONFIG_WIDTH, "MAX_CONFIG_WIDTH") if key in _WIDTH_FIELDS else \
                (MAX_NUM_LABELS, "MAX_NUM_LABELS") if key == "num_labels" else None
            if limit is not None and not value <= limit[0]:  # `not <=`: NaN is past too
                raise UsageError(Diagnostic(
                    f"{shown}: '{field}' is {_shown_number(value)}, past the limit of {limit[0]:,} ({limit[1]})",
                    obj=shown, hint="real models are far smaller; this config.json is damaged or hostile"))
