"""``--head``, ``--num-labels`` and ``--allow-factory``: how a model reference is built.

A Hugging Face directory builds the class its ``config.json`` names (for
all-MiniLM-L6-v2 the bare ``BertModel``, which has no ``classifier``), and a
preset the class of its table. ``--head sequence-classification`` builds the
same model with a classification head instead, so a spec that tunes
``classifier`` binds from the CLI as it does from Python on a
``BertForSequenceClassification``. The commands that take ``--model``
(``compile``, ``check``, ``match``, ``inspect``, ``lock``, ``diff``) share
these options.

The choices are spelt out here rather than read from
:data:`adaptlang.plan.models.HEADS`, which imports torch: ``adaptc check``
without a model never does. A test keeps the two lists equal.

``--allow-factory`` lets a model reference read from a file (a spec's
``model`` statement, an ``adapt.lock`` entry, an adapter's
``base_model_name_or_path``) name a ``pkg.module:factory``, which imports and
runs Python code. Without it such a reference is refused (exit 2); one given
with ``--model`` always runs, since the user named it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

import typer

__all__ = ["ALLOW_FACTORY_OPTION", "Head", "HEAD_OPTION", "NUM_LABELS_OPTION", "head_kwargs"]


class Head(str, Enum):
    """``--head`` values (the keys of :data:`adaptlang.plan.models.HEADS`)."""

    sequence_classification = "sequence-classification"
    causal_lm = "causal-lm"
    seq2seq_lm = "seq2seq-lm"
    base = "base"


HEAD_OPTION: Any = typer.Option(
    None, "--head",
    help="Build the model with this task head (e.g. sequence-classification on a bare BertModel folder); "
         "not for pkg.module:factory.",
)
NUM_LABELS_OPTION: Any = typer.Option(
    None, "--num-labels", min=1,
    help="Labels of the classification head (implies --head sequence-classification; default 2).",
)

ALLOW_FACTORY_OPTION: Any = typer.Option(
    False, "--allow-factory",
    help="Let a model named in a file (the spec's model statement, a lock entry, an adapter config) be a "
         "pkg.module:factory, which runs its Python code. Off by default: such files are refused.",
)


def head_kwargs(head: Optional[Head], num_labels: Optional[int]) -> dict[str, Any]:
    """Returns ``{"head": ..., "num_labels": ...}`` for ``compile_plan``/``resolve_signature`` (set ones only)."""
    out: dict[str, Any] = {}
    if head is not None:
        out["head"] = head.value
    if num_labels is not None:
        out["num_labels"] = int(num_labels)
    return out
