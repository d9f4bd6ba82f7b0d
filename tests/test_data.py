"""Tests for finetune.data: real files with the quirks users actually upload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # lets the tests run without an installed package or conftest
    sys.path.insert(0, str(ROOT))

from finetune.data import (
    SUPPORTED_EXTENSIONS,
    DataError,
    Table,
    build_examples,
    guess_columns,
    load_table,
    preview_rows,
    text_columns,
)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_bytes(content.encode("utf-8"))
    else:
        path.write_bytes(content)
    return path


def table(rows: list[dict]) -> Table:
    return Table(rows=rows, columns=list(dict.fromkeys(k for r in rows for k in r)), file_format="json", warnings=[])


# ---------------------------------------------------------------- loading: CSV / TSV / TXT


def test_csv_bom_crlf_multiline_and_doubled_quotes(tmp_path):
    raw = b'\xef\xbb\xbfprompt,completion\r\n"Say ""hi""","line1\r\nline2"\r\nq2,a2\r\n'
    t = load_table(write(tmp_path, "data.csv", raw))
    assert t.file_format == "csv"
    assert t.columns == ["prompt", "completion"]  # BOM is not glued to the first name
    assert t.rows[0] == {"prompt": 'Say "hi"', "completion": "line1\r\nline2"}
    assert t.rows[1] == {"prompt": "q2", "completion": "a2"}
    assert t.warnings == []


def test_semicolon_csv_is_sniffed(tmp_path):
    t = load_table(write(tmp_path, "data.csv", "text;label\nhello, world;1\nbye;0\n"))
    assert t.columns == ["text", "label"]
    assert t.rows[0] == {"text": "hello, world", "label": "1"}


def test_single_column_csv_with_commas_in_text(tmp_path):
    t = load_table(write(tmp_path, "data.csv", 'text\n"a, b"\n"c, d"\n'))
    assert t.columns == ["text"]
    assert [r["text"] for r in t.rows] == ["a, b", "c, d"]


def test_single_column_csv_keeps_unquoted_commas(tmp_path):
    t = load_table(write(tmp_path, "data.csv", 'text\nhello, world\n"quoted; ""x"""\n'))
    assert t.columns == ["text"]
    assert [r["text"] for r in t.rows] == ["hello, world", 'quoted; "x"']


def test_uppercase_tsv_extension_from_original_filename(tmp_path):
    path = write(tmp_path, "upload_tmp123", "question\tanswer\nWhy?\tBecause, really.\n")
    t = load_table(path, filename="DATA.TSV")
    assert t.file_format == "tsv"
    assert t.rows == [{"question": "Why?", "answer": "Because, really."}]


def test_cp1252_csv_decodes_with_warning(tmp_path):
    t = load_table(write(tmp_path, "data.csv", "text\ncafé\nnaïve — ok\n".encode("cp1252")))
    assert [r["text"] for r in t.rows] == ["café", "naïve — ok"]
    assert any("cp1252" in w for w in t.warnings)


def test_csv_blank_and_duplicate_headers_and_short_rows(tmp_path):
    t = load_table(write(tmp_path, "data.csv", "a,,a\n1,2,3\n4\n\n,,\n5,,\n"))
    assert t.columns == ["a", "column_2", "a_2"]
    assert t.rows[1] == {"a": "4", "column_2": None, "a_2": None}  # missing fields -> None
    assert t.rows[2] == {"a": "5", "column_2": "", "a_2": ""}  # empty strings stay ""
    assert len(t.rows) == 3  # blank and all-empty lines skipped
    assert any("a_2" in w for w in t.warnings)


def test_csv_row_with_too_many_fields_names_the_line(tmp_path):
    with pytest.raises(DataError, match=r"Line 3 .*3 fields.*2 columns"):
        load_table(write(tmp_path, "data.csv", "a,b\n1,2\n3,4,5\n"))


def test_csv_trailing_empty_fields_are_tolerated(tmp_path):
    t = load_table(write(tmp_path, "data.csv", "a,b\n1,2,,\n"))
    assert t.rows == [{"a": "1", "b": "2"}]


def test_txt_skips_blank_lines(tmp_path):
    t = load_table(write(tmp_path, "notes.txt", "first line\r\n\r\n   \nsecond line\n"))
    assert t.columns == ["text"]
    assert [r["text"] for r in t.rows] == ["first line", "second line"]


# ---------------------------------------------------------------- loading: JSON / JSONL / Parquet


def test_json_array(tmp_path):
    t = load_table(write(tmp_path, "d.json", json.dumps([{"text": "a"}, {"text": "b", "x": 1}])))
    assert t.file_format == "json"
    assert t.columns == ["text", "x"]
    assert t.rows[1] == {"text": "b", "x": 1}


