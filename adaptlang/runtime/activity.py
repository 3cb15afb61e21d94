"""Which deltas a site runs: ``set_active``, ``set_rows`` and the programs kept for them.

:class:`SiteActivity` is the part of :class:`~adaptlang.runtime.site.SiteModule`
that turns an ordered ``(delta, weight)`` list into the site's forward
program. Programs read their tensors at call time, so one built for a list
stays valid until the tensors themselves are swapped (``.to()``,
``quantize()``, ``unwrap()``, merging); they are kept per list, and ``apply``
builds every task's up front (:meth:`SiteActivity.prepare`), so
``use(task)`` only assigns them.

Every such swap goes through ``_rebuild``, which bumps the site's ``_epoch``:
programs kept *outside* the site (a mixed-task layout's, built with
:meth:`SiteActivity.row_program` and run through the call's context, see
:mod:`adaptlang.runtime.concurrency`) are valid while the epoch they were
built at is the site's.
"""

from __future__ import annotations

from typing import Any

from adaptlang.errors import RuntimeApplyError
from adaptlang.runtime.program import Program
from adaptlang.runtime.rows import RowProgram

__all__ = ["SiteActivity"]


class SiteActivity:
    """``set_active`` / ``set_rows`` for :class:`~adaptlang.runtime.site.SiteModule` (a mixin).

    Relies on the site's ``_modules["base"]``, ``_modules["parts"]``,
    ``quant``, ``_part()``, ``unmerge()`` and the attributes its ``__init__`` sets.
    """

    _active: list[tuple[str, float]]
    _merged: Any
    _merged_names: frozenset[str]

    @property
    def active(self) -> list[tuple[str, float]]:
        """The active ``(delta, weight)`` list, in order."""
        return list(self._active)

    def set_active(self, active: list[tuple[str, float]]) -> None:
        """Activates exactly these deltas, with their weights, in this order.

        Precomputes the forward program (groups, concatenation order, factors
        to multiply); a merged site is unmerged first.

        Args:
            active: Ordered ``(delta, weight)`` pairs; deltas must have parts here.

        Raises:
            RuntimeApplyError: A delta with no part here, or one listed twice.
        """
        key = tuple(active)
        prog = self._programs.get(key) if self._merged is None else None
        if prog is None:  # first time for this list (or merged): check it, unmerge, build
            checked = self._checked(active)
            if self._merged is not None:
                self.unmerge()
            prog = self._programs.get(key) or self._programs.setdefault(key, self._program_for(checked))
            key = tuple(checked)
        # Task switching lands here: plain attributes, written to __dict__ directly
        # (nn.Module.__setattr__ would cost more than the switch itself).
        attrs = self.__dict__
        old = attrs["_single"]
        if old is not prog:
            old.drop_caches()
        attrs["_active"] = list(key)
        attrs["_rows"] = None
        attrs["_single"] = attrs["_prog"] = prog

    def prepare(self, active: list[tuple[str, float]]) -> None:
        """Builds and keeps the program for ``active`` without activating it (``apply`` does, per task).

        A later ``set_active(active)`` then only assigns it.

        Raises:
            RuntimeApplyError: As :meth:`set_active`.
        """
        key = tuple(active)
        if key not in self._programs:
            self._programs[key] = self._program_for(self._checked(active))

    def _checked(self, active: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """Returns ``active`` with float weights, or raises for unknown or repeated deltas."""
        checked = []
        for delta, weight in active:
            self._part(delta)
            checked.append((delta, float(weight)))
        if len({d for d, _ in checked}) != len(checked):
            raise RuntimeApplyError(f"a delta is listed twice in {[d for d, _ in checked]}")
        return checked

    def _program_for(self, checked: list[tuple[str, float]]) -> Program:
        """The unmerged program of a checked active list."""
        parts = self._modules["parts"]
        return Program.build(self._modules["base"], [(parts[d], w) for d, w in checked], self.quant)

    def set_rows(self, rows: list[list[tuple[str, float]]] | None) -> None:
        """Gives each batch row its own ordered ``(delta, weight)`` list (mixed-task batches).

        Until ``set_rows(None)``, every forward must get a batch of
        ``len(rows)`` rows (dim 0 of the main input); row ``r`` computes what
        the site computes for it alone under ``set_active(rows[r])``
        (:mod:`adaptlang.runtime.rows`). A merged site is unmerged first.

        Args:
            rows: Per row, the ordered ``(delta, weight)`` list (empty: base only); None returns
                to the ``set_active`` list.

        Raises:
            RuntimeApplyError: Unknown deltas, adapters ordered differently by two rows, or a
                sparse delta that cannot differ per row.
        """
        if rows is None:
            self._rows = None
            self._prog = self._single
            return
        key = _rows_key(rows)
        cached = self._row_cache
        if cached is not None and cached[0] == key:  # the same batch layout as last time: nothing to build
            prog = cached[1]
        else:
            prog = self._checked_row_program(key)  # raises before anything changes
        if self._merged is not None:
            self.unmerge()  # the program reads the weights at call time: it stays valid
        self._rows, self._prog = key, prog
        self._row_cache = (key, prog)

    def row_program(self, rows: list[list[tuple[str, float]]]) -> Any:
        """Returns the program for per-row lists (as :meth:`set_rows` would run it), changing nothing.

        For a caller that runs it through the call's context
        (:data:`~adaptlang.runtime.concurrency.CALL_PROGRAMS`) and keeps it
        while ``_epoch`` is unchanged.

        Raises:
            RuntimeApplyError: As :meth:`set_rows`, or a merged site (its weights hold one task).
        """
        if self._merged is not None:
            raise RuntimeApplyError("this site is merged (its weights hold one task's deltas): unmerge first")
        return self._checked_row_program(_rows_key(rows))

    def _checked_row_program(self, key: tuple[tuple[tuple[str, float], ...], ...]) -> Any:
        """Checks every delta of a rows key, then builds (or finds) its program."""
        for row in key:
            for delta, _ in row:
                self._part(delta)
        return self._row_program(key)

    def _row_program(self, rows: tuple[tuple[tuple[str, float], ...], ...]) -> Any:
        """The program for per-row lists: the plain one when every row lists the same deltas."""
        if all(row == rows[0] for row in rows):
            prog = self._programs.get(rows[0])
            if prog is None:
                prog = self._programs.setdefault(rows[0], self._program_for(self._checked(list(rows[0]))))
            return prog
        return RowProgram(self.base, self.parts, [list(row) for row in rows], self.quant)

    def _rebuild(self) -> None:
        """Recomputes the forward programs from the active, unmerged parts (and the per-row lists).

        Called whenever the site's tensors change; bumps ``_epoch`` so that
        programs kept elsewhere (mixed-task layouts) are rebuilt too.
        """
        self._epoch += 1
        entries = [(self.parts[d], w) for d, w in self._active if d not in self._merged_names]
        self._single = Program.build(self.base, entries, self.quant)
        self._row_cache = None
        if self._rows is not None:
            self._prog = self._row_program(self._rows)
            self._row_cache = (self._rows, self._prog)
        else:
            self._prog = self._single


def _rows_key(rows: list[list[tuple[str, float]]]) -> tuple[tuple[tuple[str, float], ...], ...]:
    """Per-row lists as a hashable key, weights as floats (the keys ``_programs`` uses)."""
    return tuple(tuple((d, float(w)) for d, w in row) for row in rows)
