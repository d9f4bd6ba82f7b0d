"""Turn examples into token ids and labels (pure: a tokenizer in, lists out).

Prompt/completion examples are joined as ``prompt + "\\n" + completion + eos``.
With ``completion_only`` the prompt tokens get label -100, so the loss (and
what the model learns) covers only the answer. Tokenising prompt and
completion separately keeps the boundary exact whatever the tokenizer merges.
"""

from __future__ import annotations

from typing import Any

from finetune.data import Examples

IGNORE_INDEX = -100
PROMPT_SEPARATOR = "\n"


def format_prompt(prompt: str) -> str:
    """The exact text the model sees before its answer (also used to generate)."""
    return prompt + PROMPT_SEPARATOR


def tokenize_examples(
    examples: Examples, tokenizer: Any, max_length: int, completion_only: bool = True
) -> dict[str, Any]:
    """Return ``{"input_ids", "labels", "truncated"}`` for every example."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    truncated = 0
    if examples.texts is not None:
        encoded = tokenizer(examples.texts, add_special_tokens=False)["input_ids"]
        for ids in encoded:
            ids = ids + eos
            if len(ids) > max_length:
                truncated += 1
                ids = ids[:max_length]
            input_ids.append(ids)
            labels.append(list(ids))
    else:
        assert examples.prompts is not None and examples.completions is not None
        prompts = tokenizer([format_prompt(p) for p in examples.prompts], add_special_tokens=False)["input_ids"]
        answers = tokenizer(examples.completions, add_special_tokens=False)["input_ids"]
        for p_ids, c_ids in zip(prompts, answers, strict=True):
            c_ids = c_ids + eos
            ids = p_ids + c_ids
            lab = ([IGNORE_INDEX] * len(p_ids) if completion_only else list(p_ids)) + list(c_ids)
            if len(ids) > max_length:
                truncated += 1
                ids, lab = ids[:max_length], lab[:max_length]
            input_ids.append(ids)
            labels.append(lab)
    # Examples whose every label is masked (prompt fills max_length) teach
    # nothing and give NaN loss in a batch of their own: drop them.
    keep = [i for i, lab in enumerate(labels) if any(t != IGNORE_INDEX for t in lab)]
    return {
        "input_ids": [input_ids[i] for i in keep],
        "labels": [labels[i] for i in keep],
        "truncated": truncated,
        "dropped_all_masked": len(labels) - len(keep),
    }
