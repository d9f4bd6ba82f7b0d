"""Dataset loading, format detection, validation and preview.

Everything here is a pure function over files the user uploaded, so it can run
in the web request that handles the upload and give feedback in milliseconds.
That is why nothing heavy (torch, transformers, datasets, gradio) is imported:
only the stdlib, plus pyarrow inside the Parquet branch where it is needed.

Every problem the user can fix raises :class:`DataError`, whose message says
what is wrong *and* what to do about it; the UI shows it verbatim.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt")

_CSV_DELIMITERS = ",;\t|"
_SNIFF_BYTES = 64 * 1024
_TEXT_SHARE = 0.9  # share of non-null values that must be strings for a "text" column

# Ordered by how strongly the name implies the role: the first match wins.
_PROMPT_NAMES = ("prompt", "question", "instruction", "input", "query", "source", "context", "user")
_COMPLETION_NAMES = ("completion", "answer", "response", "output", "target", "reply", "assistant", "chosen")
_TEXT_NAMES = ("text", "content", "body", "document", "sentence", "sample", "review")
_EMPTY = "The file is empty. Upload a file that contains your examples."


class DataError(ValueError):
    """A problem with the user's data; the message is shown to the user as is."""


@dataclass
class Table:
    rows: list[dict[str, Any]]
    columns: list[str]
    file_format: str  # "csv" | "tsv" | "json" | "jsonl" | "parquet" | "txt"
    warnings: list[str] = field(default_factory=list)


@dataclass
class ColumnGuess:
    format: str  # "text" | "prompt_completion" | "alpaca" | "chat" | "sharegpt"
    # For chat/sharegpt this names the column holding the conversations.
    text_column: str | None
    prompt_column: str | None
    completion_column: str | None


@dataclass
class Examples:
    prompts: list[str] | None  # None for plain text
    completions: list[str] | None
    texts: list[str] | None
    dropped: int  # rows dropped because a needed cell was empty/None/non-string
    # Chat datasets: each example is a list of {"role", "content"} turns.
    messages: list[list[dict[str, str]]] | None = None

    def __len__(self) -> int:
        for part in (self.texts, self.prompts, self.messages):
            if part is not None:
                return len(part)
        return 0


def load_table(path: Path, filename: str | None = None) -> Table:
    """Read an upload into rows of dicts. ``filename`` is the user's original name: uploads
    are stored under temporary names, so only the original's extension tells the format."""
    path = Path(path)
    name = filename or path.name
    ext = Path(name).suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        accepted = ", ".join(SUPPORTED_EXTENSIONS)
        raise DataError(f"'{name}' has an unsupported file type ({ext or 'no extension'}). Upload one of: {accepted}.")
    fmt = ext[1:]
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"Could not read the uploaded file ({exc.strerror or exc}). Try uploading it again.") from exc

    warnings: list[str] = []
    text = "" if fmt == "parquet" else _decode(raw, warnings)
    if not raw or (fmt != "parquet" and not text.strip()):
        raise DataError(_EMPTY)
    if fmt == "parquet":
        rows = _read_parquet(path)
    elif fmt in ("csv", "tsv"):
        rows = _read_delimited(text, fmt, warnings)
    elif fmt == "json":
        rows, fmt = _read_json(text, warnings)
    elif fmt == "jsonl":
        rows = _read_jsonl(text)
    else:  # txt: one example per non-blank line
        rows = [{"text": line} for line in _lines(text) if line.strip()]
    if not rows:
        raise DataError(f"The {fmt.upper()} file contains no examples. Add at least one record and upload it again.")
    return Table(rows=rows, columns=_union_keys(rows), file_format=fmt, warnings=warnings)


def _decode(raw: bytes, warnings: list[str]) -> str:
    """Decode text the way spreadsheet exports need: UTF-8 first, then Windows encodings."""
    # UTF-16 (Excel's "Unicode text") is the one text encoding full of NUL bytes; its BOM identifies it.
    utf16 = raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    if b"\x00" in raw and not utf16:
        raise _binary_error("it contains NUL bytes")
    # utf-8-sig strips the BOM Excel puts in front of CSVs. cp1252 is what Excel on
    # Windows writes; it leaves 5 bytes undefined, so latin-1 (decodes anything) is last.
    for encoding in ("utf-16", "utf-8-sig", "cp1252", "latin-1")[0 if utf16 else 1 :]:
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if encoding != "utf-8-sig":
        warnings.append(f"file was not UTF-8; decoded as {encoding}. If characters look wrong, save it as UTF-8.")
    # Real text almost never holds control characters; binary data is full of them.
    sample = text[:_SNIFF_BYTES]
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\t\n\r\f\v")
    if sample and controls / len(sample) > 0.01:
        raise _binary_error("it contains many control characters")
    return text


