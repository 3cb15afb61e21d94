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
#: Bytes (and characters) in one spec file. Far past a 1,000-line spec (~30 KB), and past a
#: generated 10 MB spec of 200,000 deltas (it loads in ~45 s with ~2.1 GB: the AST and the spec
#: cost ~200 bytes per byte of source), so one file stays under ~75 s and ~3.5 GB.
MAX_SPEC_FILE_BYTES = 16 * 1024 * 1024
#: Characters in one string literal. Soft-prompt init texts are the longest real strings
#: (a few KB); 1 MiB leaves room for a long document pasted in while bounding one token.
MAX_STRING_LITERAL_CHARS = 1024 * 1024
#: Characters in one number literal (`rank 8`, `0.25`, `1e-4`, `5%`). Python refuses to turn
#: more than 4,300 digits into an int; no real value needs more than ~20.
MAX_NUMBER_LITERAL_CHARS = 100
#: Brackets and unary minus signs open at once: `(`, `{`, `[`, `frozen(`, `-`. Real specs use
#: 3 or 4; every later tree walk recurses on nesting, so this bounds their depth too.
#: Long flat chains (`1 + 1 + ... + 1`) are not nesting and have no limit.
MAX_NESTING_DEPTH = 100
#: Errors reported per file; the rest are counted in one closing note (a generated spec with
#: one mistake repeated 20,000 times would otherwise print 20,000 errors).
MAX_ERRORS_PER_FILE = 100
#: Names a "did you mean" hint compares against; past it, no hint (one comparison per name per
#: error made 20,000 unknown names among 20,000 constants quadratic). Real specs have tens.
MAX_SUGGESTION_CANDIDATES = 300


# --- spec: lowering, constants, `use` --------------------------------------------


# --- plan: models, configs, selectors --------------------------------------------


# --- bundles: manifests, headers, PEFT folders -----------------------------------


# --- cli: paths and files written ------------------------------------------------
