"""``adaptc``: the command-line front end of adaptlang (typer + rich).

Commands live in small modules, each with a ``register(app)`` function:

* :mod:`adaptlang.cli.compile_cmds` — ``compile``, ``check``;
* :mod:`adaptlang.cli.fmt_cmd` — ``fmt``;
* :mod:`adaptlang.cli.model_cmds` — ``match``, ``inspect``, ``presets``, ``schema``;
* :mod:`adaptlang.cli.train_cmds` — ``train``;
* :mod:`adaptlang.cli.predict_cmd` — ``predict``;
* :mod:`adaptlang.cli.bundle_cmds` — bundle commands, registered when that
  module exists. It may also hook ``compile --out DIR`` through
  :func:`adaptlang.cli.compile_cmds.set_out_handler`.

Exit codes: 0 ok, 1 a spec or bind error (:class:`AdaptError`), 2 a usage
error (:class:`UsageError`, or typer's own: bad options, missing arguments),
3 an internal error (the traceback only with ``ADAPTLANG_DEBUG=1``).
Errors are caught in :class:`AdaptGroup.invoke`, so the same handling applies
under ``typer.testing.CliRunner`` and in the installed ``adaptc`` script.

Start-up stays light: this module imports typer, rich and
:mod:`adaptlang.errors` only; commands import the compiler, and with it torch,
inside their bodies, and only when they need a model.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
import sys
import traceback
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from adaptlang.errors import AdaptError

__all__ = ["AdaptGroup", "EXIT_INTERNAL", "app", "build_app", "run"]

#: Exit code for a bug in adaptc itself (not the user's fault).
EXIT_INTERNAL = 3

#: Command modules, registered in this order (their commands list in help order).
COMMAND_MODULES = (
    "adaptlang.cli.compile_cmds",
    "adaptlang.cli.fmt_cmd",
    "adaptlang.cli.model_cmds",
    "adaptlang.cli.train_cmds",
    "adaptlang.cli.predict_cmd",
)

#: Optional module that adds bundle commands when present.
BUNDLE_MODULE = "adaptlang.cli.bundle_cmds"


class AdaptGroup(TyperGroup):
    """The root command group; turns exceptions into diagnostics and exit codes."""

    def invoke(self, ctx: Any) -> Any:
        """Runs the chosen command, mapping errors to output and exit codes.

        Typer's own exceptions (usage errors, ``Exit``, ``Abort``) pass through
        untouched; an :class:`AdaptError` prints its diagnostics and exits with
        its ``exit_code``; anything else is an internal error (exit 3).
        """
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):
            raise
        except AdaptError as exc:
            from adaptlang.cli.output import print_error

            print_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise
            from adaptlang.cli.output import DISK_ERRNOS, print_error, write_error

            if exc.errno in DISK_ERRNOS:  # a full, read-only or forbidden disk: the user's to fix
                failure = write_error(exc.filename or "a file", exc)
                print_error(failure)
                raise typer.Exit(failure.exit_code) from None
            report_internal_error(exc)
            raise typer.Exit(EXIT_INTERNAL) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            report_internal_error(exc)
            raise typer.Exit(EXIT_INTERNAL) from None


def report_internal_error(exc: BaseException) -> None:
    """Prints a short internal-error notice; the traceback only with ADAPTLANG_DEBUG=1."""
    from adaptlang.cli.output import error_console, plain

    console = error_console()
    console.print(plain(f"adaptc: internal error: {type(exc).__name__}: {exc}"))
    if debug_enabled():
        console.print(plain("".join(traceback.format_exception(exc)).rstrip("\n")))
    else:
        console.print("  note: this is a bug in adaptc; rerun with ADAPTLANG_DEBUG=1 for the traceback")


def debug_enabled() -> bool:
    """Returns True when ``ADAPTLANG_DEBUG`` asks for tracebacks."""
    return os.environ.get("ADAPTLANG_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def show_version(value: bool) -> None:
    """Eager ``--version`` callback: prints the version and exits 0."""
    if value:
        from adaptlang import __version__

        typer.echo(f"adaptc {__version__}")
        raise typer.Exit(0)


def root_callback(
    version: Optional[bool] = typer.Option(
        None,
        "--version",
        callback=show_version,
        is_eager=True,
        help="Show the adaptc version and exit.",
    ),
) -> None:
    """adaptc: compile, check and format .adapt specs for parameter-efficient fine-tuning."""


def register_commands(app: typer.Typer) -> None:
    """Registers every command module, and the bundle commands when installed.

    A missing ``bundle_cmds`` module is skipped; an error *inside* it is not
    hidden (it would otherwise silently drop commands).
    """
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
    if importlib.util.find_spec(BUNDLE_MODULE) is not None:
        importlib.import_module(BUNDLE_MODULE).register(app)


def build_app() -> typer.Typer:
    """Builds the ``adaptc`` application with all of its commands.

    Returns:
        A typer app whose root group is :class:`AdaptGroup`.
    """
    new_app = typer.Typer(
        cls=AdaptGroup,
        name="adaptc",
        help="Compile, check and format .adapt specs for parameter-efficient fine-tuning.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    new_app.callback()(root_callback)
    register_commands(new_app)
    return new_app


app = build_app()


def run(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point (``adaptc``).

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` by default.
    """
    try:
        app(args=argv, prog_name="adaptc")
    except AdaptError as exc:  # raised outside a command (e.g. while parsing options)
        from adaptlang.cli.output import print_error

        print_error(exc)
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001
        report_internal_error(exc)
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":  # pragma: no cover
    run()
