"""Section 5: bundles. Save and load one all-linear r=16 task on the Llama-2-7B shape, vs PEFT.

Ours: ``adapted.save(dir)`` and ``adaptlang.load(model, bundle)``; PEFT:
``save_pretrained(dir)`` and ``PeftModel.from_pretrained(model, dir)``. The
task's 40M adapter values are random and copied into PEFT's adapter, so the
two files hold the same numbers (asserted after loading).

The base models are real CPU models of the 7B shape (32 layers, fp16) whose
weights are allocated but never written: saving and loading an adapter never
reads base weights, so their pages are not touched and a 7B base costs no
memory. Each load goes onto a clean base (the previous load is taken off,
untimed, before the next sample).
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

import adaptlang
from adaptlang.plan.models import load_model
from bench.report import Row, make_row
from bench.setups import copy_lora_to_peft, lora_spec, peft_lora_config, randomize
from bench.timing import interleave

__all__ = ["available", "run"]

SECTION = "5 bundles"
SPEC = lora_spec(["task"])


def available() -> str | None:
    """Returns why the section cannot run (no bundle API yet), or None."""
    from adaptlang.runtime.adapted import Adapted

    if not hasattr(adaptlang, "load"):
        return "adaptlang.load is not available"
    try:
        bundles = importlib.import_module("adaptlang.bundles")
    except Exception as exc:  # noqa: BLE001 - a half-written bundles package must not stop the suite
        return f"adaptlang.bundles does not import: {exc}"
    handle = getattr(bundles, "BundleAdapted", None)
    if handle is None or not hasattr(handle, "save") or not issubclass(handle, Adapted):
        return "Adapted.save is not available"
    return None


def base_7b() -> torch.nn.Module:
    """The Llama-2-7B structure on the CPU, weights allocated but untouched (see the module docstring)."""
    model = load_model("llama", device="meta")[0].to_empty(device="cpu")
    return model.eval()


def run(setting: Any, quick: bool) -> list[Row]:
    """Runs section 5 and returns its rows."""
    from peft import PeftModel, get_peft_model

    why = available()
    if why is not None:
        return [Row(SECTION, "save / load", None, note=f"not available: {why}")]
    tmp = Path(tempfile.mkdtemp(prefix="adaptlang-bench-"))
    try:
        ours_model, peft_model = base_7b(), base_7b()
        adapted = adaptlang.apply(ours_model, SPEC)
        randomize(adapted, ["task_lora"], seed=3)
        peft = get_peft_model(peft_model, peft_lora_config(), adapter_name="default")
        copy_lora_to_peft(adapted, "task_lora", peft, "default")
        ours_dir, peft_dir = tmp / "ours", tmp / "peft"
        saves = {"ours": lambda: adapted.save(ours_dir), "peft": lambda: peft.save_pretrained(str(peft_dir))}
        t_save = interleave(saves, 3 if quick else 5, warmup=1)
        bundle = ours_dir / "task.safetensors"
        expected = {k: v.detach().clone() for k, v in adapted.delta_parameters("task_lora").items()}
        adapted.remove()
        peft_model = peft.unload()

        pending: list[Any] = []

        def clean() -> None:
            while pending:
                pending.pop()()

        def load_ours(_: Any) -> None:
            pending.append(adaptlang.load(ours_model, bundle).remove)

        def load_peft(_: Any) -> None:
            pending.append(PeftModel.from_pretrained(peft_model, str(peft_dir)).unload)

        t_load = interleave({"ours": (clean, load_ours), "peft": (clean, load_peft)}, 3 if quick else 5, warmup=1)
        clean()
        check_loaded(ours_model, peft_model, bundle, peft_dir, expected)
        size = bundle.stat().st_size / 2**20
        note = f"Llama-2-7B shape (32 layers, fp16 base), 224 sites, 40M adapter values; bundle {size:.0f} MiB"
        return [make_row(SECTION, "save: PEFT save_pretrained", t_save["peft"]),
                make_row(SECTION, "save: ours adapted.save", t_save["ours"], "PEFT (speed-up)", t_save["peft"],
                         invert=True, note=note),
                make_row(SECTION, "load: PEFT from_pretrained", t_load["peft"]),
                make_row(SECTION, "load: ours adaptlang.load", t_load["ours"], "PEFT (speed-up)", t_load["peft"],
                         (">=", 2.0), invert=True)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_loaded(ours_model: Any, peft_model: Any, bundle: Path, peft_dir: Path, expected: dict) -> None:
    """Both loads give back exactly the values that were saved."""
    from peft import PeftModel

    loaded = adaptlang.load(ours_model, bundle)
    peft = PeftModel.from_pretrained(peft_model, str(peft_dir))
    try:
        for key, value in loaded.delta_parameters("task_lora").items():
            if not torch.equal(value, expected[key]):
                raise AssertionError(f"ours: {key} differs after loading")
            path, name = key.rsplit("/", 1)
            theirs = getattr(peft.base_model.model.get_submodule(path), name)["default"].weight
            if not torch.equal(theirs, value):
                raise AssertionError(f"PEFT: {key} differs from ours after loading")
    finally:
        loaded.remove()
        peft.unload()
