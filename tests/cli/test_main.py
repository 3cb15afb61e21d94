"""The ``adaptc`` entry point: version, help, exit codes, internal errors, bundle hook."""

from __future__ import annotations

import sys
import textwrap

import pytest
import typer

from adaptlang import __version__
from adaptlang.cli import compile_cmds, main
from adaptlang.errors import Diagnostic, Span, SpecError, UsageError

from .conftest import TRACEBACK, invoke


def test_version(runner):
    result = invoke(runner, "--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"adaptc {__version__}"


def test_no_arguments_shows_help_and_exits_2(runner):
    result = invoke(runner)
    assert result.exit_code == 2
    assert "compile" in result.output and "fmt" in result.output


@pytest.mark.parametrize("command", ["compile", "check", "fmt", "match", "inspect", "schema", "presets"])
def test_every_command_has_help(runner, command):
    result = invoke(runner, command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_unknown_command_is_usage_error(runner):
    result = invoke(runner, "compiel")
    assert result.exit_code == 2
    assert TRACEBACK not in result.output


def test_bad_option_value_is_usage_error(runner, tmp_path):
    spec = tmp_path / "x.adapt"
    spec.write_text("adaptlang 1\n")
    result = invoke(runner, "compile", spec, "--format", "yaml")
    assert result.exit_code == 2
    assert TRACEBACK not in result.output


def make_failing_app(exc: BaseException) -> typer.Typer:
    """An app built like adaptc's whose one command raises ``exc``."""
    app = typer.Typer(cls=main.AdaptGroup, pretty_exceptions_enable=False)
    app.callback()(main.root_callback)

    @app.command("boom")
    def boom() -> None:
        raise exc

    return app


def test_adapt_error_prints_diagnostic_and_exit_code(runner):
    err = SpecError(Diagnostic("unknown thing [bold]x[/bold]", span=Span("a.adapt", 2, 3, 2, 6),
                               source_line="  xyz", hint="did you mean 'y'?"))
    result = runner.invoke(make_failing_app(err), ["boom"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "a.adapt:2:3: error: unknown thing [bold]x[/bold]",
        "      xyz",
        "      ^^^",
        "  help: did you mean 'y'?",
    ]


def test_usage_error_exits_2(runner):
    result = runner.invoke(make_failing_app(UsageError("bad", obj="--flag")), ["boom"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "--flag: error: bad"


def test_internal_error_is_short_without_debug(runner):
    result = runner.invoke(make_failing_app(RuntimeError("kaput")), ["boom"], env={"ADAPTLANG_DEBUG": ""})
    assert result.exit_code == main.EXIT_INTERNAL
    assert "internal error: RuntimeError: kaput" in result.stderr
    assert TRACEBACK not in result.output


def test_internal_error_shows_traceback_with_debug(runner):
    result = runner.invoke(make_failing_app(RuntimeError("kaput")), ["boom"], env={"ADAPTLANG_DEBUG": "1"})
    assert result.exit_code == main.EXIT_INTERNAL
    assert TRACEBACK in result.stderr
    assert "kaput" in result.stderr


def test_run_maps_errors_to_exit_codes(monkeypatch, capsys):
    monkeypatch.setattr(main, "app", make_failing_app(SpecError("nope")))
    with pytest.raises(SystemExit) as info:
        main.run(["boom"])
    assert info.value.code == 1
    assert "error: nope" in capsys.readouterr().err


def test_bundle_module_registers_when_present(tmp_path, monkeypatch, runner):
    module = tmp_path / "fake_bundle_cmds.py"
    module.write_text(textwrap.dedent("""
        import typer

        def register(app):
            @app.command("bundle-info")
            def bundle_info() -> None:
                typer.echo("bundles here")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(main, "BUNDLE_MODULE", "fake_bundle_cmds")
    try:
        app = main.build_app()
        result = runner.invoke(app, ["bundle-info"])
    finally:
        sys.modules.pop("fake_bundle_cmds", None)
    assert result.exit_code == 0
    assert result.stdout.strip() == "bundles here"


def test_missing_bundle_module_is_skipped(monkeypatch, runner):
    monkeypatch.setattr(main, "BUNDLE_MODULE", "adaptlang.cli.no_such_module_here")
    app = main.build_app()
    assert runner.invoke(app, ["--version"]).exit_code == 0


def test_out_without_bundles_is_usage_error(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cmds, "_out_handler", None)
    spec = tmp_path / "x.adapt"
    spec.write_text("adaptlang 1\n")
    result = invoke(runner, "compile", spec, "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert "--out" in result.stderr and "bundles" in result.stderr
