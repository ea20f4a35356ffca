"""The tokenizer and encode phases on real text (Python's documentation topics), through plain functions."""

from __future__ import annotations

import hashlib
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.storage.artifacts import Artifact, verify
from tasks.tokenizer import (
    RoundTripError,
    TokenizerConfig,
    TooFewDocumentsError,
    VocabTooLargeError,
    read_split,
    run_encode,
    run_tokenizer,
    split_score,
    token_schema,
    validation_ids,
)
from tinyllama_model.tokenizer import Tokenizer

SMALL = TokenizerConfig(vocab_size=400, val_fraction=0.1, batch_docs=16)


def doc_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_clean(directory: Path, texts: list[str], ids: list[str] | None = None) -> Artifact:
    """A clean-corpus artifact as the preprocess phase hands it over (doc_id + text suffice here)."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = ids or [doc_id(t) for t in texts]
    pq.write_table(pa.table({"doc_id": ids, "text": texts}), directory / "documents.parquet")
    return Artifact(
        phase="preprocess",
        fingerprint=hashlib.sha256("".join(ids).encode()).hexdigest()[:20],
        path=str(directory),
    )


def doc_texts(n: int = 40) -> list[str]:
    return [topics[k] for k in sorted(topics)[:n]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Artifact, Artifact, Artifact, Path]:
    """(clean, tokenizer, encode, root) built once for the module."""
    root = tmp_path_factory.mktemp("root")
    clean = write_clean(root / "clean", doc_texts())
    tok = run_tokenizer(SMALL, clean, root)
    enc = run_encode(SMALL, clean, tok, root)
    return clean, tok, enc, root


# -- split ----------------------------------------------------------------------------------------------


def test_the_split_is_a_stable_function_of_each_doc_id():
    ids = [f"doc-{i}" for i in range(2000)]
    val = validation_ids(ids, 0.05)
    assert 60 <= len(val) <= 140  # ~5%
    assert val == {d for d in ids if split_score(d) < 0.05}
    grown = validation_ids([*ids, *(f"new-{i}" for i in range(500))], 0.05)
    assert grown & set(ids) == val  # adding documents never moves an old one across


def test_validation_is_never_empty_with_two_documents():
    for pair in (["a", "b"], ["x", "y"], ["only-train-1", "only-train-2"]):
        val = validation_ids(pair, 0.05)
        assert len(val) == 1
    assert len(validation_ids(["a", "b"], 0.99)) == 1  # and training is never empty either


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_documents_is_a_clear_error(tmp_path, n):
    clean = write_clean(tmp_path / "clean", doc_texts(n))
    with pytest.raises(TooFewDocumentsError, match="at least 2 are needed"):
        run_tokenizer(SMALL, clean, tmp_path)
    assert not (tmp_path / "tokenizer").exists() or not any((tmp_path / "tokenizer").glob("[!.]*"))


# -- tokenizer ------------------------------------------------------------------------------------------


def test_tokenizer_phase_writes_the_model_and_its_report(corpus):
    clean, tok_art, _, _ = corpus
    verify(tok_art)
    tok = Tokenizer(tok_art.file("tokenizer.model"))
    s = tok_art.stats
    assert tok.vocab_size == s["vocab_size"] == 400
    assert s["documents"] == 40 and s["roundtrip_ok"] is True
    assert 0.5 < s["vocab_used"] <= 1.0
    assert 1.2 < s["bytes_per_token"] < 6
    assert s["bytes"] == sum(len(t.encode()) for t in doc_texts())
    assert s["held_out_documents"] == len(
        validation_ids(pq.read_table(clean.file("documents.parquet"))["doc_id"].to_pylist(), 0.1)
    )


def test_the_tokenizer_is_trained_on_the_training_side_only(tmp_path):
    """A word that occurs only in held-out documents must not become a vocabulary piece."""
    texts = doc_texts(30)
    ids = [doc_id(t) for t in texts]
    val = validation_ids(ids, 0.2)
    marker = "Zyxqwvut"
    texts = [t + f" {marker}" * 300 if i in val else t for i, t in zip(ids, texts, strict=True)]
    art = run_tokenizer(
        TokenizerConfig(vocab_size=400, val_fraction=0.2), write_clean(tmp_path / "c", texts, ids), tmp_path
    )
    pieces = Tokenizer(art.file("tokenizer.model")).pieces(f" {marker}")
    assert len(pieces) > 2  # spelled out, not learned as a piece


def test_a_vocabulary_too_large_names_the_field_and_a_value_that_works(tmp_path):
    clean = write_clean(tmp_path / "clean", doc_texts(5))
    with pytest.raises(
        VocabTooLargeError, match=r"tokenizer\.vocab_size=50000 .* set tokenizer\.vocab_size to (\d+)"
    ) as e:
        run_tokenizer(TokenizerConfig(vocab_size=50_000), clean, tmp_path)
    assert not [
        p for p in (tmp_path / "tokenizer").iterdir() if not p.name.startswith(".")
    ]  # nothing published
    works = int(e.value.args[0].split("set tokenizer.vocab_size to ")[1].split()[0])
    art = run_tokenizer(TokenizerConfig(vocab_size=works), clean, tmp_path)
    assert art.stats["vocab_size"] == works


def test_a_failed_round_trip_fails_loudly(tmp_path, monkeypatch):
    texts = doc_texts(6)
    clean = write_clean(tmp_path / "clean", texts)
    original = Tokenizer.decode

    def lossy(self, ids):  # a tokenizer that drops characters of one document
        text = original(self, ids)
        return text.replace("e", "") if text == self.normalize(texts[2]) else text

    monkeypatch.setattr(Tokenizer, "decode", lossy)
    with pytest.raises(RoundTripError, match=r"1 of 6 documents"):
        run_tokenizer(SMALL, clean, tmp_path)


# -- encode ---------------------------------------------------------------------------------------------


def test_encode_writes_both_splits_with_byte_counts(corpus):
    clean, tok_art, enc, _ = corpus
    verify(enc)
    tok = Tokenizer(tok_art.file("tokenizer.model"))
    texts = dict(
        zip(
            *(pq.read_table(clean.file("documents.parquet"))[c].to_pylist() for c in ("doc_id", "text")),
            strict=True,
        )
    )
    expected_val = validation_ids(list(texts), SMALL.val_fraction)
    seen = {}
    for split in ("train", "val"):
        table = pq.read_table(enc.file(f"{split}.parquet"))
        assert table.schema == token_schema(400)
        assert table.schema.field("tokens").type == pa.list_(pa.uint16())
        for doc_id, toks, n_bytes in read_split(enc, split):
            assert (doc_id in expected_val) == (split == "val")
            assert n_bytes == len(texts[doc_id].encode())
            assert tok.decode(toks) == tok.normalize(texts[doc_id])
            seen[doc_id] = len(toks)
        assert enc.stats[f"{split}_docs"] == table.num_rows
    assert set(seen) == set(texts)
    assert enc.stats["train_tokens"] + enc.stats["val_tokens"] == sum(seen.values())
    assert enc.stats["train_bytes"] + enc.stats["val_bytes"] == sum(len(t.encode()) for t in texts.values())
    assert enc.stats["val_docs"] >= 1


def test_large_vocabularies_use_uint32():
    assert token_schema(70_000).field("tokens").type == pa.list_(pa.uint32())


def test_phases_are_cached_on_their_inputs(corpus):
    clean, tok_art, enc, root = corpus
    again = run_encode(SMALL, clean, tok_art, root)
    assert again == enc
    other = run_encode(SMALL.model_copy(update={"val_fraction": 0.3}), clean, tok_art, root)
    assert other.path != enc.path and other.stats["val_docs"] > enc.stats["val_docs"]


def test_encoded_tokens_are_the_tokenizers_ids(corpus):
    _, tok_art, enc, _ = corpus
    tok = Tokenizer(tok_art.file("tokenizer.model"))
    _doc_id, toks, _ = next(read_split(enc, "train"))
    assert toks.dtype == np.uint16 and int(toks.max()) < tok.vocab_size


def test_rare_characters_fall_back_to_bytes_and_are_counted(tmp_path):
    texts = [*doc_texts(8), "A llama emoji 🦙 and a rare glyph ꙮ."]
    art = run_tokenizer(SMALL, write_clean(tmp_path / "clean", texts), tmp_path)
    tok = Tokenizer(art.file("tokenizer.model"))
    pieces = tok.pieces("🦙")
    assert all(p.startswith("<0x") for p in pieces) and len(pieces) == 4  # four UTF-8 bytes
    assert 0 < art.stats["byte_fallback_share"] < 0.01
