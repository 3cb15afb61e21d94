"""Real ``adaptc`` processes: exit codes, no tracebacks, light start-up, stable output."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import BAD_SPEC, LOCATION, MULTITASK, REPO, TRACEBACK, UGLY_SPEC, run_adaptc, write_spec

# Runs adaptc in-process in a fresh interpreter, then reports which heavy modules got imported.
PROBE = """
import sys
from adaptlang.cli.main import run
try:
    run(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "transformers", "safetensors") if m in sys.modules)
print("PROBE", code, ",".join(heavy) or "-", file=sys.stderr)
"""


def probe(*args: str) -> tuple[int, list[str]]:
    """Returns (exit code, heavy modules imported) of ``adaptc ARGS`` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("PROBE ")][-1]
    _, code, heavy = line.split(" ")
    return int(code), [] if heavy == "-" else heavy.split(",")


def test_check_and_fmt_do_not_import_torch(tmp_path):
    spec = write_spec(tmp_path, "ugly.adapt", UGLY_SPEC)
    assert probe("check", MULTITASK) == (0, [])
    assert probe("fmt", "--check", spec) == (1, [])
    assert probe("fmt", spec) == (0, [])
    assert probe("--version") == (0, [])


def test_compile_json_is_stable_across_processes():
    first = run_adaptc("compile", MULTITASK, "--model", "llama", "--format", "json")
    second = run_adaptc("compile", MULTITASK, "--model", "llama", "--format", "json")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert json.loads(first.stdout)["tasks"]["qa_v2"]["bundle_params"] == 142598144


def test_spec_error_exit_1_without_traceback(tmp_path):
    spec = write_spec(tmp_path, "bad.adapt", BAD_SPEC)
    proc = run_adaptc("check", spec)
    assert proc.returncode == 1
    assert LOCATION.search(proc.stderr)
    assert "^" in proc.stderr
    assert TRACEBACK not in proc.stderr + proc.stdout


def test_usage_errors_exit_2_without_traceback(tmp_path):
    for args in (["compile", tmp_path / "missing.adapt"], ["compile", MULTITASK, "--set", "r"],
                 ["compile"], ["frobnicate"], ["inspect"]):
        proc = run_adaptc(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert TRACEBACK not in proc.stderr + proc.stdout


def test_fmt_check_exit_codes(tmp_path):
    spec = write_spec(tmp_path, "ugly.adapt", UGLY_SPEC)
    assert run_adaptc("fmt", "--check", spec).returncode == 1
    assert run_adaptc("fmt", spec).returncode == 0
    assert run_adaptc("fmt", "--check", spec).returncode == 0
