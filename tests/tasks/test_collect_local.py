"""Local files: every supported format, and every way a file can be wrong."""

from __future__ import annotations

import json
import os
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.sources.errors import InputError
from tasks.sources.local import LocalConfig, LocalSource
from tests.factories import collect_all
from tinyllama_model.errors import ConfigError

TEXT = "Plain words about models – with dashes, “quotes” and naïve accents.\n\nA second paragraph."


def read_local(cfg: LocalConfig):
    return collect_all(LocalSource(cfg))


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_reads_every_format_from_folders_and_globs(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "first.txt").write_text(TEXT)
    (tmp_path / "notes" / "second.md").write_text("# Heading\n\nMarkdown body.")
    (tmp_path / "page.html").write_text(
        "<html><head><title>A page</title></head><body><nav>x</nav><p>Body.</p></body></html>"
    )
    write_jsonl(
        tmp_path / "rows.jsonl",
        [{"title": "Row one", "content": "Text one.", "topic": "ai"}, {"content": "Text two."}],
    )
    table = pa.table({"content": ["Parquet text.", None], "title": ["P1", "P2"]})
    pq.write_table(table, tmp_path / "table.parquet")

    cfg = LocalConfig(
        paths=[
            str(tmp_path / "notes"),
            str(tmp_path / "*.html"),
            str(tmp_path / "rows.jsonl"),
            str(tmp_path / "table.parquet"),
        ],
        text_field="content",
    )
    documents, summary = read_local(cfg)
    got = {d.title: d for d in documents}
    assert set(got) == {"first", "second", "A page", "Row one", "rows 2", "P1"}
    assert got["first"].text == TEXT  # nothing stripped: normalisation is preprocess's job
    assert got["A page"].text == "Body."
    assert got["Row one"].topic == "ai" and got["Row one"].url.endswith("rows.jsonl#L1")
    assert {d.source for d in documents} == {"local"}
    assert len({d.doc_id for d in documents}) == 6
    assert [f.title for f in summary.failures] == [f"{tmp_path / 'table.parquet'}#row=1"]


def test_bad_files_are_recorded_and_the_rest_is_kept(tmp_path):
    (tmp_path / "good.txt").write_text(TEXT)
    (tmp_path / "latin1.txt").write_bytes("Café crème".encode("latin-1"))
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "bomb.html").write_text("<html><body>" + "<div>" * 5000 + "x")
    (tmp_path / "fake.parquet").write_bytes(b"not parquet at all")
    write_jsonl(
        tmp_path / "mixed.jsonl", [{"text": "Fine row."}, "{broken json", {"body": "no text field"}, "[1, 2]"]
    )

    documents, summary = read_local(LocalConfig(paths=[str(tmp_path)]))
    assert sorted(d.title for d in documents) == ["good", "mixed 1"]
    errors = {f.title.replace(str(tmp_path) + "/", ""): f.error for f in summary.failures}
    assert "not UTF-8" in errors["latin1.txt"] and "iconv" in errors["latin1.txt"]
    assert "binary" in errors["binary.txt"]
    assert "nested more than" in errors["bomb.html"]
    assert "not a readable Parquet" in errors["fake.parquet"]
    assert "malformed JSON" in errors["mixed.jsonl:2"]
    assert "no string field 'text'" in errors["mixed.jsonl:3"]
    assert "expected a JSON object" in errors["mixed.jsonl:4"]


def test_text_field_missing_everywhere_names_the_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "dev.jsonl", [{"title": "A", "content": "x"}, {"title": "B", "content": "y"}]
    )
    with pytest.raises(InputError, match=r"'content', 'title'.*collect\.local\.text_field"):
        read_local(LocalConfig(paths=[str(path)]))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"no column 'text'.*\['body'\]"):
        read_local(LocalConfig(paths=[str(tmp_path / "t.parquet")]))


def test_a_path_matching_nothing_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="matches no file"):
        read_local(LocalConfig(paths=[str(tmp_path / "missing" / "*.txt")]))


def test_the_shared_dev_corpus_reads_with_its_content_field(shared_corpus):
    documents, summary = read_local(LocalConfig(paths=[str(shared_corpus)], text_field="content"))
    assert len(documents) == 333 and not summary.failures
    assert documents[0].title == "Artificial general intelligence"


# --- hostile input (issue 11) ----------------------------------------------------------------------


