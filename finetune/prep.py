"""Turn examples into the exact token ids and labels the model trains on (pure).

Every example is first rendered as *segments*: pieces of text each marked as
trained (carries loss) or not. Then each segment is tokenised on its own and
the ids are joined, so the prompt/answer boundary is exact whatever the
tokenizer would merge across it, and the preview shows precisely what the
Trainer gets.

- plain text: one trained segment, then eos.
- prompt/completion: ``prompt + "\\n"`` (masked) then ``completion`` + eos.
- chat: the tokenizer's chat template; assistant turns (with their end
  marker) are trained, everything else is masked. Models without a template
  get ``FALLBACK_CHAT_TEMPLATE`` (ChatML).

With ``completion_only=False`` every segment is trained.
"""

from __future__ import annotations

import statistics
from typing import Any

from finetune.data import Examples

IGNORE_INDEX = -100
PROMPT_SEPARATOR = "\n"

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Segments = list[tuple[str, bool]]


def format_prompt(prompt: str) -> str:
    """The exact text the model sees before its answer (also used to generate)."""
    return prompt + PROMPT_SEPARATOR


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a template-less tokenizer the ChatML fallback; True if it was added."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return True


def chat_segments(messages: list[dict[str, str]], tokenizer: Any) -> Segments:
    """Render a conversation with the chat template, marking assistant turns as trained.

    The span of assistant turn i is found by rendering the conversation up to
    turn i with the generation prompt, and up to and including turn i: the
    difference is the reply plus its end-of-turn marker. This holds for any
    template whose renderings of a prefix are prefixes of the whole.
    """
    def render(msgs: list[dict[str, str]], gen: bool = False) -> str:
        if not msgs:
            return ""
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    full = render(messages)
    segments: Segments = []
    pos = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render(messages[:i], gen=True)) if i else 0
        end = len(render(messages[: i + 1]))
        if not (pos <= start <= end <= len(full)):
            # Template does not render prefixes consistently: train on the whole text.
            return [(full, True)]
        if start > pos:
            segments.append((full[pos:start], False))
        segments.append((full[start:end], True))
        pos = end
    if pos < len(full):
        segments.append((full[pos:], False))
    return segments


def example_segments(examples: Examples, index: int, tokenizer: Any) -> tuple[Segments, bool]:
    """Segments of one example, and whether eos is appended (trained) after them."""
    if examples.messages is not None:
        return chat_segments(examples.messages[index], tokenizer), False
    if examples.texts is not None:
        return [(examples.texts[index], True)], True
    assert examples.prompts is not None and examples.completions is not None
    return [(format_prompt(examples.prompts[index]), False), (examples.completions[index], True)], True


def _encode(segments: Segments, add_eos: bool, tokenizer: Any, completion_only: bool) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in segments:
        if not text:
            continue
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        labels.extend(piece if (trained or not completion_only) else [IGNORE_INDEX] * len(piece))
    if add_eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return ids, labels


def tokenize_examples(
    examples: Examples, tokenizer: Any, max_length: int, completion_only: bool = True
) -> dict[str, Any]:
    """Return ``{"input_ids", "labels", "lengths", "truncated", "dropped_all_masked"}``."""
    if examples.messages is not None:
        ensure_chat_template(tokenizer)
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    lengths: list[int] = []
    truncated = 0
    for i in range(len(examples)):
        segments, add_eos = example_segments(examples, i, tokenizer)
        ids, lab = _encode(segments, add_eos, tokenizer, completion_only)
        lengths.append(len(ids))
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
        "lengths": lengths,
        "truncated": truncated,
        "dropped_all_masked": len(labels) - len(keep),
    }


def length_stats(lengths: list[int], max_length: int) -> dict[str, Any]:
    if not lengths:
        return {"min": 0, "median": 0, "max": 0, "over_max_seq_length": 0, "max_seq_length": max_length}
    return {
        "min": min(lengths),
        "median": statistics.median(lengths),
        "max": max(lengths),
        "over_max_seq_length": sum(1 for n in lengths if n > max_length),
        "max_seq_length": max_length,
    }


def preview(examples: Examples, tokenizer: Any, max_length: int, completion_only: bool = True, n: int = 3) -> dict[str, Any]:
    """The first examples exactly as trained, with token-length statistics.

    Each example is a list of ``{"text", "trained"}`` segments; text past
    ``max_length`` tokens is cut off as it will be in training.
    """
    if examples.messages is not None:
        ensure_chat_template(tokenizer)
    shown = []
    for i in range(min(n, len(examples))):
        segments, add_eos = example_segments(examples, i, tokenizer)
        if add_eos and tokenizer.eos_token:
            segments = [*segments, (tokenizer.eos_token, True)]
        out, budget = [], max_length
        for text, trained in segments:
            if budget <= 0 or not text:
                continue
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > budget:
                text = tokenizer.decode(ids[:budget])
            budget -= len(ids)
            out.append({"text": text, "trained": bool(trained or not completion_only)})
        shown.append(out)
    encoded = tokenize_examples(examples, tokenizer, max_length, completion_only)
    return {"examples": shown, "token_lengths": length_stats(encoded["lengths"], max_length)}


def subset(examples: Examples, indices: list[int]) -> Examples:
    def pick(part: list[Any] | None) -> list[Any] | None:
        return None if part is None else [part[i] for i in indices]

    return Examples(
        prompts=pick(examples.prompts), completions=pick(examples.completions), texts=pick(examples.texts),
        dropped=0, messages=pick(examples.messages),
    )


def split_examples(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """Deterministic train/eval split: the same seed always holds out the same rows."""
    import random

    n = len(examples)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = min(n - 1, max(1, round(n * fraction)))
    held = sorted(order[:n_eval])
    kept = sorted(order[n_eval:])
    return subset(examples, kept), subset(examples, held)
