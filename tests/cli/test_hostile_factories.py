"""Issue 10 §1: a ``pkg.module:factory`` named by a file is never run unless the user allows it.

A factory reference imports a module and calls a function: ``os:abort`` kills
the process, ``sys:exit`` ends it with status 0 (so ``lock --check`` would
pass a drifted plan). It runs when the user names it (``--model``, or a
reference passed from Python) and, for references read from a file (a
spec's ``model`` statement, an ``adapt.lock`` entry, an adapter's
``base_model_name_or_path``, a bundle's model name carried through an
export), only with ``--allow-factory`` / ``allow_factory=True``. A refusal is
a usage error (exit 2) naming the file and the flag.

The harmless factory is a module written into the test's folder; it appends
to a marker file when called, so every test can tell whether code ran, in
process or in a real ``adaptc`` process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import adaptlang
from adaptlang.plan.models import FactoryRefusedError

from .conftest import TRACEBACK, invoke, run_adaptc

MODULE = "adaptlang_trust_factory"
REF = f"{MODULE}:tiny_llama"

FACTORY_SOURCE = '''
import os

def tiny_llama():
    import transformers
    from adaptlang.plan.presets import PRESETS

    with open(os.environ.get("ADAPTLANG_TEST_MARKER", "marker.txt"), "a") as handle:
        handle.write("ran\\n")
    preset = PRESETS["tiny-llama"]
    config = transformers.CONFIG_MAPPING[preset.model_type](**preset.config)
    return getattr(transformers, preset.cls)(config)
'''

BODY = """
lora attn {
    on   layers[*].self_attn.{q_proj, v_proj}
    rank 2
}

task main = attn
"""


def spec_text(model: str) -> str:
    return f"adaptlang 1\nmodel {model}\n{BODY}"


@pytest.fixture
def site(tmp_path, monkeypatch):
    """The factory module on sys.path, the marker file in the environment, cwd = tmp_path."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / f"{MODULE}.py").write_text(FACTORY_SOURCE)
    marker = tmp_path / "marker.txt"
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.setenv("ADAPTLANG_TEST_MARKER", str(marker))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop(MODULE, None)
    env = {"ADAPTLANG_TEST_MARKER": str(marker),
           "PYTHONPATH": os.pathsep.join([str(lib), *sys.path])}
    return {"root": tmp_path, "marker": marker, "env": env}


def ran(site) -> bool:
    return site["marker"].exists()


def refused(result, where: str) -> None:
    """Exit 2, the file named, the flag offered, nothing run."""
    assert result.exit_code == 2, result.output
    assert "names the Python factory" in result.stderr and where in result.stderr, result.stderr
    assert "--allow-factory" in result.stderr
    assert TRACEBACK not in result.output


# --- specs -------------------------------------------------------------------------------------

SPEC_COMMANDS = {
    "compile": ["compile", "s.adapt"],
    "compile-json": ["compile", "s.adapt", "-f", "json"],
    "check-head": ["check", "s.adapt", "--head", "causal-lm"],
    "lock": ["lock", "s.adapt"],
    "compile-out": ["compile", "s.adapt", "--out", "bundles"],
}


@pytest.mark.parametrize("model", ["sys:exit", "os:abort", "os:getcwd", REF], ids=["sys-exit", "os-abort",
                                                                                  "os-getcwd", "harmless"])
@pytest.mark.parametrize("command", list(SPEC_COMMANDS), ids=list(SPEC_COMMANDS))
def test_a_spec_naming_a_factory_is_refused(runner, site, command, model):
    (site["root"] / "s.adapt").write_text(spec_text(model))
    if model == "os:abort":  # a real process: if it ran, it would die of SIGABRT
        proc = run_adaptc(*SPEC_COMMANDS[command], cwd=site["root"], env=site["env"])
        assert proc.returncode == 2, proc.stderr
        assert "--allow-factory" in proc.stderr and "s.adapt" in proc.stderr
        return
    result = invoke(runner, *SPEC_COMMANDS[command])
    refused(result, "s.adapt")
    assert not ran(site)
    assert not (site["root"] / "adapt.lock").exists() and not (site["root"] / "bundles").exists()


