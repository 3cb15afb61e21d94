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


# --- cli: paths and files written ------------------------------------------------

#: Characters in one ``--set NAME=VALUE`` value. A real value is a rank, a
#: dropout or a scale (``16``, ``0.05``, ``1e-4``; a float's longest repr is
#: 24 characters); 300 nines, or 5,000 digits (past Python's int-string
#: limit), is not a setting.
SET_VALUE_MAX_CHARS = 100
