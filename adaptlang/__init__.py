"""adaptlang: a declarative language and compiler for parameter-efficient fine-tuning.

The Python API in four calls::

    import adaptlang
    spec = adaptlang.parse("specs/multitask.adapt")          # -> Spec
    plan = adaptlang.compile(spec, model="llama")              # -> Plan (no weights needed)
    adapted = adaptlang.apply(model, plan, task="sentiment")   # patches a real model
    adapted = adaptlang.load(model, "bundles/sentiment.safetensors")

Every error a user can cause raises :class:`AdaptError` carrying diagnostics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adaptlang.errors import AdaptError, BindError, BundleError, DataError, Diagnostic, SpecError, UsageError

__version__ = "0.1.0"

__all__ = [
    "AdaptError", "BindError", "BundleError", "DataError", "Diagnostic", "SpecError", "UsageError",
    "apply", "compile", "handle", "load", "parse", "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from adaptlang.plan.plan import Plan
    from adaptlang.spec.model import Spec


def parse(path_or_text: Any) -> "Spec":
    """Parses and checks a spec (a path, or the text of one) without a model.

    Args:
        path_or_text: A ``.adapt`` path (``str`` or ``Path``) or spec source text.

    Returns:
        The checked :class:`~adaptlang.spec.model.Spec`.

    Raises:
        SpecError: With a diagnostic per problem found.
    """
    from adaptlang.spec import load_spec

    return load_spec(path_or_text)


def compile(spec_or_path: Any, model: Any = None, **kwargs: Any) -> "Plan":  # noqa: A001 - public name
    """Binds a spec to a model and returns the plan.

    Args:
        spec_or_path: A Spec, a path, or spec text.
        model: A preset name (``"llama"``), a Hugging Face model directory,
            ``"pkg.module:factory"``, or an ``nn.Module``. Defaults to the
            spec's ``model`` statement.
        **kwargs: Passed to :func:`adaptlang.plan.compiler.compile_plan`:
            ``overrides``, ``name``, and ``head``/``num_labels`` to build a
            model reference with a task head (``head="sequence-classification"``),
            and ``allow_factory=True`` to let the spec's own ``model`` statement
            name a ``pkg.module:factory`` (a file may not run code by default;
            a factory passed as ``model`` is yours and always runs).

    Returns:
        The :class:`~adaptlang.plan.plan.Plan`.
    """
    from adaptlang.plan.compiler import compile_plan

    return compile_plan(spec_or_path, model, **kwargs)


def apply(model: Any, spec_or_plan: Any, **kwargs: Any) -> Any:
    """Patches ``model`` in place with the deltas of a spec or plan.

    See :func:`adaptlang.runtime.adapted.apply` for the arguments. Returns a
    :class:`~adaptlang.bundles.BundleAdapted`: the runtime's ``Adapted`` plus
    ``save(dir)`` (one bundle per task) and ``export_peft(dir, task)``.
    """
    from adaptlang.bundles import apply as _apply

    return _apply(model, spec_or_plan, **kwargs)


def load(model: Any, paths: Any, **kwargs: Any) -> Any:
    """Loads bundles onto a base model; see :func:`adaptlang.bundles.load`."""
    from adaptlang.bundles import load as _load

    return _load(model, paths, **kwargs)


def handle(model: Any) -> Any:
    """Returns the handle of an adapted model: the one ``apply`` returned, or a copy's own.

    A deep copy of an adapted model (``copy.deepcopy``, or a whole-model
    pickle such as ``torch.save(model)`` loaded back by the user's own code)
    carries its own independent handle, in the same state; this finds it.
    adaptlang itself never unpickles anything (bundles are safetensors). See
    :mod:`adaptlang.runtime.copying`.

    Raises:
        UsageError: The model carries no live adaptlang patch.
    """
    from adaptlang.runtime.copying import handle_of

    return handle_of(model)
