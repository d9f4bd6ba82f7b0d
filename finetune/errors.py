"""Turn validation errors into one readable sentence that names each field."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def describe_errors(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors:
        raw_loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            # FastAPI puts the character position in loc: it is not a field name.
            pos = raw_loc[1] if len(raw_loc) > 1 else "?"
            parts.append(f"body: is not valid JSON (error near character {pos}). Send a JSON object such as {{\"dataset_id\": \"demo\"}}")
            continue
        loc = [str(p) for p in raw_loc if p not in ("body", "query", "path")]
        field = ".".join(loc) or ("body" if raw_loc[:1] == ("body",) else "request")
        msg = err.get("msg", "invalid value")
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "missing" and field == "body":
            msg = "is required: send a JSON object such as {\"dataset_id\": \"demo\"}"
        elif err.get("type") == "extra_forbidden":
            msg = "is not a known setting (check the spelling; see /docs for the fields)"
        elif err.get("type") == "missing":
            msg = "is required"
        elif "input" in err and err.get("type") not in ("json_invalid",) and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r})"
        parts.append(f"{field}: {msg}")
    return "; ".join(parts) or "The request is not valid."


def describe_validation_error(exc: ValidationError) -> str:
    return describe_errors(exc.errors(include_url=False))
