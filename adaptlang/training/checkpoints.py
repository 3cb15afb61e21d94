"""Adapter-only ``Trainer`` checkpoints: the task's bundle, not the whole model.

The ``Trainer`` checkpoints a model through ``save_pretrained``: every
weight, the frozen base included, each time (for a 7B model, 13 GB per
checkpoint to store what may be a few MB of deltas). :class:`AdapterTrainer`
stores instead the task's bundle (``checkpoint-N/adaptlang/<task>.safetensors``,
a complete bundle: it loads like any other) next to the ``Trainer``'s own
optimizer, scheduler, RNG and trainer state, and resumes from it: the
frozen base is the one the run started from, so the deltas are all that
changed.

Only the writer process (rank 0 under DDP, ``args.should_save``) writes;
the model is not sharded (``adaptc train`` refuses FSDP and DeepSpeed), so
rank 0 holds every value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Trainer

from adaptlang.bundles.trainer import BUNDLE_FOLDER
from adaptlang.errors import Diagnostic, UsageError

__all__ = ["AdapterTrainer", "checkpoint_bundle", "last_checkpoint", "load_checkpoint"]


def last_checkpoint(folder: Path, task: str) -> tuple[str | None, list[str]]:
    """The last complete checkpoint in ``folder``, and the incomplete ones after it.

    The ``Trainer`` writes a checkpoint's files one after the other and
    ``trainer_state.json`` last: a run stopped while saving leaves a folder
    without it (or without the bundle), from which no resume can start.

    Returns:
        ``(path of the last complete checkpoint or None, names of later incomplete ones)``.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    found = []
    for path in Path(folder).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.rpartition("-")[2]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    incomplete: list[str] = []
    for _, path in sorted(found, reverse=True):
        if (path / "trainer_state.json").is_file() and checkpoint_bundle(path, task).is_file():
            return str(path), sorted(incomplete)
        incomplete.append(path.name)
    return None, sorted(incomplete)


def checkpoint_bundle(checkpoint: str | Path, task: str) -> Path:
    """The bundle file inside a ``Trainer`` checkpoint folder."""
    return Path(checkpoint) / BUNDLE_FOLDER / f"{task}.safetensors"


def load_checkpoint(adapted: Any, task: str, checkpoint: str | Path) -> None:
    """Loads a checkpoint's bundle into the task's deltas.

    Raises:
        UsageError: The checkpoint has no bundle for ``task``, or one of
            another plan (another spec, task or model than this run's).
        BundleError: A damaged bundle.
    """
    from adaptlang.bundles.bundle import read_bundle

    path = checkpoint_bundle(checkpoint, task)
    if not path.is_file():
        raise UsageError(Diagnostic(f"checkpoint {checkpoint} holds no bundle for task '{task}'", obj=str(checkpoint),
                                    hint="resume only from checkpoints adaptc train wrote for this task"))
    bundle = read_bundle(path)
    ours = adapted.task_plan(task)["plan_sha256"]
    if bundle.task_plan["plan_sha256"] != ours:
        raise UsageError(Diagnostic(
            f"checkpoint {checkpoint} was trained with another plan than this run's", obj=str(checkpoint),
            hint="resume with the same spec, task and model; or start over with --overwrite",
            notes=(f"checkpoint's task plan {bundle.task_plan['plan_sha256'][:16]}, this run's {ours[:16]}",)))
    wanted = adapted.adapter_state_dict(task)  # parameters only: sparse positions come from the plan's seed
    adapted.load_adapter_state_dict({key: bundle.tensors[key] for key in wanted}, task)


def _uses_loss_function(model: Any) -> bool:
    """Whether ``model.forward`` computes its loss with ``self.loss_function`` (which honours ``num_items_in_batch``)."""
    import inspect

    forward = inspect.unwrap(type(model).forward)
    return "loss_function" in getattr(getattr(forward, "__code__", None), "co_names", ())


class AdapterTrainer(Trainer):
    """A ``Trainer`` whose checkpoints hold the task's bundle instead of the model's weights.

    Args:
        *args: As ``Trainer``.
        adapted: The handle of the model being trained.
        task: The task being trained.
        **kwargs: As ``Trainer``.
    """

    def __init__(self, *args: Any, adapted: Any, task: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.adapted = adapted
        self.task = task
        # The Trainer leaves each micro-batch's loss undivided by --grad-accum when forward takes **kwargs,
        # trusting the model to divide by num_items_in_batch. Heads that average their own loss (BERT's
        # classifier, T5) take **kwargs and ignore it (transformers #47688): loss and gradient would grow
        # with --grad-accum. Only a forward calling transformers' `self.loss_function` uses the count.
        if self.model_accepts_loss_kwargs and not _uses_loss_function(self.accelerator.unwrap_model(self.model)):
            self.model_accepts_loss_kwargs = False

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Writes the task's bundle (the ``Trainer`` calls this for checkpoints), on the writer process only."""
        if not self.args.should_save:
            return
        folder = Path(output_dir if output_dir is not None else self.args.output_dir) / BUNDLE_FOLDER
        self.adapted.save(folder, tasks=[self.task])

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Loads the checkpoint's bundle (the optimizer, scheduler and RNG states are the ``Trainer``'s)."""
        load_checkpoint(self.adapted, self.task, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the best checkpoint's bundle."""
        load_checkpoint(self.adapted, self.task, self.state.best_model_checkpoint)
