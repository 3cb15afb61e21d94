"""Who may name a ``package.module:factory``: the user, not a file.

A factory reference imports a module and calls a function, which can do
anything (``os:abort`` kills the process, ``sys:exit`` ends it with status
0, so a CI gate passes). A reference the caller names itself (``--model``,
an argument from Python) runs; one read from a file (a spec's ``model``
statement, an ``adapt.lock`` entry, an adapter's ``base_model_name_or_path``,
a bundle's model name) is refused unless the user opts in: ``--allow-factory``
on the command line, ``allow_factory=True`` in Python. Callers state where a
reference came from (:func:`adaptlang.plan.models.load_model`'s
``allow_factory``); nothing here guesses it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from adaptlang.errors import Diagnostic, UsageError
from adaptlang.plan.presets import PRESETS

__all__ = ["ALLOW_FACTORY_FLAG", "FACTORY_REF", "FactoryRefusedError", "is_factory_ref", "refuse_factory"]

#: ``package.module:factory`` (dotted identifiers on both sides of one colon).
FACTORY_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

#: The command-line flag that lets a model reference read from a file name a factory.
ALLOW_FACTORY_FLAG = "--allow-factory"


class FactoryRefusedError(UsageError):
    """A ``pkg.module:factory`` reference read from a file, which is not run without the user's consent.

    Importing a module and calling one of its functions runs arbitrary code
    (``os:abort`` kills the process, ``sys:exit`` ends it with status 0), so a
    factory runs only when the user names it (``--model``, or a reference
    passed from Python) or opts in for files (``--allow-factory``,
    ``allow_factory=True``). A usage error: exit 2.
    """


def is_factory_ref(ref: Any) -> bool:
    """True when ``ref`` would be loaded as ``package.module:factory`` (not a preset nor an existing path)."""
    if not isinstance(ref, str):
        return False
    ref = ref.strip()
    if ref in PRESETS or not FACTORY_REF.match(ref):
        return False
    try:
        return not Path(ref).expanduser().exists()
    except (OSError, ValueError):
        return True


def refuse_factory(ref: Any, where: str, what: str = "the model reference") -> None:
    """Raises :class:`FactoryRefusedError` when ``ref``, read from a file, names a factory.

    Args:
        ref: A model reference read from a file.
        where: The file it was read from (``"s.adapt"``, ``"adapt.lock"``),
            named first in the message, like any located error.
        what: What in that file holds it (``"the model statement"``).

    Raises:
        FactoryRefusedError: ``ref`` is ``package.module:factory``.
    """
    if is_factory_ref(ref):
        shown = str(ref).strip()
        raise FactoryRefusedError(Diagnostic(
            f"{what} names the Python factory '{shown}'; importing it would run code that a file chose, "
            "which adaptlang does not do unless told to", obj=where,
            hint=f"if you trust this file, pass {ALLOW_FACTORY_OPTION_HINT}; or name the model yourself "
                 "with --model"))


#: How to allow a factory named by a file, from the command line and from Python.
ALLOW_FACTORY_OPTION_HINT = f"{ALLOW_FACTORY_FLAG} (allow_factory=True from Python)"
