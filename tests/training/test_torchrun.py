"""``adaptc train`` under ``torchrun --nproc-per-node 2`` unchanged: DDP on CPU (gloo), one writer, one voice.

The command is the same as for one process. What must hold: the Trainer ran both processes as one
DDP job (the record says 2 processes, and each epoch took half the steps: 16 rows / (4 per process
x 2 processes) = 2 steps); only rank 0 printed; the bundle was written once and reads back; each
rank saved its own RNG state in the checkpoint (so a resume continues both).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adaptlang.bundles.bundle import read_bundle
from tests.training.support import LLAMA_SPEC, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120  # a hung collective must fail the test, not the whole run


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "adaptlang.cli.main", *args]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and its ranks: one session
        out, err = process.communicate()
        pytest.fail(f"torchrun adaptc train hung for {TIMEOUT_S} s:\n{err[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_two_processes_train_as_one_ddp_job(tmp_path, llama_folder):
    spec = tmp_path / "lm.adapt"
    spec.write_text(LLAMA_SPEC, encoding="utf-8")
    words = "the cat sat on the mat and the dog ran".split()
    data = write_jsonl(tmp_path / "train.jsonl", [{"text": " ".join(words[i:i + 4])} for i in range(5)] * 4)
    out = tmp_path / "out"
    done = torchrun("train", str(spec), "--model", str(llama_folder), "--data", str(data), "--eval-split", "0.2",
                    "--out", str(out), "--epochs", "2", "--batch-size", "4", "--lr", "0.02")
    assert done.returncode == 0, done.stderr[-6000:]
    assert done.stdout.count("wrote ") == 1 and done.stdout.strip().endswith(f"wrote {out / 'lm.safetensors'}")
    assert done.stderr.count("before training:") == 1
    assert done.stderr.count("task lm: 896 trainable parameters") == 1
    bundle = read_bundle(out / "lm.safetensors")
    record = bundle.manifest["training"]
    assert record["world_size"] == 2
    assert record["train"]["used"] == 16 and record["steps"] == 4  # 2 per epoch: each step took 2 x 4 rows
    assert record["metrics"]["after"]["loss"] < record["metrics"]["before"]["loss"]
    checkpoint = out / "checkpoints" / "checkpoint-4"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    saved = read_bundle(checkpoint / "adaptlang" / "lm.safetensors").tensors
    assert all(torch.equal(saved[k], bundle.tensors[k]) for k in bundle.tensors)
    assert not list(out.glob("*.tmp*")) and sorted(p.name for p in out.iterdir()) == ["checkpoints", "lm.safetensors"]