def test_json_wrapped_in_object(tmp_path):
    t = load_table(write(tmp_path, "d.json", json.dumps({"version": 2, "data": [{"text": "a"}, {"text": "b"}]})))
    assert [r["text"] for r in t.rows] == ["a", "b"]


def test_json_file_holding_json_lines(tmp_path):
    t = load_table(write(tmp_path, "d.json", '{"text": "a"}\n{"text": "b"}\n'))
    assert [r["text"] for r in t.rows] == ["a", "b"]
    assert t.warnings


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ('{"a": 1, "b": 2}', r"array of records"),
        ('"just a string"', r"a string at the top level"),
        ('[{"text": "a"}, 3]', r"Element 1 .*a number"),
        ('[{"text": "a"},', r"not valid JSON \(line 1"),
    ],
)
def test_json_bad_shapes(tmp_path, content, pattern):
    with pytest.raises(DataError, match=pattern):
        load_table(write(tmp_path, "d.json", content))


def test_jsonl_broken_line_3(tmp_path):
    content = '{"text": "a"}\n{"text": "b"}\n{"text": "c" "oops"}\n'
    with pytest.raises(DataError) as err:
        load_table(write(tmp_path, "d.jsonl", content))
    message = str(err.value)
    assert "line 3" in message.lower()
    assert "Fix that line or remove it" in message


def test_jsonl_non_object_line(tmp_path):
    with pytest.raises(DataError, match=r"Line 2 .*an array, not an object"):
        load_table(write(tmp_path, "d.jsonl", '{"text": "a"}\n[1, 2]\n'))


def test_jsonl_skips_blank_lines(tmp_path):
    t = load_table(write(tmp_path, "d.jsonl", '\n{"text": "a"}\r\n\r\n{"text": "b"}\n\n'))
    assert [r["text"] for r in t.rows] == ["a", "b"]


def test_parquet_roundtrip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2"], "completion": ["c1", None], "n": [1, 2]}), path)
    t = load_table(path)
    assert t.file_format == "parquet"
    assert t.columns == ["prompt", "completion", "n"]
    assert t.rows[1] == {"prompt": "p2", "completion": None, "n": 2}


def test_invalid_parquet(tmp_path):
    with pytest.raises(DataError, match="not a valid Parquet file"):
        load_table(write(tmp_path, "d.parquet", b"this is not parquet at all"))


# ---------------------------------------------------------------- loading: errors


@pytest.mark.parametrize("name", ["e.csv", "e.tsv", "e.json", "e.jsonl", "e.txt", "e.parquet"])
def test_empty_file(tmp_path, name):
    content = b"" if name.endswith("parquet") else b"\xef\xbb\xbf \r\n\n"
    with pytest.raises(DataError, match="The file is empty"):
        load_table(write(tmp_path, name, content))


def test_header_only_csv(tmp_path):
    with pytest.raises(DataError, match="has a header but no data rows"):
        load_table(write(tmp_path, "h.csv", "prompt,completion\r\n"))


def test_empty_json_array_has_no_rows(tmp_path):
    with pytest.raises(DataError, match="no examples"):
        load_table(write(tmp_path, "d.json", "[]"))


@pytest.mark.parametrize("name", ["junk.csv", "junk.txt", "junk.json"])
def test_binary_junk(tmp_path, name):
    junk = b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xb5U\x8f\x01" * 20
    with pytest.raises(DataError, match="looks binary, not text"):
        load_table(write(tmp_path, name, junk))


def test_utf16_text_is_decoded(tmp_path):
    t = load_table(write(tmp_path, "d.txt", "hello\nwörld\n".encode("utf-16")))
    assert [r["text"] for r in t.rows] == ["hello", "wörld"]
    assert any("utf-16" in w for w in t.warnings)


def test_unsupported_extension(tmp_path):
    with pytest.raises(DataError) as err:
        load_table(write(tmp_path, "setup.exe", b"MZ\x00\x00"))
    message = str(err.value)
    assert ".exe" in message
    assert all(ext in message for ext in SUPPORTED_EXTENSIONS)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="Try uploading it again"):
        load_table(tmp_path / "gone.csv")


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


