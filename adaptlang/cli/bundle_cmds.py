"""Bundle commands: ``show``, ``export``, ``import-peft``, and ``compile --out DIR``.

* ``adaptc show BUNDLE`` prints a bundle's manifest as deterministic text
  (also a git ``textconv`` driver: see ``.gitattributes``); ``--json``
  prints the manifest itself.
* ``adaptc export BUNDLE --to peft DIR`` writes a PEFT adapter folder.
* ``adaptc import-peft DIR --model M --out OUT`` writes ``OUT/<name>.adapt``
  and ``OUT/<name>.safetensors``.
* ``adaptc compile SPEC --model M --out DIR`` (hooked through
  :func:`adaptlang.cli.compile_cmds.set_out_handler`) writes ``DIR/plan.json``
  and, when the model has weights, a seeded fresh bundle per task.

The git-facing commands (``diff``, ``lock``) are in
:mod:`adaptlang.cli.git_cmds`, registered from here.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import typer

from adaptlang.cli.compile_cmds import CompileOutput
from adaptlang.cli.head_args import ALLOW_FACTORY_OPTION
from adaptlang.errors import Diagnostic, UsageError

__all__ = ["export_command", "handle_compile_out", "import_peft_command", "register", "show_command"]


class ExportFormat(str, Enum):
    """What ``adaptc export`` writes."""

    peft = "peft"


@contextmanager
def reporting_warnings() -> Iterator[None]:
    """Shows library warnings (an approximated training-only setting...) as ``warning:`` lines on stderr."""
    from adaptlang.cli.output import print_diagnostics

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    ours = [w for w in caught if type(w.message).__module__.startswith("adaptlang")]
    print_diagnostics([Diagnostic(str(w.message), severity="warning") for w in ours])


def note(text: str) -> None:
    """Prints a progress line to stderr (stdout stays for data)."""
    from adaptlang.cli.output import error_console, plain

    error_console().print(plain(text))


def show_command(
    bundle: Path = typer.Argument(..., help="A bundle (.safetensors).", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Check every tensor against its sha256 (--no-verify reads the header only)."),
) -> None:
    """Show a bundle's manifest: task, model, plan, spec source and tensors (git textconv friendly)."""
    from adaptlang.bundles.bundle import read_bundle, read_manifest
    from adaptlang.bundles.describe import describe_file
    from adaptlang.cli.output import write_stdout

    if as_json:
        manifest = read_bundle(bundle).manifest if verify else read_manifest(bundle)
        write_stdout(json.dumps(manifest, sort_keys=True, indent=2) + "\n", json=True)
        return
    write_stdout(describe_file(bundle, verify=verify))  # the embedded spec's control characters escaped


def export_command(
    bundle: Path = typer.Argument(..., help="A bundle (.safetensors).", show_default=False),
    out: str = typer.Argument(..., help="The adapter folder to write.", show_default=False),
    to: ExportFormat = typer.Option(..., "--to", help="The format: peft."),
    base_model: Optional[str] = typer.Option(
        None, "--base-model", help="base_model_name_or_path in adapter_config.json (default: the plan's model).",
    ),
) -> None:
    """Export a bundle's task as a PEFT adapter (adapter_config.json + adapter_model.safetensors)."""
    from adaptlang.bundles.peft_export import export_bundle
    from adaptlang.cli.output import output_folder

    target = output_folder(out, "OUT")
    with reporting_warnings():
        folder = export_bundle(bundle, target, base_model=base_model)
    note(f"wrote a PEFT adapter to {folder}")


def import_peft_command(
    folder: Path = typer.Argument(..., help="A PEFT adapter folder.", show_default=False),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="The base model (default: the adapter's base_model_name_or_path).",
    ),
    out: str = typer.Option(".", "--out", help="Where the .adapt spec and the bundle go."),
    name: Optional[str] = typer.Option(None, "--name", help="Task name (default: from the folder's name)."),
    allow_factory: bool = ALLOW_FACTORY_OPTION,
) -> None:
    """Convert a PEFT adapter folder into a .adapt spec plus a bundle."""
    from adaptlang.bundles.peft_import import import_peft_adapter
    from adaptlang.cli.output import output_folder

    target = output_folder(out, "--out")
    if not folder.is_dir():
        raise UsageError(Diagnostic("no such folder" if not folder.exists() else "not a folder", obj=str(folder)))
    with reporting_warnings():
        spec, bundle = import_peft_adapter(folder, model, target, name=name, allow_factory=allow_factory)
    note(f"wrote {spec} and {bundle}")


def handle_compile_out(output: CompileOutput) -> None:
    """``compile --out DIR``: plan.json, and fresh bundles when the model has weights."""
    from adaptlang.bundles.files import make_folder
    from adaptlang.bundles.fresh import write_fresh_bundles
    from adaptlang.cli.output import write_atomic

    out_dir = make_folder(output.out_dir)
    ref = output.model
    if ref is None:  # the spec's own `model` line (the plan only keeps a portable name)
        from adaptlang.spec import load_spec

        ref = load_spec(output.spec_path).model
        if not output.allow_factory:  # compiling refused it already; loading weights must too
            from adaptlang.plan.models import refuse_factory

            refuse_factory(ref, str(output.spec_path), "its model statement")
    plan, paths, why = write_fresh_bundles(output.spec_path, ref, out_dir, output.overrides,
                                           head=output.head, num_labels=output.num_labels)
    write_atomic(out_dir / "plan.json", (plan or output.plan).to_json())
    if paths:
        note(f"wrote {out_dir / 'plan.json'} and {len(paths)} fresh bundles: " + ", ".join(p.name for p in paths))
    else:
        note(f"wrote {out_dir / 'plan.json'}; no bundles: {why}")


def register(app: typer.Typer) -> None:
    """Adds ``show``, ``export``, ``import-peft``, ``diff`` and ``lock``; hooks ``compile --out``."""
    from adaptlang.cli import compile_cmds, git_cmds

    app.command("show")(show_command)
    app.command("export")(export_command)
    app.command("import-peft")(import_peft_command)
    git_cmds.register(app)
    compile_cmds.set_out_handler(handle_compile_out)
