"""Hugging Face hub ids (``org/name``) as model references, through ``huggingface_hub``'s cache.

STUB: to be implemented (issue 15, part 3).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["local_model_dir"]


def local_model_dir(ref: str, *, weights: bool = False) -> Path | None:
    """Returns a local folder holding the hub model ``ref``, or None when ``ref`` is no hub id.

    Args:
        ref: A model reference as ``--model`` takes it.
        weights: False: only ``config.json`` is needed (compile, check);
            True: the weights and tokenizer files too (train, predict).

    Raises:
        UsageError: ``ref`` looks like a hub id but cannot be fetched (offline
            with no cached copy, unknown repository, ...).
    """
    return None
