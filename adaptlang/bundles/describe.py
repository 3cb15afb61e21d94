"""Bundles as readable, deterministic text (``adaptc show``, and git's ``textconv``).

The text depends only on the file's content (no dates, no absolute paths,
no terminal width), so ``git diff`` through ``adaptc show`` shows what
changed between two versions of a bundle: the task, the plan, the spec source
line by line, and each tensor's sha256 prefix. A safetensors file without an
adaptlang manifest (a PEFT adapter, a checkpoint) is listed tensor by tensor,
so the textconv driver works on every ``*.safetensors`` file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adaptlang.bundles.files import SafetensorsHeader, read_header
from adaptlang.bundles.manifest import MANIFEST_KEY
from adaptlang.errors import escape_controls

__all__ = ["describe_file", "describe_manifest"]

_DTYPE_NAMES = {"torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16",
                "torch.float64": "float64", "torch.int64": "int64"}


def _term(term: dict[str, Any]) -> str:
    """A task term as task-expression text."""
    text = term["name"] if term["weight"] == 1.0 else f"{term['weight']:g} * {term['name']}"
    return f"frozen({text})" if term["frozen"] else text


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    """Columns separated by two spaces; ``right`` columns right-aligned."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                             for i, c in enumerate(row)).rstrip() for row in rows]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _dtype(entry: Any) -> str:
    name = str(entry.dtype)
    return _DTYPE_NAMES.get(name, name.removeprefix("torch."))


def describe_manifest(header: SafetensorsHeader, manifest: dict[str, Any]) -> str:
    """Renders a checked bundle manifest (with its file's tensor table) as text.

    The file's name is left out on purpose: git's textconv hands over a
    temporary copy with a random name.
    """
    task = manifest["task"]
    plan = manifest["task_plan"]
    section = plan["tasks"][task]
    model = manifest["model"]
    spec = manifest.get("spec")
    lines = [
        "adaptlang bundle",
        f"  task          {task} = {' + '.join(_term(t) for t in section['deltas'])}",
        f"  format        {manifest['bundle_format']} (written by adaptlang {manifest['adaptlang_version']})",
        f"  model         {model['name']} ({model['cls']}, {model['family']}), {model['params']:,} parameters",
        f"  fingerprint   {model['fingerprint']}",
        f"  plan sha256   {manifest['plan_sha256']} (whole plan)",
        f"  task plan     {plan['plan_sha256']}",
        (f"  spec          {spec['path']} sha256 {spec['sha256']}" if spec
         else "  spec          (none: applied from a plan)"),
        f"  parameters    {section['trainable_params']:,} trainable, {section['bundle_params']:,} in the bundle",
        f"  stored dtype  {manifest.get('dtype') or 'as trained'}",
    ]
    if spec and spec.get("overrides"):
        lines.append("  overrides     " + ", ".join(f"{k}={v:g}" for k, v in sorted(spec["overrides"].items())))
    if plan["base"]["quantize"]:
        formats = sorted({q["format"] for q in plan["base"]["quantize"]})
        lines.append(f"  base          {len(plan['base']['quantize'])} weights quantized ({', '.join(formats)})")
    if manifest.get("training"):
        lines += ["", "training"] + _training_lines(manifest["training"])
    lines += ["", "deltas"]
    lines += _table([[n, d["kind"], _plural(d["site_count"], "site"), f"{d['params']:,} parameters"]
                     for n, d in plan["deltas"].items()], {2, 3})
    total = sum(e.end - e.start for e in header.tensors.values())
    lines += ["", f"tensors ({len(header.tensors)}, {total:,} bytes)"]
    rows = []
    for key in sorted(header.tensors):
        entry = header.tensors[key]
        rows.append([key, _dtype(entry), "[" + ", ".join(map(str, entry.shape)) + "]",
                     f"sha256 {manifest['tensors'].get(key, '?')[:16]}"])
    lines += _table(rows, set())
    if spec:
        for file, text in spec["sources"].items():
            lines += ["", f"spec source {file}"]
            # Split at newlines only (splitlines would turn \x0c or NEL into line breaks, hiding them).
            lines += [f"  | {line.removesuffix(chr(13))}".rstrip(" \t")
                      for line in text.removesuffix("\n").split("\n")]
    # A bundle is a stranger's file, and this is git's textconv output: nothing in it drives the terminal.
    return escape_controls("\n".join(lines)) + "\n"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _data_line(data: dict[str, Any]) -> str:
    text = f"{data['file']} ({data['rows']:,} rows, {data['used']:,} used"
    if data.get("split") is not None:
        text = f"{data['file']} (held out {data['split']:g}: {data['used']:,} rows"
    for key in ("dropped", "truncated"):
        if data.get(key):
            text += f", {data[key]:,} {key}"
    return text + f") sha256 {data['sha256'][:16]}"