def _binary_error(why: str) -> DataError:
    return DataError(f"The file looks binary, not text ({why}). Upload plain text: export spreadsheets "
                     "(.xlsx) as CSV, save UTF-16 text as UTF-8, and name Parquet files .parquet.")


def _lines(text: str) -> list[str]:
    # Not str.splitlines(): that also splits on \x0c, \x1c, \u2028 ..., which may sit inside a record.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _sniff_delimiter(text: str) -> str:
    sample = text[:_SNIFF_BYTES]
    header = sample.split("\n", 1)[0]
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=_CSV_DELIMITERS).delimiter
    except csv.Error:
        delimiter = ""
    # The sniffer can pick a comma that only occurs inside the text of a
    # one-column file; a real delimiter must also separate the header names.
    if delimiter not in header or not delimiter:
        counts = {d: header.count(d) for d in _CSV_DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        # One header name: a single column, so split on NUL (rejected as binary
        # earlier, so it never occurs) and unquoted commas stay inside the text.
        delimiter = best if counts[best] else "\x00"
    return delimiter


def _read_delimited(text: str, fmt: str, warnings: list[str]) -> list[dict[str, Any]]:
    delimiter = "\t" if fmt == "tsv" else _sniff_delimiter(text)
    label = fmt.upper()
    # The default 128 KiB cell limit is smaller than some long training documents.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    # newline="" lets the csv module see raw line endings, so CRLF files and
    # quoted cells containing newlines both parse correctly.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[dict[str, Any]] = []
    try:
        # The caller rejected blank files, so a non-empty first record (the header) exists.
        names = _column_names(next(record for record in reader if record), warnings)
        for record in reader:
            # Blank lines and all-empty rows (",,,") are padding from spreadsheet exports.
            if not any(record):
                continue
            if len(record) > len(names):
                if any(record[len(names):]):
                    shown = "tab" if delimiter == "\t" else repr(delimiter)
                    raise DataError(f"Line {reader.line_num} of the {label} file has {len(record)} fields but "
                                    f"the header has {len(names)} columns. Put double quotes around values "
                                    f"containing the {shown} delimiter, or add the missing names to the header.")
                record = record[: len(names)]  # trailing empty cells: harmless, drop them
            values: list[Any] = list(record) + [None] * (len(names) - len(record))
            rows.append(dict(zip(names, values)))
    except csv.Error as exc:
        raise DataError(f"The {label} file could not be parsed near line {reader.line_num} ({exc}). "
                        "Check that line for unbalanced double quotes.") from exc
    if not rows:
        raise DataError(f"The {label} file has a header but no data rows. Add examples below the header line.")
    return rows


def _column_names(header: list[str], warnings: list[str]) -> list[str]:
    names: list[str] = []
    for i, raw_name in enumerate(header, start=1):
        # Header names are identifiers, so surrounding spaces ("a, b") are noise.
        name = base = raw_name.strip() or f"column_{i}"
        k = 1
        while name in names:  # rows are dicts, so a repeated name would overwrite a column
            k += 1
            name = f"{base}_{k}"
        if name != base:
            warnings.append(f"duplicate column name '{base}' renamed to '{name}'")
        names.append(name)
    return names


def _read_json(text: str, warnings: list[str]) -> tuple[list[dict[str, Any]], str]:
    """Parse a .json file; returns the rows and the format actually found."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # A complete value followed by more values: JSON Lines under a .json name.
            warnings.append("file named .json holds JSON Lines (one object per line); read it as JSONL")
            return _read_jsonl(text), "jsonl"
        raise DataError(f"The JSON file is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
                        "Fix the file, or re-export it from the tool that produced it.") from exc
    shape_hint = 'Expected an array of records like [{"text": "..."}, {"text": "..."}].'
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) != 1:
            raise DataError(f"The JSON file holds an object with keys {_quote_list(list(data))[:300]}, not a list "
                            f"of records. {shape_hint} A wrapper like {{\"data\": [...]}} holding one such list works.")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"The JSON file holds {_kind(data)} at the top level. {shape_hint}")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(f"Element {i} (counting from 0) of the JSON array is {_kind(item)}, not an object. "
                            f"Every element must be a record. {shape_hint}")
    return data, "json"


def _read_jsonl(text: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"Line {number} of the JSONL file is not valid JSON ({exc.msg}: column {exc.colno}). "
                            "Fix that line or remove it.") from exc
        if not isinstance(item, dict):
            raise DataError(f"Line {number} of the JSONL file is {_kind(item)}, not an object. "
                            'Each line must be one record like {"text": "..."}.')
        rows.append(item)
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq  # lazy: only Parquet uploads pay for importing pyarrow

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for corrupt input
        raise DataError(f"The file is not a valid Parquet file ({str(exc)[:200]}). "
                        "Re-export it as Parquet, or upload it as CSV or JSONL instead.") from exc


def _union_keys(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def _kind(value: Any) -> str:
    # bool must be checked before int, its base class.
    kinds = ((type(None), "null"), (bool, "true/false"), ((int, float), "a number"), (str, "a string"))
    found = next((name for types, name in kinds if isinstance(value, types)), None)
    return found or ("an array" if isinstance(value, list) else "an object")


def _quote_list(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)


def text_columns(table: Table) -> list[str]:
    """Columns whose non-null values are mostly strings and not all blank."""
    result = []
    for column in table.columns:
        values = [row.get(column) for row in table.rows]
        present = [v for v in values if v is not None]
        strings = [v for v in present if isinstance(v, str)]
        if present and len(strings) / len(present) >= _TEXT_SHARE and any(s.strip() for s in strings):
            result.append(column)
    return result


def _numbers_only(table: Table, column: str) -> bool:
    for row in table.rows:
        value = row.get(column)
        if isinstance(value, str) and value.strip():
            try:
                float(value)
            except ValueError:
                return False
    return True


def _conversation_style(table: Table, column: str) -> str | None:
    """'chat' for [{"role", "content"}...], 'sharegpt' for [{"from", "value"}...], else None."""
    values = [row.get(column) for row in table.rows if row.get(column) is not None][:20]
    if not values or not all(isinstance(v, list) and v and all(isinstance(m, dict) for m in v) for v in values):
        return None
    turns = [m for v in values for m in v]
    if all("role" in m and "content" in m for m in turns):
        return "chat"
    if all("from" in m and "value" in m for m in turns):
        return "sharegpt"
    return None


def guess_columns(table: Table) -> ColumnGuess:
    """Guess the dataset layout from column names (and, for chats, their contents)."""
    by_name: dict[str, str] = {}
    for column in table.columns:
        by_name.setdefault(column.strip().lower(), column)

    for name in ("messages", "conversations"):
        if name in by_name:
            style = _conversation_style(table, by_name[name])
            if style:
                return ColumnGuess(style, by_name[name], None, None)

    texts = set(text_columns(table))
    usable = {lower: col for lower, col in by_name.items() if col in texts}
    if "instruction" in usable and "output" in usable:
        return ColumnGuess("alpaca", None, usable["instruction"], usable["output"])

    prompt = next((usable[n] for n in _PROMPT_NAMES if n in usable), None)
    completion = next((usable[n] for n in _COMPLETION_NAMES if n in usable and usable[n] != prompt), None)
    if prompt and completion:
        return ColumnGuess("prompt_completion", None, prompt, completion)

    text = next((usable[n] for n in _TEXT_NAMES if n in usable), None)
    # Without a telling name, a column of numbers only (CSV cells are always
    # strings) is an id or a score, not text to train on.
    wordy = [c for c in table.columns if c in texts and not _numbers_only(table, c)]
    if text is None and wordy:
        # No telling name: the column with the longest values is most likely the content.
        text = max(wordy, key=lambda c: _average_length(table, c))
    if text is None:
        raise DataError(f"No column holds text. Columns found: {_quote_list(table.columns)}. "
                        "Add a column named 'text', or 'prompt' and 'completion'.")
    return ColumnGuess("text", text, None, None)


def _average_length(table: Table, column: str) -> float:
    lengths = [len(v) for row in table.rows if isinstance(v := row.get(column), str)]
    return sum(lengths) / len(lengths) if lengths else 0.0


def preview_rows(table: Table, n: int = 5, max_chars: int = 200) -> list[dict[str, str]]:
    """First ``n`` rows as plain strings, long values cut to ``max_chars`` with an ellipsis."""
    limit = max(max_chars, 1)
    preview = []
    for row in table.rows[: max(n, 0)]:
        rendered = {}
        for column in table.columns:
            value = _render(row.get(column))
            rendered[column] = value if len(value) <= limit else value[: limit - 1] + "…"
        preview.append(rendered)
    return preview


def _render(value: Any) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


def build_examples(
    table: Table,
    text_column: str | None = None,
    prompt_column: str | None = None,
    completion_column: str | None = None,
    min_rows: int = 2,
) -> Examples:
    """Turn the table into training strings, dropping rows with unusable cells."""
    if text_column and (prompt_column or completion_column):
        raise DataError("Choose either a text column or a prompt/completion column pair, not both. Clear one.")
    if bool(prompt_column) != bool(completion_column):
        raise DataError("Prompt/completion training needs both a prompt column and a completion column. Pick both.")
    if not text_column and not prompt_column:
        guess = guess_columns(table)
        if guess.format in ("chat", "sharegpt"):
            return _chat_examples(table, guess.text_column or "", min_rows)
        text_column, prompt_column, completion_column = guess.text_column, guess.prompt_column, guess.completion_column

    needed = [_resolve(table, c) for c in (text_column, prompt_column, completion_column) if c]
    for column in needed:
        if _conversation_style(table, column):
            if text_column:
                return _chat_examples(table, column, min_rows)
            raise _chat_error(column)

    # Alpaca: the optional "input" column holds context that belongs in the prompt.
    input_column = None
    if prompt_column and needed[0].strip().lower() == "instruction":
        input_column = next((c for c in table.columns if c.strip().lower() == "input" and c != needed[1]), None)

    kept: list[list[str]] = []
    dropped = 0
    for row in table.rows:
        cells = [cell for c in needed if (cell := _cell(row.get(c))) is not None]
        if len(cells) < len(needed):
            dropped += 1
            continue
        if input_column and (extra := _cell(row.get(input_column))):
            cells[0] = f"{cells[0]}\n\n{extra}"
        kept.append(cells)

    if len(kept) < min_rows:
        raise DataError(f"Only {len(kept)} usable rows ({dropped} dropped: a needed cell was empty or not text); "
                        f"at least {min_rows} needed. Fill in empty cells, add examples, or pick other columns.")
    if text_column:
        return Examples(prompts=None, completions=None, texts=[c[0] for c in kept], dropped=dropped)
    return Examples(prompts=[c[0] for c in kept], completions=[c[1] for c in kept], texts=None, dropped=dropped)


def _resolve(table: Table, column: str) -> str:
    if column in table.columns:
        return column
    # Tolerate case/space differences from hand-typed column names, but only when unambiguous.
    matches = [c for c in table.columns if c.strip().lower() == column.strip().lower()]
    if len(matches) == 1:
        return matches[0]
    raise DataError(f"There is no column named {column!r}. Available columns: {_quote_list(table.columns)}.")


def _cell(value: Any) -> str | None:
    """The cell as a training string, or None when it cannot be used."""
    if isinstance(value, bool):  # bool is an int subclass, but True is not text
        return None
    if isinstance(value, float) and not math.isfinite(value):  # NaN is how pandas/Parquet mark blanks
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def _chat_error(column: str) -> DataError:
    return DataError(
        f"Column {column!r} holds chat conversations, which cannot be a prompt or completion column. "
        f"Choose it as the text column (or leave the columns empty) to train on the conversations."
    )


def _chat_examples(table: Table, column: str, min_rows: int) -> Examples:
    from finetune.chat import conversations_from_rows

    conversations, dropped = conversations_from_rows(table.rows, column)
    if len(conversations) < min_rows:
        raise DataError(f"Only {len(conversations)} usable conversations ({dropped} dropped: no assistant reply, "
                        f"or a turn without text); at least {min_rows} needed. Add conversations with assistant turns.")
    return Examples(prompts=None, completions=None, texts=None, dropped=dropped, messages=conversations)
