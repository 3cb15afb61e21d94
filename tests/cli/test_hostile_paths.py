"""Issue 10 §5: output paths, full and read-only disks, ``--set`` values and non-UTF-8 names.

Every option that names where ``adaptc`` writes is checked the same way,
before any work (:func:`adaptlang.cli.output.output_file` /
``output_folder``): a folder, a file in a missing folder or an empty string
is a usage error (exit 2) naming the path; ``-`` is standard output for text
and refused for folders of binary files. A write the disk refuses (full,
read-only) is exit 2 naming the path, and the file as it was is kept.

The tests run as root here, where ``chmod 0500`` stops no write, so a full
or read-only disk is simulated by making ``os.replace``, ``tempfile.mkstemp``
or ``os.fsync`` raise the ``OSError`` the kernel would.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest

from .conftest import SMALL_SPEC, TRACEBACK, invoke


@pytest.fixture
def work(tmp_path, monkeypatch):
    """cwd = tmp_path, holding s.adapt (Llama), a folder d/ and a file taken.txt."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.adapt").write_text(SMALL_SPEC)
    (tmp_path / "d").mkdir()
    (tmp_path / "taken.txt").write_text("old\n")
    return tmp_path


def usage(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert TRACEBACK not in result.output and "internal error" not in result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr


# --- output paths -----------------------------------------------------------------------------

BAD_PATHS = {
    "compile-o-folder": (["compile", "s.adapt", "-o", "d"], "is a folder"),
    "compile-o-folder-slash": (["compile", "s.adapt", "-o", "new/"], "is a folder"),
    "compile-o-missing-folder": (["compile", "s.adapt", "-o", "nope/plan.json"], "no such folder"),
    "compile-o-under-a-file": (["compile", "s.adapt", "-o", "taken.txt/plan.json"], "is not a folder"),
    "compile-o-empty": (["compile", "s.adapt", "-o", ""], "not an empty string"),
    "compile-out-stdout": (["compile", "s.adapt", "--out", "-"], "not standard output"),
    "compile-out-empty": (["compile", "s.adapt", "--out", ""], "not an empty string"),
    "compile-out-a-file": (["compile", "s.adapt", "--out", "taken.txt"], "is a file, not a folder"),
    "lock-folder": (["lock", "s.adapt", "--lockfile", "d"], "is a folder"),
    "lock-missing-folder": (["lock", "s.adapt", "--lockfile", "nope/adapt.lock"], "no such folder"),
    "lock-empty": (["lock", "s.adapt", "--lockfile", ""], "not an empty string"),
    "lock-check-folder": (["lock", "--check", "--lockfile", "d"], "is a folder"),
    "lock-check-missing-folder": (["lock", "--check", "--lockfile", "nope/adapt.lock"], "no lock file"),
    "lock-check-empty": (["lock", "--check", "--lockfile", ""], "not an empty string"),
    "predict-out-folder": (["predict", "b.safetensors", "--model", "tiny-llama", "--data", "x.jsonl", "-o", "d"],
                           "is a folder"),
    "predict-out-missing-folder": (["predict", "b.safetensors", "--model", "tiny-llama", "--data", "x.jsonl",
                                    "-o", "nope/p.jsonl"], "no such folder"),
    "predict-out-empty": (["predict", "b.safetensors", "--model", "tiny-llama", "--data", "x.jsonl", "-o", ""],
                          "not an empty string"),
    "train-out-stdout": (["train", "s.adapt", "--task", "main", "--model", "tiny-llama", "--data", "x.jsonl",
                          "--out", "-"], "not standard output"),
    "train-out-empty": (["train", "s.adapt", "--task", "main", "--model", "tiny-llama", "--data", "x.jsonl",
                         "--out", ""], "not an empty string"),
    "export-stdout": (["export", "b.safetensors", "-", "--to", "peft"], "not standard output"),
    "export-empty": (["export", "b.safetensors", "", "--to", "peft"], "not an empty string"),
    "export-a-file": (["export", "b.safetensors", "taken.txt", "--to", "peft"], "is a file, not a folder"),
    "import-peft-stdout": (["import-peft", "d", "--out", "-"], "not standard output"),
    "import-peft-empty": (["import-peft", "d", "--out", ""], "not an empty string"),
    "import-peft-a-file": (["import-peft", "d", "--out", "taken.txt"], "is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(BAD_PATHS), ids=list(BAD_PATHS))
def test_a_bad_output_path_is_a_usage_error_naming_it(runner, work, case):
    args, needle = BAD_PATHS[case]
    before = sorted(p.name for p in work.iterdir())
    usage(invoke(runner, *args), needle)
    assert sorted(p.name for p in work.iterdir()) == before  # nothing written, nothing created
    assert (work / "taken.txt").read_text() == "old\n"


@pytest.mark.parametrize("fmt", ["table", "json", "dot"])
def test_compile_dash_o_is_standard_output(runner, work, fmt):
    plain = invoke(runner, "compile", "s.adapt", "-f", fmt)
    dash = invoke(runner, "compile", "s.adapt", "-f", fmt, "-o", "-")
    assert dash.exit_code == 0 and dash.stdout == plain.stdout
    assert not (work / "-").exists()


def test_lock_dash_writes_stdout_and_check_reads_stdin(runner, work):
    written = invoke(runner, "lock", "s.adapt", "--model", "tiny-llama", "--lockfile", "-")
    assert written.exit_code == 0, written.output
    lock = json.loads(written.stdout)
    assert list(lock["specs"]) == ["s.adapt"] and not (work / "-").exists()
    checked = runner.invoke(__import__("adaptlang.cli.main", fromlist=["app"]).app,
                            ["lock", "--check", "--lockfile", "-"], input=written.stdout)
    assert checked.exit_code == 0, checked.output
    drifted = written.stdout.replace(lock["specs"]["s.adapt"]["models"]["tiny-llama"]["plan_sha256"], "0" * 64)
    again = runner.invoke(__import__("adaptlang.cli.main", fromlist=["app"]).app,
                          ["lock", "--check", "--lockfile", "-"], input=drifted)
    assert again.exit_code == 1 and "the plan changed" in again.stderr


# --- full and read-only disks -------------------------------------------------------------------

def refuse(kind: str, code: int, monkeypatch) -> None:
    """Makes the next writes fail as a full (ENOSPC) or read-only (EROFS) disk would."""
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(args[0]) if args else None)

    target = {"replace": (os, "replace"), "mkstemp": (tempfile, "mkstemp"), "fsync": (os, "fsync")}[kind]
    monkeypatch.setattr(*target, fail)


WRITES = {
    "compile-o": (["compile", "s.adapt", "-o", "taken.txt"], "taken.txt"),
    "lock": (["lock", "s.adapt", "--model", "tiny-llama", "--lockfile", "taken.txt"], "taken.txt"),
    "fmt": (["fmt", "ugly.adapt"], "ugly.adapt"),
}
DISKS = {"full-at-rename": ("replace", errno.ENOSPC), "full-at-sync": ("fsync", errno.ENOSPC),
         "read-only": ("mkstemp", errno.EROFS), "no-permission": ("mkstemp", errno.EACCES)}


@pytest.mark.parametrize("disk", list(DISKS), ids=list(DISKS))
@pytest.mark.parametrize("write", list(WRITES), ids=list(WRITES))
def test_a_refused_write_is_exit_2_and_keeps_the_old_file(runner, work, monkeypatch, write, disk):
    (work / "ugly.adapt").write_text(SMALL_SPEC.replace("rank r", "rank    r"))
    args, name = WRITES[write]
    old = (work / name).read_bytes()
    refuse(*DISKS[disk], monkeypatch)
    result = invoke(runner, *args)
    usage(result, f"cannot write {name}", os.strerror(DISKS[disk][1]))
    assert (work / name).read_bytes() == old
    assert not [p for p in work.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


def test_fmt_goes_on_after_a_refused_write(runner, work, monkeypatch):
    for name in ("a.adapt", "b.adapt"):
        (work / name).write_text(SMALL_SPEC.replace("rank r", "rank    r"))
    real = os.replace
    calls = []

    def first_fails(src, dst, *a, **k):
        calls.append(dst)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", first_fails)
    result = invoke(runner, "fmt", "a.adapt", "b.adapt")
    usage(result, "cannot write a.adapt")
    ugly = SMALL_SPEC.replace("rank r", "rank    r")
    assert (work / "a.adapt").read_text() == ugly and (work / "b.adapt").read_text() != ugly


def test_any_disk_error_reaching_the_top_is_a_usage_error(runner, work, monkeypatch):
    def readonly(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), "somewhere/file")

    monkeypatch.setattr("adaptlang.cli.compile_cmds.build_plan", readonly)
    usage(invoke(runner, "compile", "s.adapt"), "somewhere/file", "Read-only file system")


# --- --set values -------------------------------------------------------------------------------

SETS = {
    "300-nines": "9" * 300,
    "5000-digits": "1" * 5000,
    "inf": "inf",
    "minus-inf": "-inf",
    "nan": "nan",
    "1e400": "1e400",
    "huge-negative-exponent-ok-length": "-" + "9" * 99,
    "hex": "0x10",
    "empty": "",
    "spaces": "   ",
    "text": "sixteen",
}


@pytest.mark.parametrize("value", list(SETS.values()), ids=list(SETS))
def test_a_bad_set_value_is_a_usage_error(runner, work, value):
    result = invoke(runner, "compile", "s.adapt", "--set", f"r={value}")
    if value.startswith("-9"):  # a number in range and under the length limit: the spec judges it
        assert result.exit_code in (1, 2) and TRACEBACK not in result.output, result.output
        return
    usage(result, "--set")
    if len(value) > 100:
        assert "SET_VALUE_MAX_CHARS" in result.stderr and "100" in result.stderr


# --- names that are not UTF-8 -------------------------------------------------------------------

NAMES = {"lone-ff": b"\xff", "in-the-middle": b"ad\xffx", "latin1": b"caf\xe9", "escape-too": b"\x1b[2J\xff"}


@pytest.mark.parametrize("raw", list(NAMES.values()), ids=list(NAMES))
def test_import_peft_of_a_non_utf8_folder(runner, work, peft_folder, raw):
    import shutil

    folder = os.fsdecode(os.path.join(os.fsencode(str(work)), raw))
    shutil.copytree(peft_folder, folder)
    result = invoke(runner, "import-peft", folder, "--model", "tiny-llama", "--out", "o")
    assert result.exit_code == 0, result.output
    spec = next((work / "o").glob("*.adapt"))
    text = spec.read_text(encoding="utf-8")  # the spec is UTF-8, the name shown as \xNN
    assert "\\x" in text and invoke(runner, "check", spec).exit_code == 0
    missing = invoke(runner, "import-peft", folder + "nope", "--model", "tiny-llama", "--out", "o2")
    usage(missing, "no such folder")
    out_name = os.fsdecode(os.path.join(os.fsencode(str(work)), b"out" + raw))
    written = invoke(runner, "import-peft", folder, "--model", "tiny-llama", "--out", out_name)
    assert written.exit_code == 0, written.output
    assert Path(out_name).is_dir()


# --- names too long for the file system (ENAMETOOLONG): Path.exists() raised OSError, exit 3 -----

LONG = "x" * 5000


@pytest.mark.parametrize("args", [("compile", "long.adapt"), ("compile", "s.adapt", "--model", LONG),
                                  ("check", "s.adapt", "--model", LONG)],
                         ids=["spec-model-statement", "compile-model-flag", "check-model-flag"])
def test_a_model_name_too_long_for_a_path_is_an_unknown_model(runner, work, args):
    (work / "long.adapt").write_text(SMALL_SPEC.replace("model llama\n", f'model "{LONG}"\n', 1))
    usage(invoke(runner, *args), "unknown model")


def test_a_bundle_path_too_long_is_a_bundle_error():
    import adaptlang
    from adaptlang.errors import BundleError
    from adaptlang.plan.models import load_model

    with pytest.raises(BundleError, match="no such file"):
        adaptlang.load(load_model("tiny-llama", device="cpu")[0], LONG + ".safetensors")


def test_a_text_output_cleans_the_temporary_a_killed_write_left(runner, work):
    """`-o` writes through the bundles' recognisable temporaries, so a killed compile's is removed next time."""
    import subprocess
    import sys

    from adaptlang.tempfiles import _host

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no running process
    stale = work / f".plan.json.adaptlang-{_host()}-{dead.pid}-abcdefgh.tmp"
    stale.write_text("half a plan")
    other = work / ".plan.json.someone-else.tmp"
    other.write_text("not ours")
    assert invoke(runner, "compile", "s.adapt", "-o", "plan.json").exit_code == 0
    assert not stale.exists() and other.exists()
    assert (work / "plan.json").read_text().startswith("model ")  # the plan summary, written whole
    assert sorted(p.name for p in work.iterdir() if p.name.endswith(".tmp")) == [other.name]
