"""Concurrent use of one adapted model: per-call state in the call's context, and a readers–writer gate.

Two kinds of operations share an adapted model:

* **forwards** — ``adapted(...)`` and ``adapted(..., tasks=[...])`` — read
  the model's task state. A per-call ``tasks=`` layout does not write it:
  the call's site programs travel in :data:`CALL_PROGRAMS`, a
  :class:`contextvars.ContextVar` that ``SiteModule.forward`` reads (its
  prompts in the prompt controller's ``call_scope``), so concurrent calls
  with different ``tasks`` never see each other's rows;
* **changes** — ``use()``, ``merge()``, ``unmerge()``, ``remove()``,
  ``load_adapter_state_dict()`` — change the model for every caller.

:class:`CallGate` (one per :class:`~adaptlang.runtime.adapted.Adapted`) lets
forwards run together; a change waits until no forward runs, and forwards
that arrive while a change waits wait for it (so a stream of forwards cannot
starve ``use()``). A change requested from inside a forward on the same
thread (a forward hook calling ``use()``) would wait for itself: it raises
:class:`~adaptlang.errors.UsageError` instead. Forwards nest (a hook may call
the model again), changes nest (``use()`` unmerges first).

A per-call layout whose ``tune`` copies differ from the active task's must
put them in the model's parameter slots, which every forward reads: such a
call runs *exclusively* (:meth:`CallGate.forward` with ``exclusive=True``),
waiting for running forwards and holding back new ones, like a change.

Calling ``adapted.model(...)`` directly bypasses the gate (single-threaded
use only).
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, TypeVar

from adaptlang.errors import Diagnostic, UsageError

__all__ = ["CALL_PROGRAMS", "CallGate", "call_programs", "changes_model"]

#: The current call's site programs (site -> program), or None: every site runs its own ``_prog``.
CALL_PROGRAMS: ContextVar[dict[Any, Any] | None] = ContextVar("adaptlang_call_programs", default=None)

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def call_programs(programs: dict[Any, Any] | None) -> Iterator[None]:
    """Makes ``programs`` (site -> program) the site programs of model calls in this context."""
    token = CALL_PROGRAMS.set(programs)
    try:
        yield
    finally:
        CALL_PROGRAMS.reset(token)


class CallGate:
    """A readers–writer gate for one adapted model (module docstring).

    Readers are forwards (:meth:`forward`), writers are changes
    (:meth:`change`) and exclusive forwards. Writers are preferred: a waiting
    writer holds back new readers, except a thread already inside a forward
    (its nested forward must not wait for a writer that waits for it).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0  # threads inside a shared forward (outermost only)
        self._writer: int | None = None  # the thread holding the gate exclusively
        self._write_depth = 0
        self._waiting = 0  # writers waiting
        # Per thread: forward depth, and whether the outermost forward is exclusive.
        self._local = threading.local()

    def __deepcopy__(self, memo: dict) -> "CallGate":
        # A copied handle gets its own, idle gate (locks cannot be copied, and nobody is inside the copy).
        return CallGate()

    def __reduce__(self) -> tuple:
        return (CallGate, ())

    # -------------------------------------------------------------- forwards
    @contextmanager
    def forward(self, exclusive: bool = False) -> Iterator[None]:
        """Holds the gate for one forward: shared, or ``exclusive`` (nobody else forwards or changes).

        Raises:
            UsageError: An exclusive forward from inside a forward on this thread, or
                any forward from inside an exclusive one (its parameter slots are swapped).
        """
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth and getattr(local, "exclusive", False):
            raise UsageError(Diagnostic(
                "the model was called from inside a forward that swapped re-trained (tune) parameters "
                "into the model for its rows", obj="Adapted.__call__",
                hint="call the model after that forward returns"))
        if exclusive:
            if depth:
                raise UsageError(Diagnostic(
                    "a mixed-task call whose tasks re-train other parameters (tune) than the active task "
                    "must run alone, and it was made from inside a forward of this model on the same thread",
                    obj="Adapted.__call__", hint="make the call after the running forward returns"))
            self._acquire_write()
        # The outermost shared forward counts as a reader; nested ones, and forwards made by the
        # thread holding the gate (a change that calls the model), are inside it already.
        shared = not exclusive and depth == 0 and self._writer != threading.get_ident()
        if shared:
            self._acquire_read()
        local.depth = depth + 1
        if depth == 0:
            local.exclusive = exclusive
        try:
            yield
        finally:
            local.depth = depth
            if depth == 0:
                local.exclusive = False
            if exclusive:
                self._release_write()
            elif shared:
                self._release_read()

    def in_forward(self) -> bool:
        """True while this thread is inside a forward of the model."""
        return getattr(self._local, "depth", 0) > 0

    # --------------------------------------------------------------- changes
    @contextmanager
    def change(self, what: str) -> Iterator[None]:
        """Holds the gate exclusively for a change of the model (``what``: the method, for errors).

        Raises:
            UsageError: Called from inside a forward of the model on this thread.
        """
        if self.in_forward():
            raise UsageError(Diagnostic(
                f"{what}() was called from inside a forward of this model (a forward hook?); it changes "
                "the model for every caller and waits until no forward runs, so it would wait for itself",
                obj=f"Adapted.{what}", hint=f"call {what}() before or after the forward; to run rows under "
                "another task in this call, pass tasks=[...] instead"))
        self._acquire_write()
        try:
            yield
        finally:
            self._release_write()

    # ------------------------------------------------------------- internals
    def _acquire_read(self) -> None:
        with self._cond:
            while self._writer is not None or self._waiting:
                self._cond.wait()
            self._readers += 1

    def _release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def _acquire_write(self) -> None:
        me = threading.get_ident()
        if self._writer == me:  # nested change (use() unmerges first): already held
            self._write_depth += 1
            return
        with self._cond:
            self._waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            except BaseException:
                self._waiting -= 1
                self._cond.notify_all()  # interrupted: let the readers it held back in
                raise
            self._waiting -= 1
            self._writer, self._write_depth = me, 1

    def _release_write(self) -> None:
        self._write_depth -= 1
        if self._write_depth:
            return
        with self._cond:
            self._writer = None
            self._cond.notify_all()


def changes_model(what: str) -> Callable[[F], F]:
    """Decorates an ``Adapted`` method that changes the model for every caller (runs under :meth:`CallGate.change`)."""
    def wrap(method: F) -> F:
        @functools.wraps(method)
        def changing(self: Any, *args: Any, **kwargs: Any) -> Any:
            with self._gate.change(what):
                return method(self, *args, **kwargs)
        return changing  # type: ignore[return-value]
    return wrap
