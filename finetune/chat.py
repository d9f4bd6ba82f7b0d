"""Chat-shaped rows: OpenAI ``messages`` and ShareGPT ``conversations`` (pure).

Both become a list of ``{"role", "content"}`` turns with roles system, user
and assistant, the shape chat templates expect.
"""

from __future__ import annotations

from typing import Any

from finetune.data import DataError

ROLES = ("system", "user", "assistant")
# ShareGPT and other exports name the roles in many ways.
_ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant",
}
_ACCEPTED = "system, user, assistant (ShareGPT: system, human, gpt)"


def normalise_conversation(value: Any, row_number: int) -> list[dict[str, str]] | None:
    """Return the turns, or None when the row holds nothing trainable.

    Raises DataError for a structural problem the user must fix (unknown role,
    turn that is not an object), naming the row.
    """
    if value is None:
        return None
    if not isinstance(value, list):
        raise DataError(f"Row {row_number}: the conversation must be a list of turns like "
                        '[{"role": "user", "content": "..."}], not ' + type(value).__name__ + ".")
    turns: list[dict[str, str]] = []
    for i, turn in enumerate(value, 1):
        if not isinstance(turn, dict):
            raise DataError(f"Row {row_number}, turn {i}: each turn must be an object with a role and content.")
        raw_role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        role = _ROLE_ALIASES.get(str(raw_role).strip().lower()) if raw_role is not None else None
        if role is None:
            raise DataError(f"Row {row_number}, turn {i}: role {raw_role!r} is not recognised. "
                            f"Accepted roles: {_ACCEPTED}. Rename the role in your file.")
        if not isinstance(content, str):
            return None
        turns.append({"role": role, "content": content})
    if not any(t["role"] == "assistant" and t["content"].strip() for t in turns):
        return None  # nothing to learn from: counted as dropped
    return turns


def conversations_from_rows(rows: list[dict[str, Any]], column: str) -> tuple[list[list[dict[str, str]]], int]:
    """All usable conversations in a column, and how many rows were dropped."""
    out: list[list[dict[str, str]]] = []
    dropped = 0
    for n, row in enumerate(rows, 1):
        turns = normalise_conversation(row.get(column), n)
        if turns is None:
            dropped += 1
        else:
            out.append(turns)
    return out, dropped