def _training_lines(record: dict[str, Any]) -> list[str]:
    """The manifest's training record (see ``training_record.py``), one fact per line."""
    model = record["model"]
    objective = record["objective"] + (" (loss on the completion only)" if record.get("completion_only") else "")
    lines = [f"  objective     {objective}",
             f"  model         {model['name']} ({model['kind']}), head {model.get('head') or 'as built'}"]
    if model.get("new_parameters"):
        lines.append(f"  new params    {', '.join(model['new_parameters'])}")
    if record.get("labels") is not None:
        lines.append("  labels        " + ", ".join(f"{i}={label}" for i, label in enumerate(record["labels"])))
    lines.append(f"  train data    {_data_line(record['train'])}")
    if record.get("eval"):
        lines.append(f"  eval data     {_data_line(record['eval'])}")
    resumed = f", resumed from step {record['resumed_from']}" if record.get("resumed_from") is not None else ""
    lines.append(f"  steps         {record['steps']:,} ({_number(record['epochs'])} epochs), seed {record['seed']}, "
                 f"{record['world_size']} process{'' if record['world_size'] == 1 else 'es'}{resumed}")
    metrics = record.get("metrics") or {}
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    for key in sorted(set(before) | set(after)):
        shown = _number(after[key]) if key in after else "-"
        if key in before:
            shown = f"{_number(before[key])} -> {shown}"
        lines.append(f"  eval {key:<9}{shown}")
    if record.get("train_loss") is not None:
        lines.append(f"  train loss    {_number(record['train_loss'])}")
    hyper = record.get("hyperparameters") or {}
    lines.append("  arguments     " + ", ".join(f"{k}={_number(v)}" for k, v in sorted(hyper.items())))
    lines.append("  versions      " + ", ".join(f"{k} {v}" for k, v in sorted((record.get("versions") or {}).items())))
    return lines


def _describe_foreign(header: SafetensorsHeader) -> str:
    """Renders a safetensors file that is not an adaptlang bundle."""
    lines = ["safetensors file (not an adaptlang bundle)"]
    for key, value in sorted(header.metadata.items()):
        shown = value if len(value) <= 200 else value[:200] + f"... ({len(value)} characters)"
        lines.append(f"  metadata {key}: {json.dumps(shown)}")
    lines += ["", f"tensors ({len(header.tensors)})"]
    lines += _table([[k, _dtype(e), "[" + ", ".join(map(str, e.shape)) + "]"]
                     for k, e in sorted(header.tensors.items())], set())
    return escape_controls("\n".join(lines)) + "\n"


def describe_file(path: str | Path, verify: bool = True) -> str:
    """Returns the readable text for a bundle (or any safetensors file).

    Args:
        path: The file.
        verify: Read every tensor and check it against its sha256 (a
            corrupted bundle is then an error, not a listing).

    Raises:
        BundleError: Not a safetensors file, or a bundle that fails its checks.
    """
    from adaptlang.bundles.bundle import read_bundle, read_manifest

    path = Path(path)
    header = read_header(path)
    if MANIFEST_KEY not in header.metadata:
        return _describe_foreign(header)
    manifest = read_bundle(path).manifest if verify else read_manifest(path)
    return describe_manifest(header, manifest)