def test_jsonl_lines_split_on_newline_only(tmp_path):
    """U+2028, U+2029, U+0085 and a lone CR inside strings are text, not line breaks."""
    texts = ["one\u2028still one", "two\x85still two", "three\u2029and\rthree"]
    rows = [json.dumps({"text": t}, ensure_ascii=False) for t in texts] + ["{broken"]
    path = tmp_path / "odd.jsonl"
    path.write_bytes(("\n".join(rows) + "\r\n").encode())
    documents, summary = read_local(LocalConfig(paths=[str(path)]))
    assert [d.text for d in documents] == texts
    assert [d.url.rsplit("#", 1)[1] for d in documents] == ["L1", "L2", "L3"]
    assert [f.title for f in summary.failures] == [f"{path}:4"]


def test_parquet_is_limited_by_its_decoded_size(tmp_path):
    """20 MB of text in a file of ~1 KB: refused from its metadata, or while reading when the
    dictionary hides the size, without ever holding the decoded text."""
    big = "a" * 1_000_000
    pq.write_table(pa.table({"text": [big + str(i) for i in range(20)]}), plain := tmp_path / "plain.parquet",
                   compression="zstd", use_dictionary=False)  # fmt: skip
    pq.write_table(
        pa.table({"text": [big] * 20}), dictionary := tmp_path / "dict.parquet", compression="zstd"
    )
    pq.write_table(pa.table({"text": ["small"] * 3}), tmp_path / "small.parquet")
    assert plain.stat().st_size < 5_000 and dictionary.stat().st_size < 5_000

    tracemalloc.start()  # Python's heap, where the decoded rows would land as strings
    try:
        documents, summary = read_local(LocalConfig(paths=[str(tmp_path)], max_decoded_bytes=5_000_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [d.text for d in documents] == ["small"] * 3
    errors = {f.title.rsplit("/", 1)[1]: f.error for f in summary.failures}
    assert set(errors) == {"plain.parquet", "dict.parquet"}
    assert all("max_decoded_bytes=5000000" in e for e in errors.values())
    assert peak < 8_000_000  # the old code held all 20 MB as Python strings


def test_globs_do_not_follow_symlink_loops(tmp_path, monkeypatch):
    """Two links back up the tree make 2^40 paths for a glob that follows them; each folder is read once."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.txt").write_text("one")
    (tmp_path / "a" / "b" / "two.txt").write_text("two")
    (tmp_path / "a" / "b" / "up").symlink_to("..")
    (tmp_path / "a" / "b" / "top").symlink_to(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "three.txt").write_text("three")
    (tmp_path / "a" / "linked").symlink_to(tmp_path / "elsewhere")  # a link that is no loop is followed

    scans = {"n": 0}
    real_scandir = os.scandir

    def counting_scandir(*args):
        scans["n"] += 1
        if scans["n"] > 1000:
            raise AssertionError("more than 1000 folder reads for a tree of 4 folders: following a loop")
        return real_scandir(*args)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    documents, _ = read_local(LocalConfig(paths=[str(tmp_path / "a" / "**" / "*.txt")]))
    assert sorted(d.text for d in documents) == ["one", "three", "two"]
    documents, _ = read_local(LocalConfig(paths=[str(tmp_path / "a")]))
    assert sorted(d.text for d in documents) == ["one", "three", "two"]


def test_jsonl_is_read_line_by_line_and_a_bad_line_is_its_own_failure(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"text": "first"}\n{"text": "caf\xe9"}\n{"text": "third", "url": "https://x.org/3"}\n')
    documents, summary = read_local(LocalConfig(paths=[str(path)]))
    assert [(d.text, d.url.rsplit("#", 1)[-1]) for d in documents] == [
        ("first", "L1"),
        ("third", "https://x.org/3"),
    ]
    assert [(f.title, "not UTF-8" in f.error) for f in summary.failures] == [(f"{path}:2", True)]


def test_one_file_named_twice_through_a_link_is_read_once(tmp_path):
    (tmp_path / "a.txt").write_text("only once")
    (tmp_path / "same.txt").symlink_to(tmp_path / "a.txt")
    documents, summary = read_local(LocalConfig(paths=[str(tmp_path / "a.txt"), str(tmp_path / "same.txt")]))
    assert [d.text for d in documents] == ["only once"] and summary.files == 1
