"""Limits no real input reaches, so a hostile or broken file fails fast and clearly.

Specs, lock files, bundles and PEFT adapter folders travel between people, and
``adaptc`` runs on files from strangers (pre-commit hooks, CI). Each limit here
bounds the time or memory one input can cost; going past one is a located
``AdaptError`` (exit 1) that names the limit, never a hang, a ``RecursionError``
or gigabytes of memory. ``docs/limits.md`` lists them for users.

This module sits beside :mod:`adaptlang.errors` at the bottom of the layers:
every layer may import it.
"""

from __future__ import annotations

# --- syntax: the parser and the tree builder -------------------------------------


# --- spec: lowering, constants, `use` --------------------------------------------


# --- plan: models, configs, selectors --------------------------------------------


# --- bundles: manifests, headers, PEFT folders -----------------------------------

#: Bytes of a safetensors JSON header (safetensors' own reader stops at 100 MB too).
#: A 70B model's LoRA bundle header, manifest included, is under 2 MB.
BUNDLE_MAX_HEADER_BYTES = 100_000_000
#: Nesting depth of a bundle header, its manifest, or an ``adapter_config.json``. A manifest
#: nests about 8 deep (manifest > task_plan > deltas > delta > sites > site > shared_with);
#: Python's json module fails near 1,000 with a RecursionError, which this limit pre-empts.
BUNDLE_MAX_JSON_DEPTH = 64
#: Largest magnitude of a real-valued property read from a bundle or PEFT config (alpha,
#: adapter scale, task weights, PEFT lora_alpha). Real values are below 1e4; past about
#: 1e30 a LoRA's scaling times its product overflows float32 and every output is NaN.
BUNDLE_MAX_PROPERTY_MAGNITUDE = 1e9
#: Characters of one ``rank_pattern``/``alpha_pattern`` key or ``feedforward_modules`` regex in an
#: ``adapter_config.json``. PEFT writes module paths (under 200 characters).
BUNDLE_MAX_PATTERN_CHARS = 1_000
#: Characters of a PEFT ``prompt_tuning_init_text``: it becomes a string literal in the imported
#: spec. Real ones are a sentence or a paragraph.
BUNDLE_MAX_PEFT_TEXT_CHARS = 100_000


# --- cli: paths and files written ------------------------------------------------

#: Characters in one ``--set NAME=VALUE`` value. A real value is a rank, a
#: dropout or a scale (``16``, ``0.05``, ``1e-4``; a float's longest repr is
#: 24 characters); 300 nines, or 5,000 digits (past Python's int-string
#: limit), is not a setting.
SET_VALUE_MAX_CHARS = 100
