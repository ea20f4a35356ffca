"""The built-in offline corpus: Python's own documentation, present with no network."""

from __future__ import annotations

import json
import textwrap

from tasks.sources.builtin import NESTED_SHARE, builtin_documents, module_text, without_nested


def test_builtin_corpus_is_about_a_megabyte_of_distinct_documents():
    docs = builtin_documents()
    assert sum(len(d.text) for d in docs) > 900_000
    assert len({d.doc_id for d in docs}) == len(docs) > 100  # reference topics + module docs
    titles = {d.title for d in docs}
    assert 'The "assert" statement' in titles and "The json module" in titles
    assert {d.source for d in docs} == {"builtin"}
    assert all(d.text.strip() for d in docs)


def test_a_topic_that_is_a_section_of_a_longer_one_is_left_out():
    topics = {"whole": "A\nB\nC\nD\nE", "section": "B\nC\nD\nE\nZ", "apart": "X\nY", "twin": "X\nY"}
    assert without_nested(topics) == {"whole": "A\nB\nC\nD\nE", "twin": "X\nY"}  # one of two equals stays
    docs = [d for d in builtin_documents() if d.url.startswith("pydoc:")]
    lines = [{line.strip() for line in d.text.splitlines() if line.strip()} for d in docs]
    for i, own in enumerate(lines):  # no reference topic left is mostly inside another (the split saw both)
        assert all(len(own & other) < NESTED_SHARE * len(own) for j, other in enumerate(lines) if j != i)


def test_module_text_holds_docstrings_and_signatures():
    text = module_text(json)
    assert text.startswith("JSON (JavaScript Object Notation)")
    assert "dumps(obj, *, skipkeys=False" in text
    # JSONDecoder is re-exported from json.decoder: documented there, not repeated here.
    assert not any(p.startswith("JSONDecoder") for p in text.split("\n\n"))
    assert "TextWrapper.wrap(self, text)" in module_text(textwrap)  # methods of classes defined there


def test_builtin_corpus_does_not_depend_on_process_state():
    """logging.shutdown's default is the live handler list: adding a handler must not change the corpus."""
    import logging

    from tasks.sources.document import content_digest

    before = content_digest(builtin_documents())
    logging.getLogger("tinyllama-test").addHandler(logging.NullHandler())
    assert content_digest(builtin_documents()) == before


def test_module_text_ignores_functions_patched_in_by_other_libraries(monkeypatch):
    import inspect

    before = module_text(inspect)
    monkeypatch.setattr(inspect, "getfile", lambda obj: "patched")  # as a library imported here does
    assert module_text(inspect) == before
    assert "getfile(object)" in before