def test_module_import_stays_light():
    code = (
        "import sys, finetune.data; "
        "heavy = {'torch', 'transformers', 'datasets', 'gradio', 'pyarrow', 'pandas'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# ---------------------------------------------------------------- detection


def test_text_columns_skips_conversations_numbers_and_blanks():
    t = table(
        [
            {"text": "a", "n": 1, "blank": "", "messages": [{"role": "user", "content": "hi"}]},
            {"text": "b", "n": 2, "blank": " ", "messages": [{"role": "user", "content": "yo"}]},
        ]
    )
    assert text_columns(t) == ["text"]


def test_guess_question_answer():
    g = guess_columns(table([{"id": "1", "Question": "why?", "Answer": "because"}]))
    assert (g.format, g.prompt_column, g.completion_column, g.text_column) == (
        "prompt_completion",
        "Question",
        "Answer",
        None,
    )


def test_guess_alpaca():
    g = guess_columns(table([{"instruction": "add", "input": "1+1", "output": "2"}]))
    assert (g.format, g.prompt_column, g.completion_column) == ("alpaca", "instruction", "output")


def test_guess_text():
    g = guess_columns(table([{"label": "pos", "text": "a fine film"}]))
    assert (g.format, g.text_column) == ("text", "text")


def test_guess_text_falls_back_to_longest_column():
    g = guess_columns(table([{"label": "pos", "blurb": "a much longer piece of writing"}]))
    assert (g.format, g.text_column) == ("text", "blurb")


def test_guess_chat():
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    g = guess_columns(table(rows))
    assert (g.format, g.text_column) == ("chat", "messages")


def test_guess_sharegpt():
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]
    assert guess_columns(table(rows)).format == "sharegpt"


def test_guess_no_text_column():
    with pytest.raises(DataError) as err:
        guess_columns(table([{"id": 1, "score": 0.5}]))
    message = str(err.value)
    assert "No column holds text" in message
    assert "'id', 'score'" in message
    assert "'text'" in message


# ---------------------------------------------------------------- preview


def test_preview_truncates_and_renders():
    t = table([{"text": "x" * 500, "meta": {"a": [1, 2]}, "none": None, "n": 3}] * 10)
    preview = preview_rows(t, n=3, max_chars=50)
    assert len(preview) == 3
    first = preview[0]
    assert len(first["text"]) == 50
    assert first["text"].endswith("…")
    assert first["meta"] == '{"a":[1,2]}'
    assert first["none"] == ""
    assert first["n"] == "3"


def test_preview_fills_missing_columns_and_keeps_short_values():
    t = table([{"a": "short"}, {"b": "other"}])
    assert preview_rows(t) == [{"a": "short", "b": ""}, {"a": "", "b": "other"}]


# ---------------------------------------------------------------- build_examples


def test_build_examples_text_drops_and_counts():
    t = table([{"text": "a"}, {"text": ""}, {"text": "   "}, {"text": None}, {"text": 42}, {"text": ["x"]}, {}])
    ex = build_examples(t, text_column="text")
    assert ex.texts == ["a", "42"]
    assert ex.prompts is None and ex.completions is None
    assert ex.dropped == 5


def test_build_examples_prompt_completion():
    t = table([{"q": "1", "a": "one"}, {"q": "2", "a": ""}, {"q": "3", "a": "three"}])
    ex = build_examples(t, prompt_column="q", completion_column="a")
    assert ex.prompts == ["1", "3"]
    assert ex.completions == ["one", "three"]
    assert ex.texts is None
    assert ex.dropped == 1


def test_build_examples_alpaca_merges_input():
    t = table(
        [
            {"instruction": "Add", "input": "1+1", "output": "2"},
            {"instruction": "Greet", "input": "", "output": "Hi"},
        ]
    )
    ex = build_examples(t)  # guessed as alpaca
    assert ex.prompts == ["Add\n\n1+1", "Greet"]
    assert ex.completions == ["2", "Hi"]


def test_build_examples_guesses_text(tmp_path):
    t = load_table(write(tmp_path, "d.txt", "one\ntwo\n"))
    assert build_examples(t).texts == ["one", "two"]


def test_build_examples_unknown_column_lists_columns():
    t = table([{"prompt": "p", "completion": "c"}] * 3)
    with pytest.raises(DataError) as err:
        build_examples(t, text_column="body")
    assert "'body'" in str(err.value)
    assert "'prompt', 'completion'" in str(err.value)


def test_build_examples_too_few_rows():
    t = table([{"text": "only one"}, {"text": ""}])
    with pytest.raises(DataError, match=r"Only 1 usable rows.*at least 2 needed"):
        build_examples(t, text_column="text")


def test_build_examples_chat_and_mixed_modes():
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    chat = table([{"messages": turns, "title": "t"}] * 3)
    assert build_examples(chat).messages == [turns] * 3
    assert build_examples(chat, text_column="messages").messages == [turns] * 3
    with pytest.raises(DataError, match="cannot be a prompt or completion column"):
        build_examples(chat, prompt_column="messages", completion_column="title")
    no_reply = table([{"messages": [{"role": "user", "content": "hi"}]}] * 3)
    with pytest.raises(DataError, match="no assistant reply"):
        build_examples(no_reply)
    t = table([{"a": "x", "b": "y"}] * 3)
    with pytest.raises(DataError, match="not both"):
        build_examples(t, text_column="a", prompt_column="a", completion_column="b")
    with pytest.raises(DataError, match="both a prompt column and a completion column"):
        build_examples(t, prompt_column="a")
