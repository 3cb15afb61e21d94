"""Training on real input: ``adaptc train`` and ``adaptc predict`` (the layer above bundles).

Reads data files with Hugging Face ``datasets``, builds the objective the
model and data call for, and trains with the Hugging Face ``Trainer``; the
result is one bundle per task (see :mod:`adaptlang.bundles`).
"""
