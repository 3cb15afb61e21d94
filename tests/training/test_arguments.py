"""``TrainingArguments``: defaults, then the --trainer-args file, then the flags given; bad files refused."""

from __future__ import annotations

import pytest

from adaptlang.errors import UsageError
from adaptlang.training.arguments import DEFAULTS, read_trainer_args, training_arguments

NO_FLAGS = {"epochs": None, "lr": None, "batch_size": None, "grad_accum": None, "seed": None, "warmup": None}


def build(tmp_path, flags=None, file_args=None, has_eval=True):
    return training_arguments(tmp_path / "ckpt", {**NO_FLAGS, **(flags or {})}, file_args or {}, has_eval=has_eval,
                              loss_only=False)


def test_defaults_then_file_then_flags(tmp_path):
    args, record = build(tmp_path)
    assert args.learning_rate == DEFAULTS["learning_rate"] and args.num_train_epochs == 3.0
    assert str(args.eval_strategy.value) == "epoch" and args.data_seed == 0
    path = tmp_path / "args.yaml"
    path.write_text("learning_rate: 0.01\nweight_decay: 0.1\nnum_train_epochs: 5\n", encoding="utf-8")
    file_args = read_trainer_args(path)
    args, record = build(tmp_path, {"lr": 0.02}, file_args)
    assert args.learning_rate == 0.02          # the flag given wins over the file
    assert args.num_train_epochs == 5          # the file wins over the default
    assert args.weight_decay == 0.1            # a field only the file sets
    assert record["learning_rate"] == 0.02 and record["weight_decay"] == 0.1 and record["eval_strategy"] == "epoch"
    assert args.output_dir == str(tmp_path / "ckpt") and args.remove_unused_columns is False
    assert args.disable_tqdm is True and args.report_to in ([], "none", ["none"])


def test_json_files_too(tmp_path):
    path = tmp_path / "args.json"
    path.write_text('{"lr_scheduler_type": "cosine"}', encoding="utf-8")
    args, _ = build(tmp_path, file_args=read_trainer_args(path))
    assert str(args.lr_scheduler_type.value) == "cosine"


def test_an_unknown_field_names_the_field_and_the_file(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text("learning_rat: 0.01\n", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        read_trainer_args(path)
    diag = err.value.diagnostics[0]
    assert diag.message == f"{path}: unknown TrainingArguments field 'learning_rat'"
    assert diag.hint == "did you mean 'learning_rate'?"
    assert err.value.exit_code == 2


@pytest.mark.parametrize("text, message", [
    ("output_dir: /tmp/x\n", "'output_dir' is set by adaptc train"),
    ("deepspeed: ds.json\n", "'deepspeed' is set by adaptc train"),
    ("- 1\n- 2\n", "holds a list, not a mapping"),
    ("a: [1\n", "cannot read"),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "args.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        read_trainer_args(path)


def test_values_transformers_refuses_name_the_file(tmp_path):
    with pytest.raises(UsageError, match="invalid training arguments") as err:
        training_arguments(tmp_path, NO_FLAGS, {"lr_scheduler_type": "sideways"}, has_eval=False, loss_only=False,
                           file="args.yaml")
    assert err.value.diagnostics[0].obj == "args.yaml"


def test_flag_ranges_and_evaluation_without_data(tmp_path):
    with pytest.raises(UsageError, match="--batch-size must be at least 1, not 0"):
        build(tmp_path, {"batch_size": 0})
    with pytest.raises(UsageError, match="--lr must be more than 0"):
        build(tmp_path, {"lr": float("nan")})
    with pytest.raises(UsageError, match="eval_strategy 'steps' without evaluation data"):
        build(tmp_path, file_args={"eval_strategy": "steps"}, has_eval=False)
    assert str(build(tmp_path, has_eval=False)[0].eval_strategy.value) == "no"


@pytest.mark.parametrize("text, field", [("push_to_hub: true\n", "push_to_hub"), ("hub_model_id: me/x\n", "hub_model_id"),
                                         ("hub_token: secret\n", "hub_token"), ("hub_strategy: end\n", "hub_strategy")])
def test_uploading_to_the_hub_is_refused(tmp_path, field, text):
    # push_to_hub would upload every checkpoint (the whole model, not the bundle) from a training run.
    path = tmp_path / "args.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=f"'{field}' is set by adaptc train") as err:
        read_trainer_args(path)
    assert "uploads nothing" in err.value.diagnostics[0].hint


@pytest.mark.parametrize("values, message", [
    ({"learning_rate": -1}, "learning_rate must be more than 0, not -1"),
    ({"learning_rate": float("nan")}, "learning_rate must be more than 0, not nan"),
    ({"num_train_epochs": 0}, "num_train_epochs must be more than 0, not 0"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size must be at least 1, not 0"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be at least 1, not 0"),
    ({"warmup_steps": -2}, "warmup_steps must be 0 or more, not -2"),
])
def test_the_file_gets_the_flags_range_checks(tmp_path, values, message):
    # Before, a negative or NaN learning rate from the file reached torch's optimizer: an internal error (exit 3).
    with pytest.raises(UsageError, match=message) as err:
        training_arguments(tmp_path, NO_FLAGS, values, has_eval=False, loss_only=False, file="args.yaml")
    assert err.value.diagnostics[0].obj == "args.yaml"


def test_report_to_an_integration_that_is_not_installed_is_refused(tmp_path):
    from transformers.integrations import get_available_reporting_integrations

    assert "wandb" not in get_available_reporting_integrations()  # the pinned environment has none
    with pytest.raises(UsageError, match="report_to 'wandb': not installed") as err:
        training_arguments(tmp_path, NO_FLAGS, {"report_to": ["wandb"]}, has_eval=False, loss_only=False,
                           file="args.yaml")
    assert err.value.diagnostics[0].obj == "args.yaml"
    assert build(tmp_path, file_args={"report_to": "all"})[0].report_to in ([], "none", ["none"])