@pytest.mark.parametrize("command", ["compile", "compile-json", "lock"], ids=["compile", "compile-json", "lock"])
def test_a_spec_factory_runs_with_allow_factory(runner, site, command):
    (site["root"] / "s.adapt").write_text(spec_text(REF))
    result = invoke(runner, *SPEC_COMMANDS[command], "--allow-factory")
    assert result.exit_code == 0, result.output
    assert ran(site)


def test_a_factory_named_on_the_command_line_runs(runner, site):
    (site["root"] / "s.adapt").write_text(spec_text("llama"))
    result = invoke(runner, "compile", "s.adapt", "--model", REF)
    assert result.exit_code == 0, result.output
    assert ran(site) and REF in result.stdout


def test_diff_with_head_refuses_a_spec_factory(runner, site):
    (site["root"] / "a.adapt").write_text(spec_text("sys:exit"))
    (site["root"] / "b.adapt").write_text(spec_text("sys:exit").replace("rank 2", "rank 4"))
    refused(invoke(runner, "diff", "a.adapt", "b.adapt", "--head", "causal-lm"), "a.adapt")
    plain = invoke(runner, "diff", "a.adapt", "b.adapt")  # no model: nothing is built
    assert plain.exit_code == 0 and "rank" in plain.stdout


def test_allowed_factory_calling_sys_exit_is_an_error_not_success(runner, site):
    (site["root"] / "s.adapt").write_text(spec_text("sys:exit"))
    result = invoke(runner, "compile", "s.adapt", "--allow-factory")
    assert result.exit_code == 2 and "model factory 'sys:exit' failed: SystemExit" in result.stderr


# --- adapt.lock ---------------------------------------------------------------------------------

def locked(runner, site, model_in_lock: str, from_spec: bool) -> Path:
    """Locks s.adapt against tiny-llama, then rewrites the entry's model as a hostile lock would."""
    (site["root"] / "s.adapt").write_text(spec_text("tiny-llama"))
    assert invoke(runner, "lock", "s.adapt").exit_code == 0
    path = site["root"] / "adapt.lock"
    lock = json.loads(path.read_text())
    entry = lock["specs"]["s.adapt"]["models"].pop("tiny-llama")
    entry["model_from_spec"] = from_spec
    lock["specs"]["s.adapt"]["models"][model_in_lock] = entry
    path.write_text(json.dumps(lock))
    if from_spec:
        (site["root"] / "s.adapt").write_text(spec_text(model_in_lock))
    return path


@pytest.mark.parametrize("from_spec", [False, True], ids=["lock-entry", "spec-statement"])
@pytest.mark.parametrize("model", ["sys:exit", "os:abort", REF], ids=["sys-exit", "os-abort", "harmless"])
def test_lock_check_refuses_a_factory_and_never_passes(runner, site, model, from_spec):
    locked(runner, site, model, from_spec)
    where = "adapt.lock" if not from_spec else "s.adapt"
    if model == "os:abort":
        proc = run_adaptc("lock", "--check", cwd=site["root"], env=site["env"])
        assert proc.returncode == 2, proc.stderr
        assert where in proc.stderr and "--allow-factory" in proc.stderr
        return
    refused(invoke(runner, "lock", "--check"), where)
    assert not ran(site)


@pytest.mark.parametrize("from_spec", [False, True], ids=["lock-entry", "spec-statement"])
def test_lock_check_with_allow_factory_runs_and_checks(runner, site, from_spec):
    locked(runner, site, REF, from_spec)
    result = invoke(runner, "lock", "--check", "--allow-factory")
    assert result.exit_code == 0, result.output  # the factory builds the same structure as tiny-llama
    assert ran(site)
    exits = locked(runner, site, "sys:exit", from_spec)
    assert exits.is_file()
    gate = invoke(runner, "lock", "--check", "--allow-factory")
    assert gate.exit_code != 0, gate.output  # sys.exit(0) from a factory does not pass the gate


# --- adapter_config.json and bundles ------------------------------------------------------------

