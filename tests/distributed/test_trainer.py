"""A two-rank Hugging Face ``Trainer`` run (CPU, gloo) leaves the bundles one process would.

``trainer_ranks.py`` runs under ``torch.distributed.run`` with two ranks and
:class:`~adaptlang.bundles.trainer.BundleCallback`. DDP averages the ranks'
gradients, so with SGD and a mean loss each step equals one process's step
on the two ranks' batches concatenated; this test replays exactly the
batches the ranks recorded in one process and compares the bundles written
at the checkpoint and at the end, then loads the final bundle onto a fresh
model and compares its logits with the trained ranks'.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adaptlang
from tests.distributed.trainer_ranks import LR, SAVE_STEPS, SPEC, STEPS, TASK, build_model, probe

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TIMEOUT_S = 120  # a hung collective must fail the test, not the whole run


def run_ranks(script: Path, *args: str, ranks: int = 2) -> subprocess.CompletedProcess:
    """Runs ``script`` under ``torch.distributed.run`` on CPU; kills every rank if it outlives TIMEOUT_S."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    # --standalone: a free rendezvous port of its own, so concurrent runs on one machine do not collide.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               str(script), *args]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and its ranks: one session
        out, _ = process.communicate()
        pytest.fail(f"{script.name} {' '.join(args)} hung for {TIMEOUT_S} s:\n{out[-4000:]}")
    assert process.returncode == 0, f"{script.name} {' '.join(args)} failed:\n{out[-6000:]}"
    return subprocess.CompletedProcess(command, process.returncode, out)


def replay(batches: list[torch.Tensor]) -> tuple[dict[int, dict[str, torch.Tensor]], dict, object]:
    """One process, the same model and SGD, a mean loss over each step's concatenated batch.

    Returns:
        Task ``TASK``'s bundle tensors after every step (step 0: the initial
        values), task ``b``'s initial ones, and the trained handle.
    """
    model = build_model()
    adapted = adaptlang.apply(model, SPEC, task=TASK)
    optimizer = torch.optim.SGD([p for _, p in adapted.trainable_parameters()], lr=LR)
    model.train()
    after = {0: {k: v.clone() for k, v in adapted.bundle_tensors(TASK).items()}}
    for step, ids in enumerate(batches, start=1):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        after[step] = {k: v.clone() for k, v in adapted.bundle_tensors(TASK).items()}
    return after, {k: v.clone() for k, v in adapted.bundle_tensors("b").items()}, adapted


def max_difference(bundle: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    assert set(bundle) == set(expected)
    return max((bundle[k] - expected[k]).abs().max().item() for k in expected)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One two-rank DDP run, shared by the tests below (it is the slow part)."""
    out = tmp_path_factory.mktemp("ddp")
    run_ranks(HERE / "trainer_ranks.py", "ddp", str(out))
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, records


def test_ranks_trained_only_the_task_on_different_rows(ddp_run):
    _, records = ddp_run
    for record in records:
        assert record["wrapper"] == "DistributedDataParallel"
        assert record["steps"] == STEPS
        # The optimizer holds exactly the active task's deltas: no frozen base weight, no other task's delta.
        # attn: 2 layers x (q 4*(32+32) + v 4*(32+16)) = 896; bottleneck: 2 x (2*32*8 + 8 + 32) = 1104.
        assert record["optimizer_is_trainable"] and record["optimizer_numel"] == 896 + 1104
        assert record["frozen_with_grad"] == []
    # ddp_find_unused_parameters=False ran to the end: every parameter DDP registered got a gradient.
    rows = [[tuple(row) for row in step] for step in records[0]["batches"]]
    other = [[tuple(row) for row in step] for step in records[1]["batches"]]
    assert all(not set(a) & set(b) for a, b in zip(rows, other)), "both ranks trained on the same rows"


def assert_bundles_equal_one_process(out, records) -> None:
    """The run's final and checkpoint bundles equal one process replaying both ranks' batches concatenated."""
    batches = [torch.tensor(a + b) for a, b in zip(records[0]["batches"], records[1]["batches"])]
    after, other_task, _ = replay(batches)
    final = load_file(str(out / "adaptlang" / f"{TASK}.safetensors"))
    checkpoint = load_file(str(out / f"checkpoint-{SAVE_STEPS}" / "adaptlang" / f"{TASK}.safetensors"))
    # Every tensor moved well past the tolerance: a run that trained nothing (or too little) fails here.
    assert min((after[STEPS][k] - after[0][k]).abs().max().item() for k in after[0]) > 1e-4
    assert max_difference(final, after[STEPS]) < 1e-6
    assert max_difference(checkpoint, after[SAVE_STEPS]) < 1e-6
    assert max_difference(checkpoint, after[STEPS]) > 1e-3  # the checkpoint is step 2's, not the end's
    # Task b's delta was frozen throughout: its bundle holds its initial values, exactly.
    assert max_difference(load_file(str(out / "adaptlang" / "b.safetensors")), other_task) == 0.0


def test_bundles_equal_one_process_on_the_concatenated_batch(ddp_run):
    assert_bundles_equal_one_process(*ddp_run)


def test_final_bundle_loads_onto_a_fresh_model(ddp_run):
    out, records = ddp_run
    loaded = adaptlang.load(build_model(), out / "adaptlang" / f"{TASK}.safetensors")
    loaded.model.eval()
    with torch.no_grad():
        got = loaded.model(input_ids=probe()).logits
    for record in records:  # the trained model on each rank, in eval mode, after the last step
        assert (got - torch.tensor(record["logits"])).abs().max().item() <= 1e-6


def test_an_fsdp_config_through_the_trainer_leaves_correct_bundles(tmp_path):
    """``Trainer(fsdp=True, fsdp_config={"version": 2})``: whatever engine the Trainer picks, the bundle is right.

    accelerate 1.15's ``AcceleratorState`` turns a given FSDP plugin on only
    for accelerator devices (CUDA, XPU, NPU, ...); with ``use_cpu=True`` it
    keeps ``MULTI_CPU`` and the Trainer wraps the model in DDP instead
    (docs/training.md says so; asserted here on CPU, so a release that runs
    FSDP on CPU makes this test fail and the docs get updated). Either way the
    bundle must equal one process on the concatenated batches.
    """
    run_ranks(HERE / "trainer_ranks.py", "fsdp2", str(tmp_path))
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    if not torch.cuda.is_available():
        assert records[0]["wrapper"] == "DistributedDataParallel", records[0]["wrapper"]
    batches = [torch.tensor(a + b) for a, b in zip(records[0]["batches"], records[1]["batches"])]
    after, _, _ = replay(batches)
    assert max_difference(load_file(str(tmp_path / "adaptlang" / f"{TASK}.safetensors")), after[STEPS]) < 1e-6
