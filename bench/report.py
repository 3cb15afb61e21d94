"""Result rows, the printed table, the markdown table and the JSON file."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.timing import Stats, paired_ratio, stats

__all__ = ["Row", "environment", "make_row", "print_table", "to_markdown", "write_results"]


@dataclass
class Row:
    """One line of the results table.

    Attributes:
        section: ``1 apply`` ... ``5 bundles``.
        case: What was timed.
        time: Seconds per call (median, quartiles), or None for a row that only reports.
        vs: The reference the ratio is against (another row's case), or None.
        ratio: ``time / vs`` per round (median, quartiles), or None.
        target: ``("<=", 1.08)``-style goal for the ratio's median, or None.
        note: Anything the reader needs (shapes, what the reference is).
    """

    section: str
    case: str
    time: Stats | None
    vs: str | None = None
    ratio: Stats | None = None
    target: tuple[str, float] | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        """Whether the ratio's median meets the target (None without one)."""
        if self.target is None or self.ratio is None:
            return None
        op, value = self.target
        return self.ratio.median <= value if op == "<=" else self.ratio.median >= value

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section, "case": self.case,
            "time_s": self.time.to_dict() if self.time else None, "vs": self.vs,
            "ratio": self.ratio.to_dict() if self.ratio else None,
            "target": f"{self.target[0]} {self.target[1]}" if self.target else None, "met": self.met,
            "note": self.note, **self.extra,
        }


def make_row(section: str, case: str, samples: list[float], vs: str | None = None,
             ref: list[float] | None = None, target: tuple[str, float] | None = None, note: str = "",
             invert: bool = False) -> Row:
    """Builds a row from raw samples; ``invert`` reports ``ref / samples`` (a speed-up) as the ratio."""
    ratio = None
    if ref is not None:
        ratio = paired_ratio(ref, samples) if invert else paired_ratio(samples, ref)
    return Row(section, case, stats(samples), vs, ratio, target, note)


def _fmt_time(s: Stats | None) -> str:
    if s is None:
        return "-"
    scale, unit = (1e3, "ms") if s.median < 1.0 else (1.0, "s")
    if s.median < 1e-3:
        scale, unit = 1e6, "us"
    return f"{s.median * scale:.3g} {unit} [{s.q1 * scale:.3g}-{s.q3 * scale:.3g}]"


def _fmt_ratio(row: Row) -> str:
    r = row.ratio
    if r is None:
        return "-"
    return f"{r.median:.3f}x [{r.q1:.3f}-{r.q3:.3f}]"


def _fmt_target(row: Row) -> str:
    if row.target is None:
        return ""
    mark = {True: "met", False: "MISSED", None: ""}[row.met]
    return f"{row.target[0]} {row.target[1]:g} {mark}".strip()


HEADER = ("section", "case", "time (median [IQR])", "vs", "ratio (median [IQR])", "target")


def _cells(row: Row) -> tuple[str, ...]:
    return (row.section, row.case, _fmt_time(row.time), row.vs or "", _fmt_ratio(row), _fmt_target(row))


def print_table(rows: list[Row], env: dict[str, Any]) -> None:
    """Prints the table (rich when installed, plain text otherwise)."""
    title = f"adaptlang bench - {env['date']} - {env['device']} - {env['threads']} threads"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        print(title)
        widths = [max(len(c[i]) for c in [HEADER] + [_cells(r) for r in rows]) for i in range(len(HEADER))]
        for cells in [HEADER] + [_cells(r) for r in rows]:
            print("  ".join(c.ljust(w) for c, w in zip(cells, widths)))
        return
    table = Table(title=title)
    for name in HEADER:
        table.add_column(name)
    for row in rows:
        cells = list(_cells(row))
        if row.met is False:
            cells[-1] = f"[red]{cells[-1]}[/red]"
        table.add_row(*cells)
    Console(width=200).print(table)


def to_markdown(rows: list[Row], env: dict[str, Any]) -> str:
    """Returns the results as a markdown table with the environment above it."""
    lines = [f"Run {env['date']} on {env['machine']} ({env['device']}, {env['threads']} threads, {env['dtype']}); "
             f"Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
             f"peft {env['peft']}, adaptlang {env['adaptlang']}. Command: `{env['command']}`.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _cells(row)) + " |")
    notes = [f"* {r.section} / {r.case}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str, threads: int, dtype: str, command: str) -> dict[str, Any]:
    """Returns what a result depends on: date, versions, machine."""
    import peft
    import torch
    import transformers

    import adaptlang

    name = _cpu_model()
    if device == "cuda":
        name = f"{torch.cuda.get_device_name(0)} + {name}"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "adaptlang": adaptlang.__version__,
        "machine": f"{name}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "device": device, "threads": threads, "dtype": dtype, "command": command,
    }


def write_results(rows: list[Row], env: dict[str, Any], folder: Path, tag: str) -> tuple[Path, Path]:
    """Writes ``{tag}.json`` and ``{tag}.md`` under ``folder``; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"environment": env, "rows": [r.to_dict() for r in rows]}
    json_path, md_path = folder / f"{tag}.json", folder / f"{tag}.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(to_markdown(rows, env), encoding="utf-8")
    return json_path, md_path
