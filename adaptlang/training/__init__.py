"""Training on real input: ``adaptc train`` (the layer above bundles).

Reads data files with Hugging Face ``datasets``, builds the objective the
model and data call for, and trains with the Hugging Face ``Trainer``; the
result is the task's bundle with a training record (see
:mod:`adaptlang.bundles`). The entry point is
:func:`adaptlang.training.run.train`; modules, in the order a run uses them:

* :mod:`~adaptlang.training.data` — reading and checking data files;
* :mod:`~adaptlang.training.objective` — the objective and the label ids;
* :mod:`~adaptlang.training.arguments` — ``TrainingArguments`` (defaults, file, flags);
* :mod:`~adaptlang.training.pretrained` — real weights, the head, the tokenizer;
* :mod:`~adaptlang.training.encode` — tokenizing, length checks, collators;
* :mod:`~adaptlang.training.prepare` — all of the above, cheapest check first;
* :mod:`~adaptlang.training.checkpoints` — adapter-only checkpoints;
* :mod:`~adaptlang.training.progress` — the :class:`Reporter` interface;
* :mod:`~adaptlang.training.record` — the training record, the run identity;
* :mod:`~adaptlang.training.run` — the ``Trainer`` run and the bundle;
* :mod:`~adaptlang.training.quiet` — Hugging Face libraries' output off.

Nothing here is imported by ``import adaptlang``: it needs ``transformers``,
``datasets`` and ``accelerate``.
"""
