"""Files a stranger's folder may hold that are not regular files: a link to /dev/zero, a FIFO.

git commits symbolic links, so a repository can hold `adapt.lock -> /dev/zero`;
a downloaded model or adapter folder can too. Before, `read_text` on such a
file read forever (/dev/zero) or blocked until a writer came (a FIFO). Every
reader of these files now goes through `adaptlang.textfile.read_text_file`:
a regular file within a size limit, or a clear error naming the path.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from .conftest import SMALL_SPEC, TRACEBACK, invoke

KINDS = ["link-to-dev-zero", "fifo"]


def make_special(path, kind: str) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


@pytest.fixture(autouse=True)
def no_hang():
    """The bug was a hang: fail after 30 s instead of stalling the suite."""
    def stop(*_):
        raise TimeoutError("hung on a special file")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def refused(result, code: int, name: str, words: str = "not a regular file") -> None:
    assert result.exit_code == code, result.output
    assert TRACEBACK not in result.output and "internal error" not in result.output, result.output
    assert words in result.output and name in result.output, result.output


@pytest.mark.parametrize("kind", KINDS)
def test_a_special_lock_file_is_refused(runner, tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    make_special(tmp_path / "adapt.lock", kind)
    refused(invoke(runner, "lock", "--check"), 2, "adapt.lock")


@pytest.mark.parametrize("command", [("check",), ("fmt", "--check"), ("compile", "--model", "tiny-llama")])
@pytest.mark.parametrize("kind", KINDS)
def test_a_special_spec_file_is_refused(runner, tmp_path, kind, command):
    spec = tmp_path / "s.adapt"
    make_special(spec, kind)
    refused(invoke(runner, *command, spec), 2, "s.adapt")


@pytest.mark.parametrize("kind", KINDS)
def test_a_special_config_json_in_a_model_folder_is_refused(runner, tmp_path, kind):
    folder = tmp_path / "model"
    folder.mkdir()
    make_special(folder / "config.json", kind)
    (tmp_path / "s.adapt").write_text(SMALL_SPEC)
    # a folder whose config.json is not a regular file is not a model folder
    refused(invoke(runner, "check", tmp_path / "s.adapt", "--model", folder), 2, "model", "(no config.json)")


@pytest.mark.parametrize("kind", KINDS)
def test_a_special_adapter_config_is_refused(runner, tmp_path, peft_folder, kind):
    folder = tmp_path / "adapter"
    shutil.copytree(peft_folder, folder)
    make_special(folder / "adapter_config.json", kind)
    result = invoke(runner, "import-peft", folder, "--model", "tiny-llama", "--out", tmp_path / "out")
    refused(result, 1, "adapter", "no adapter_config.json")
    assert not (tmp_path / "out").exists()


# --- writing: a write replaces its file by renaming over it; over a device (as root:
# `-o /dev/null`) or a FIFO that would put a plain file in its place -------------------------

@pytest.mark.parametrize("args", [("compile", "s.adapt", "--model", "tiny-llama", "-o", "out"),
                                  ("lock", "s.adapt", "--model", "tiny-llama", "--lockfile", "out")],
                         ids=["compile-o", "lock-lockfile"])
def test_an_output_that_is_a_fifo_is_refused_and_kept(runner, tmp_path, monkeypatch, args):
    import stat

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.adapt").write_text(SMALL_SPEC)
    os.mkfifo(tmp_path / "out")
    result = invoke(runner, *args)
    refused(result, 2, "out")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out").st_mode)  # still the FIFO, not replaced


def test_a_bundle_save_over_a_fifo_is_refused_and_kept(tmp_path):
    import stat

    import adaptlang
    from adaptlang.errors import BundleError
    from adaptlang.plan.models import load_model

    model = load_model("tiny-llama", device="cpu")[0]
    adapted = adaptlang.apply(model, SMALL_SPEC)
    for task in adapted.plan.tasks:
        os.mkfifo(tmp_path / f"{task}.safetensors")
    with pytest.raises(BundleError, match="not a regular file"):
        adapted.save(tmp_path)
    assert all(stat.S_ISFIFO(p.lstat().st_mode) for p in tmp_path.iterdir())
