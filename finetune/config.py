"""TrainConfig: the one schema for the UI form, the REST body and config.json.

Field names follow ``transformers.TrainingArguments`` where one exists, so a
user who knows the Trainer knows this form. Descriptions double as the help
text the UI shows next to each input.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from finetune.tinymodel import BUNDLED_MODEL_ID

SCHEDULERS = (
    "linear",
    "cosine",
    "constant",
    "constant_with_warmup",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
)


class TrainConfig(BaseModel):
    # forbid: a misspelt field ("learnig_rate") must be refused, not ignored.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    dataset_id: str = Field(..., min_length=1, max_length=128, description="Dataset to train on (from POST /api/datasets; 'demo' is the bundled one).")
    base_model: str = Field(
        BUNDLED_MODEL_ID, min_length=1, max_length=256,
        description="Hub model id (needs network) or a local folder. The default is the bundled offline tiny Llama.",
    )
    method: Literal["lora", "full"] = Field("lora", description="LoRA trains small adapter matrices (fast, light); full updates every weight.")

    text_column: str | None = Field(None, description="Column holding the whole training text (plain-text datasets).")
    prompt_column: str | None = Field(None, description="Column holding the prompt (prompt/completion datasets).")
    completion_column: str | None = Field(None, description="Column holding the answer the model should learn.")
    completion_only_loss: bool = Field(True, description="Train only on completion tokens; prompt tokens are masked out of the loss.")
    max_seq_length: int = Field(256, ge=8, le=32768, description="Longer examples are truncated to this many tokens.")
    packing: bool = Field(False, description="Pack several short examples into each max_seq_length row (faster on short data; attention stays within each example).")

    eval_fraction: float = Field(0.0, ge=0, le=0.5, description="Hold out this fraction of the dataset for evaluation (split by seed). 0 disables.")
    eval_dataset_id: str | None = Field(None, max_length=128, description="A second uploaded dataset to evaluate on (instead of eval_fraction).")
    eval_steps: int = Field(50, ge=1, le=10000000, description="Evaluate every N steps when an eval set exists.")

    num_train_epochs: float = Field(10.0, gt=0, le=10000, description="Passes over the dataset (ignored when max_steps > 0).")
    max_steps: int = Field(-1, ge=-1, description="Total optimizer steps; -1 uses num_train_epochs instead.")
    learning_rate: float = Field(2e-3, gt=0, le=1, description="Peak learning rate. LoRA tolerates higher rates than full fine-tuning.")
    per_device_train_batch_size: int = Field(8, ge=1, le=4096, description="Examples per step on each device.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="Steps to accumulate before an update: a larger effective batch without more memory.")
    warmup_steps: float = Field(0.05, ge=0, description="Warm-up length: a value below 1 is a fraction of all steps, 1 or more a number of steps.")
    lr_scheduler_type: Literal[SCHEDULERS] = Field("cosine", description="How the learning rate changes after warm-up.")  # type: ignore[valid-type]
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    logging_steps: int = Field(5, ge=1, le=100000, description="Log loss and learning rate every N steps.")
    save_steps: int = Field(100, ge=1, le=10000000, description="Save a checkpoint every N steps (resume starts from the newest).")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Random seed for shuffling and initialisation.")

    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank: adapter size. 8-64 is typical.")
    lora_alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling; often twice the rank.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    lora_target_modules: str = Field(
        "all-linear", min_length=1,
        description="Layers to adapt: 'all-linear' or comma-separated module names (e.g. q_proj,v_proj).",
    )

    @field_validator("max_steps")
    @classmethod
    def _steps_not_zero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("max_steps must be -1 (use num_train_epochs) or at least 1")
        return v

    @field_validator("text_column", "prompt_column", "completion_column", "eval_dataset_id")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v or None

    @model_validator(mode="after")
    def _columns_consistent(self) -> TrainConfig:
        if (self.prompt_column is None) != (self.completion_column is None):
            raise ValueError("set both prompt_column and completion_column, or neither")
        if self.text_column and self.prompt_column:
            raise ValueError("choose either text_column or prompt_column + completion_column, not both")
        if self.eval_dataset_id and self.eval_fraction:
            raise ValueError("use either eval_fraction or eval_dataset_id, not both")
        return self

    def target_modules(self) -> str | list[str]:
        if self.lora_target_modules.strip() == "all-linear":
            return "all-linear"
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]


def field_help(name: str) -> str:
    """The help text for a field, for the UI (the schema is the source)."""
    return TrainConfig.model_fields[name].description or ""
