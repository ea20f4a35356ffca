"""`tinyllama eval --data FILE`: what is not text is refused naming the file, the line and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.evaluate import read_texts

GOOD = json.dumps({"content": "A good first row."})


def test_jsonl_rows_give_their_text_and_skip_blank_lines_and_null(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(f'{GOOD}\n\n{{"content": null}}\n{{"content": "Café."}}\n', encoding="utf-8")
    assert read_texts(data) == ["A good first row.", "Café."]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("[1, 2]", r"rows\.jsonl:2 is an array, not a JSON object; each line holds one JSON object like"),
        ('"just text"', r"rows\.jsonl:2 is a string, not a JSON object"),
        ("7", r"rows\.jsonl:2 is a number, not a JSON object"),
        ('{"content": 5}', r"rows\.jsonl:2: 'content' is a number, not a string; .*--text-field"),
        ('{"content": ["a", "b"]}', r"rows\.jsonl:2: 'content' is an array, not a string"),
        ("{not json", r"rows\.jsonl:2 is not valid JSON \(.*\); each line holds one JSON object like"),
    ],
)
def test_a_jsonl_line_that_is_not_an_object_of_text(tmp_path: Path, line: str, reason: str) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(f"{GOOD}\n{line}\n")
    with pytest.raises(ValueError, match=reason):
        read_texts(data)


def test_a_missing_field_names_the_fields_there(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"body": "text"}\n')
    with pytest.raises(
        KeyError, match=r"rows\.jsonl:1 has no field 'content' \(fields: \['body'\]\).*--text-field"
    ):
        read_texts(data)


@pytest.mark.parametrize("name", ["latin1.txt", "latin1.jsonl"])
def test_bytes_that_are_not_utf8(tmp_path: Path, name: str) -> None:
    data = tmp_path / name
    text = json.dumps({"content": "Café"}, ensure_ascii=False) if name.endswith(".jsonl") else "Café"
    data.write_bytes(text.encode("latin-1"))
    where = f"{name}:1" if name.endswith(".jsonl") else name
    with pytest.raises(ValueError, match=rf"{where} is not valid UTF-8 \(byte \d+ is b'\\xe9'\); convert"):
        read_texts(data)


def test_a_parquet_column_that_is_not_text(tmp_path: Path) -> None:
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"content": [1, 2], "text": ["a", "b"]}), data)
    with pytest.raises(ValueError, match=r"column 'content' holds int64, not text"):
        read_texts(data)
    assert read_texts(data, text_field="text") == ["a", "b"]