def adapter_naming(peft_folder: Path, root: Path, base: str) -> Path:
    folder = root / "adapter"
    shutil.copytree(peft_folder, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("model", ["sys:exit", "os:abort", REF], ids=["sys-exit", "os-abort", "harmless"])
def test_import_peft_refuses_a_factory_base_model(runner, site, peft_folder, model):
    folder = adapter_naming(peft_folder, site["root"], model)
    if model == "os:abort":
        proc = run_adaptc("import-peft", folder, "--out", "o", cwd=site["root"], env=site["env"])
        assert proc.returncode == 2, proc.stderr
        assert "adapter_config.json" in proc.stderr and "--allow-factory" in proc.stderr
        return
    refused(invoke(runner, "import-peft", folder, "--out", "o"), "adapter_config.json")
    assert not ran(site) and not (site["root"] / "o").exists()


def test_import_peft_runs_a_factory_when_allowed_or_named(runner, site, peft_folder):
    folder = adapter_naming(peft_folder, site["root"], "sys:exit")
    named = invoke(runner, "import-peft", folder, "--model", REF, "--out", "o")
    assert named.exit_code == 0, named.output
    assert ran(site)
    site["marker"].unlink()
    folder2 = adapter_naming(peft_folder, site["root"] / "x", REF)
    allowed = invoke(runner, "import-peft", folder2, "--out", "o2", "--allow-factory")
    assert allowed.exit_code == 0, allowed.output
    assert ran(site)


@pytest.mark.parametrize("model", ["sys:exit", "os:abort"], ids=["sys-exit", "os-abort"])
def test_a_bundles_model_name_carried_through_export_is_refused_on_import(runner, site, model):
    """A bundle whose recorded model name is a factory: export writes it, import-peft must not run it."""
    from adaptlang.plan.models import load_model

    base = load_model("tiny-llama", device="cpu")[0]
    plan = adaptlang.compile(spec_text("tiny-llama"), base, name=model)
    adapted = adaptlang.apply(base, plan)
    (bundle,) = adapted.save(site["root"] / "bundles")
    assert invoke(runner, "export", bundle, "--to", "peft", "exported").exit_code == 0
    config = json.loads((site["root"] / "exported" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == model
    proc = run_adaptc("import-peft", "exported", "--out", "o", cwd=site["root"], env=site["env"])
    assert proc.returncode == 2, proc.stderr
    assert "--allow-factory" in proc.stderr


# --- the Python API -----------------------------------------------------------------------------

def test_python_compile_refuses_the_spec_factory_unless_allowed(site):
    with pytest.raises(FactoryRefusedError, match="allow_factory=True"):
        adaptlang.compile(spec_text("sys:exit"))
    with pytest.raises(FactoryRefusedError):
        adaptlang.compile(spec_text(REF))
    assert not ran(site)
    assert adaptlang.compile(spec_text(REF), allow_factory=True).model["name"] == REF
    site["marker"].unlink()
    assert adaptlang.compile(spec_text("llama"), REF).model["name"] == REF  # passed from Python: runs
    assert ran(site)


def test_python_library_entry_points_gate_file_references(site, peft_folder):
    from adaptlang.bundles.lockfile import build_lock, check_lock
    from adaptlang.bundles.peft_import import import_peft_adapter
    from adaptlang.plan.models import load_model

    (site["root"] / "s.adapt").write_text(spec_text(REF))
    with pytest.raises(FactoryRefusedError):
        build_lock([Path("s.adapt")], [], Path("."))
    lock = build_lock([Path("s.adapt")], [], Path("."), allow_factory=True)
    assert ran(site)
    site["marker"].unlink()
    with pytest.raises(FactoryRefusedError):
        check_lock(lock, Path("."))
    assert check_lock(lock, Path("."), allow_factory=True) == []
    site["marker"].unlink()
    folder = adapter_naming(peft_folder, site["root"], REF)
    with pytest.raises(FactoryRefusedError):
        import_peft_adapter(folder, None, site["root"] / "o")
    assert not ran(site)
    with pytest.raises(FactoryRefusedError):
        load_model("sys:exit", allow_factory=False, source="x.json")
    assert load_model(REF)[1] == REF  # a direct call names the reference itself
    assert ran(site)


def test_trust_remote_code_stays_off(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {"AutoModel": "x.Y"}}))
    proc = subprocess.run([sys.executable, "-c", "import adaptlang; adaptlang.compile('adaptlang 1\\n"
                           "lora a { on q_proj\\n rank 2 }\\ntask t = a\\n', model=%r)" % str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "custom code (auto_map)" in proc.stderr
