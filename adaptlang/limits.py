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
#: Largest magnitude of any number computed in a spec: every operand and result of
#: ``let`` and task-weight arithmetic, every ``let`` value and ``--set`` value. Keeps
#: arithmetic exact (below 2**53), finite and cheap (no big-integer squaring).
MAX_SPEC_NUMBER = 1e15
#: Largest ``rank``, adapter ``size``, prompt ``tokens`` and quantize ``block``
#: (a 405B model is 16,384 wide; full-rank LoRA on it is 64x below this).
MAX_WIDTH_PROPERTY = 1 << 20
#: Largest ``alpha``, ``|scale|`` and ``reduction`` (real ones are below 1,000).
MAX_SCALE_PROPERTY = 1e6
#: Smallest adapter ``reduction`` (0.001: a bottleneck 1,000 times the model's width).
MIN_REDUCTION = 1e-3
#: Largest sparse ``seed`` (torch's manual_seed takes 64-bit seeds).
MAX_SEED = (1 << 63) - 1
#: Largest weight of a delta in a task, after weights are multiplied and added
#: through nested tasks (real weights are 0.1 to 10).
MAX_TASK_WEIGHT = 1e6
#: Deepest chain of ``use`` (a uses b uses c ...); real specs use one or two levels.
MAX_USE_DEPTH = 64
# MAX_SPEC_FILE_BYTES (syntax section) bounds the root spec file and every file it ``use``s.


# --- plan: models, configs, selectors --------------------------------------------
#: Largest model ``config.json``, in bytes (real ones are under 1 MB, even with
#: 20,000 class labels).
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: Deepest nesting of objects and arrays in a ``config.json`` (real ones: 3 or 4).
MAX_CONFIG_DEPTH = 64
#: Largest count of layers or experts a ``config.json`` may name (``num_hidden_layers``,
#: ``n_layer``, ``num_local_experts``, ...): real models have under 200 layers and
#: 400 experts; building a meta model costs time per layer.
MAX_CONFIG_LAYERS = 10_000
#: Largest width a ``config.json`` may name (``hidden_size``, ``vocab_size``,
#: ``max_position_embeddings``, ...): real ones are under 300,000, contexts
#: under 11 million.
MAX_CONFIG_WIDTH = 1 << 28
#: Most labels of a classification head (``num_labels`` in a ``config.json``, an
#: ``adapt.lock`` entry, ``--num-labels``): transformers builds an ``id2label`` entry
#: per label, so 10**12 took all memory. Real heads have under 22,000 (ImageNet-21k).
MAX_NUM_LABELS = 1_000_000


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
#: Repetition operators (``*``, ``+``, ``?``, ``{m,n}``) in one such pattern. Matching
#: backtracks as the path length to this power; real keys are module paths (none) or use
#: one (``layers\.\d+\.q_proj``).
BUNDLE_MAX_PATTERN_QUANTIFIERS = 2
#: Characters of a PEFT ``prompt_tuning_init_text``: it becomes a string literal in the imported
#: spec. Real ones are a sentence or a paragraph.
BUNDLE_MAX_PEFT_TEXT_CHARS = 100_000
#: Bytes of an ``adapt.lock`` (a few hundred bytes per spec; real ones are under 100 KB).
MAX_LOCK_FILE_BYTES = 16 * 1024 * 1024


# --- cli: paths and files written ------------------------------------------------

#: Characters in one ``--set NAME=VALUE`` value. A real value is a rank, a
#: dropout or a scale (``16``, ``0.05``, ``1e-4``; a float's longest repr is
#: 24 characters); 300 nines, or 5,000 digits (past Python's int-string
#: limit), is not a setting.
SET_VALUE_MAX_CHARS = 100
