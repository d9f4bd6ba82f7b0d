"""TrainConfig: one schema for the form, the REST body and config.json."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from finetune.config import TrainConfig, field_help
from finetune.errors import describe_errors, describe_validation_error
from finetune.tinymodel import BUNDLED_MODEL_ID


def refused(**fields) -> str:
    with pytest.raises(ValidationError) as info:
        TrainConfig(**fields)
    return describe_validation_error(info.value)


def test_only_dataset_id_is_required_and_defaults_are_sane():
    cfg = TrainConfig(dataset_id="demo")
    assert cfg.base_model == BUNDLED_MODEL_ID  # offline by default
    assert cfg.method == "lora"
    assert cfg.max_steps == -1 and cfg.num_train_epochs > 0
    assert 0 < cfg.learning_rate <= 1
    assert cfg.per_device_train_batch_size >= 1 and cfg.gradient_accumulation_steps >= 1
    assert cfg.completion_only_loss is True
    assert cfg.text_column is None and cfg.prompt_column is None and cfg.completion_column is None
    assert cfg.target_modules() == "all-linear"
    assert "dataset_id: is required" in refused()


def test_round_trips_through_json_like_config_json():
    cfg = TrainConfig(dataset_id="demo", method="full", max_steps=12, learning_rate=1e-4, lora_target_modules="q_proj, v_proj")
    again = TrainConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg
    assert again.target_modules() == ["q_proj", "v_proj"]


def test_unknown_field_is_refused_and_named():
    msg = refused(dataset_id="demo", learnig_rate=1e-3)
    assert msg.startswith("learnig_rate:")
    assert "not a known setting" in msg


@pytest.mark.parametrize("value", [-1e-4, 0.0])
def test_learning_rate_must_be_positive(value):
    msg = refused(dataset_id="demo", learning_rate=value)
    assert msg.startswith("learning_rate:")
    assert "greater than 0" in msg


def test_max_steps_zero_refused_but_minus_one_and_positive_accepted():
    msg = refused(dataset_id="demo", max_steps=0)
    assert msg.startswith("max_steps:") and "-1" in msg
    assert "max_steps:" in refused(dataset_id="demo", max_steps=-2)
    assert TrainConfig(dataset_id="demo", max_steps=-1).max_steps == -1
    assert TrainConfig(dataset_id="demo", max_steps=1).max_steps == 1


def test_prompt_without_completion_refused():
    msg = refused(dataset_id="demo", prompt_column="prompt")
    assert "prompt_column" in msg and "completion_column" in msg
    msg = refused(dataset_id="demo", completion_column="completion")
    assert "prompt_column" in msg and "completion_column" in msg


def test_text_and_prompt_columns_together_refused():
    msg = refused(dataset_id="demo", text_column="text", prompt_column="p", completion_column="c")
    assert "text_column" in msg


def test_blank_columns_mean_unset_and_strings_are_stripped():
    cfg = TrainConfig(dataset_id="  demo ", text_column="", prompt_column="", completion_column="")
    assert cfg.dataset_id == "demo"
    assert cfg.text_column is None and cfg.prompt_column is None


def test_bad_choices_and_types_are_named():
    assert refused(dataset_id="demo", method="qlora").startswith("method:")
    assert refused(dataset_id="demo", lr_scheduler_type="sawtooth").startswith("lr_scheduler_type:")
    msg = refused(dataset_id="demo", per_device_train_batch_size="abc")
    assert msg.startswith("per_device_train_batch_size:") and "'abc'" in msg
    assert refused(dataset_id="demo", per_device_train_batch_size=0).startswith("per_device_train_batch_size:")
    assert refused(dataset_id="demo", lora_dropout=1.0).startswith("lora_dropout:")


def test_several_errors_are_all_named():
    msg = refused(dataset_id="demo", learning_rate=-1, logging_steps=0)
    assert "learning_rate:" in msg and "logging_steps:" in msg


def test_describe_errors_shapes_fastapi_locations():
    # What FastAPI hands the exception handler for a JSON body.
    errors = [
        {"type": "greater_than", "loc": ("body", "learning_rate"), "msg": "Input should be greater than 0", "input": -1},
        {"type": "missing", "loc": ("query", "since"), "msg": "Field required"},
    ]
    msg = describe_errors(errors)
    assert "learning_rate: Input should be greater than 0 (got -1)" in msg
    assert "since: is required" in msg
    assert "body" not in msg.split(":")[0]
    assert describe_errors([]) == "The request is not valid."


def test_every_field_has_help_text():
    for name in TrainConfig.model_fields:
        assert field_help(name).strip(), name
