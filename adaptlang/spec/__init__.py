"""The spec layer: a checked, model-independent meaning of a ``.adapt`` file.

``load_spec(path_or_text, constants=None)`` parses, checks and lowers a spec
(with the files it ``use``s) into a :class:`~adaptlang.spec.model.Spec`.
"""

from __future__ import annotations

from adaptlang.spec.lower import load_spec
from adaptlang.spec.model import (
    OVERRIDABLE, AdapterDelta, Delta, IA3Delta, LoraDelta, Override, PromptDelta, PromptInit, Quantize,
    SparseDelta, Spec, Task, TaskTerm, TuneDelta,
)

__all__ = [
    "OVERRIDABLE", "AdapterDelta", "Delta", "IA3Delta", "LoraDelta", "Override", "PromptDelta",
    "PromptInit", "Quantize", "SparseDelta", "Spec", "Task", "TaskTerm", "TuneDelta", "load_spec",
]
