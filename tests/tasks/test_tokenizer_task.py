"""The tokenizer and encode phases on real text (Python's documentation topics), through plain functions."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.corpus_sample import DocSplit, choose_sample, sample_score
from tasks.storage.artifacts import Artifact, publish, verify
from tasks.storage.shards import ShardWriter
from tasks.token_shards import EncodeJob, encode_shard, loaded_tokenizer
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
)
from tinyllama_model.tokenizer import Tokenizer

SMALL = TokenizerConfig(vocab_size=400, val_fraction=0.1, batch_docs=16)
CLEAN_SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string())])


def doc_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_clean(
    root: Path, texts: list[str], ids: list[str] | None = None, rows_per_shard: int = 7
) -> Artifact:
    """A clean-corpus artifact as the preprocess phase publishes it: `documents` shards (doc_id + text)."""
    ids = ids or [doc_id(t) for t in texts]

    def build(out: Path) -> dict[str, int]:
        with ShardWriter(out, "documents", CLEAN_SCHEMA, max_bytes=1, row_group_rows=rows_per_shard) as w:
            w.write_rows({"doc_id": d, "text": t} for d, t in zip(ids, texts, strict=True))
        return {"rows": len(ids)}

    fingerprint = hashlib.sha256(("".join(ids) + f"/{rows_per_shard}").encode()).hexdigest()[:20]
    return publish(root, "preprocess", fingerprint, build)


def clean_texts(clean: Artifact) -> dict[str, str]:
    tables = [pq.read_table(p) for p in clean.shard_paths("documents")]
    pairs = (zip(t["doc_id"].to_pylist(), t["text"].to_pylist(), strict=True) for t in tables)
    return {d: text for rows in pairs for d, text in rows}


def validation_ids(ids: list[str], val_fraction: float) -> set[str]:
    split = DocSplit.scan(ids, val_fraction)
    return {d for d in ids if split.is_val(d)}


def doc_texts(n: int = 40) -> list[str]:
    return [topics[k] for k in sorted(topics)[:n]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Artifact, Artifact, Artifact, Path]:
    """(clean, tokenizer, encode, root) built once for the module."""
    root = tmp_path_factory.mktemp("root")
    clean = write_clean(root, doc_texts())
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


@pytest.mark.parametrize(
    ("n", "error", "message"),
    [(0, FileNotFoundError, "has no `documents` shards"), (1, TooFewDocumentsError, "at least 2 documents")],
)
def test_fewer_than_two_documents_is_a_clear_error(tmp_path, n, error, message):
    clean = write_clean(tmp_path, doc_texts(n))
    with pytest.raises(error, match=message):
        run_tokenizer(SMALL, clean, tmp_path)
    assert not (tmp_path / "tokenizer").exists() or not any((tmp_path / "tokenizer").glob("[!.]*"))


# -- tokenizer ------------------------------------------------------------------------------------------


def test_tokenizer_phase_writes_the_model_and_its_report(corpus):
    clean, tok_art, _, _ = corpus
    verify(tok_art)
    tok = Tokenizer(tok_art.file("tokenizer.model"))
    s = tok_art.stats
    assert tok.vocab_size == s["vocab_size"] == 400
    assert s["documents"] == s["corpus_documents"] == 40 and s["roundtrip_ok"] is True
    assert s["sampled_documents"] == 40 - s["held_out_documents"]  # the caps are far above this corpus
    assert 0.5 < s["vocab_used"] <= 1.0
    assert 1.2 < s["bytes_per_token"] < 6
    assert s["bytes"] == sum(len(t.encode()) for t in doc_texts())
    assert s["held_out_documents"] == len(validation_ids(list(clean_texts(clean)), 0.1))
    assert len(clean.shards["documents"]) == 6  # the corpus arrives in several shards


def test_the_tokenizer_is_trained_on_the_training_side_only(tmp_path):
    """A word that occurs only in held-out documents must not become a vocabulary piece."""
    texts = doc_texts(30)
    ids = [doc_id(t) for t in texts]
    val = validation_ids(ids, 0.2)
    marker = "Zyxqwvut"
    texts = [t + f" {marker}" * 300 if i in val else t for i, t in zip(ids, texts, strict=True)]
    art = run_tokenizer(
        TokenizerConfig(vocab_size=400, val_fraction=0.2), write_clean(tmp_path, texts, ids), tmp_path
    )
    pieces = Tokenizer(art.file("tokenizer.model")).pieces(f" {marker}")
    assert len(pieces) > 2  # spelled out, not learned as a piece


def test_a_rerun_publishes_the_same_tokenizer_bytes(corpus, tmp_path):
    clean, tok_art, _, _ = corpus
    again = run_tokenizer(SMALL, clean, tmp_path)  # another root: trained again, in another work folder
    assert again.path != tok_art.path
    assert again.files["tokenizer.model"] == tok_art.files["tokenizer.model"]


RETRAIN = """
import sys
from pathlib import Path
from tasks.storage.artifacts import Artifact
from tasks.tokenizer import TokenizerConfig, run_tokenizer
clean = Artifact.model_validate_json(sys.argv[1])
cfg = TokenizerConfig.model_validate_json(sys.argv[2])
print(run_tokenizer(cfg, clean, Path(sys.argv[3])).files["tokenizer.model"])
"""


def test_the_vocabulary_is_the_same_in_another_process_when_lines_are_capped(corpus, tmp_path):
    """SentencePiece draws its own lines past input_sentence_size from a per-process random seed; the
    sample stops below the cap, so two processes learn the same pieces."""
    clean = corpus[0]
    cfg = SMALL.model_copy(update={"input_sentence_size": 300})
    digests = [
        subprocess.run(
            [
                sys.executable,
                "-c",
                RETRAIN,
                clean.model_dump_json(),
                cfg.model_dump_json(),
                str(tmp_path / r),
            ],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        ).stdout.split()[-1]
        for r in ("a", "b")
    ]
    assert digests[0] == digests[1]


def test_a_vocabulary_too_large_names_the_field_and_a_value_that_works(tmp_path):
    clean = write_clean(tmp_path, doc_texts(5))
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
    clean = write_clean(tmp_path, texts)
    original = Tokenizer.decode_batch

    def lossy(self, encoded, num_threads=-1):  # a tokenizer that drops characters of one document
        target = self.normalize(texts[2])
        return [t.replace("e", "") if t == target else t for t in original(self, encoded, num_threads)]

    monkeypatch.setattr(Tokenizer, "decode_batch", lossy)
    with pytest.raises(RoundTripError, match=r"1 of 6 documents"):
        run_tokenizer(SMALL, clean, tmp_path)


def test_encode_checks_the_round_trip_of_every_document_and_keeps_no_file_of_a_failed_shard(
    tmp_path, monkeypatch
):
    texts = doc_texts(20)
    clean = write_clean(tmp_path, texts)
    tok_art = run_tokenizer(SMALL.model_copy(update={"report_max_chars": 1}), clean, tmp_path)
    assert tok_art.stats["documents"] == 1  # the report read one document: encode alone sees the others
    bad = next(i for i, t in enumerate(texts) if sample_score(doc_id(t)) > sample_score(doc_id(texts[0])))
    original = Tokenizer.decode_batch

    def lossy(self, encoded, num_threads=-1):  # a tokenizer that drops characters of one document
        target = self.normalize(texts[bad])
        return [t.replace("e", "") if t == target else t for t in original(self, encoded, num_threads)]

    monkeypatch.setattr(Tokenizer, "decode_batch", lossy)
    shard = bad // 7  # write_clean's shards hold 7 rows
    in_shard = len(texts[shard * 7 : shard * 7 + 7])
    with pytest.raises(
        RoundTripError, match=rf"1 of {in_shard} documents of shard .*-{shard:05d}.parquet"
    ) as e:
        run_encode(SMALL, clean, tok_art, tmp_path)
    assert doc_id(texts[bad]) in str(e.value) and "clean them in the preprocess phase" in str(e.value)
    work = next((tmp_path / "encode").glob(".work-*"))
    assert not [
        p.name for p in work.iterdir() if p.name.endswith(f"{shard:05d}.parquet") or p.name.startswith(".")
    ]
    assert not (work / f"done-{shard:05d}.json").exists()


# -- encode ---------------------------------------------------------------------------------------------


def test_encode_writes_both_splits_with_byte_counts(corpus):
    clean, tok_art, enc, _ = corpus
    verify(enc)
    tok = Tokenizer(tok_art.file("tokenizer.model"))
    texts = clean_texts(clean)
    expected_val = validation_ids(list(texts), SMALL.val_fraction)
    seen = {}
    for split in ("train", "val"):
        table = pa.concat_tables(pq.read_table(p) for p in enc.shard_paths(split))
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


def test_encode_gives_the_same_tokens_with_the_word_cache_off_and_loads_the_tokenizer_once(corpus, tmp_path):
    """The cache is operational: the same artifact content, and one Tokenizer (one cache) for every shard."""
    clean, tok_art, enc, _ = corpus
    assert len(clean.shard_paths("documents")) > 2  # several shards, so several jobs share the tokenizer
    loaded_tokenizer.cache_clear()
    cached = run_encode(SMALL, clean, tok_art, tmp_path / "cached")
    assert loaded_tokenizer.cache_info().misses == 1 and loaded_tokenizer.cache_info().hits >= 2
    plain = run_encode(SMALL.model_copy(update={"cache_words": 0}), clean, tok_art, tmp_path / "plain")
    assert cached.fingerprint == plain.fingerprint == enc.fingerprint  # not a content field
    for split in ("train", "val"):
        a, b = list(read_split(cached, split)), list(read_split(plain, split))
        assert [d for d, _, _ in a] == [d for d, _, _ in b]
        assert all(np.array_equal(x, y) for (_, x, _), (_, y, _) in zip(a, b, strict=True))


def test_encoded_tokens_are_the_tokenizers_ids(corpus):
    _, tok_art, enc, _ = corpus
    tok = Tokenizer(tok_art.file("tokenizer.model"))
    _doc_id, toks, _ = next(read_split(enc, "train"))
    assert toks.dtype == np.uint16 and int(toks.max()) < tok.vocab_size


def test_rare_characters_fall_back_to_bytes_and_are_counted(tmp_path):
    texts = [*doc_texts(8), "A llama emoji 🦙 and a rare glyph ꙮ."]
    art = run_tokenizer(SMALL, write_clean(tmp_path, texts), tmp_path)
    tok = Tokenizer(art.file("tokenizer.model"))
    pieces = tok.pieces("🦙")
    assert all(p.startswith("<0x") for p in pieces) and len(pieces) == 4  # four UTF-8 bytes
    assert 0 < art.stats["byte_fallback_share"] < 0.01


# -- the sample -----------------------------------------------------------------------------------------


def test_the_tokenizer_learns_from_a_hash_drawn_sample_within_both_caps(tmp_path):
    texts = doc_texts(60)
    clean = write_clean(tmp_path, texts)
    ids = [doc_id(t) for t in texts]
    val = validation_ids(ids, SMALL.val_fraction)
    train_ids = [d for d in ids if d not in val]

    art = run_tokenizer(SMALL.model_copy(update={"max_docs": 12}), clean, tmp_path)
    lowest = sorted(train_ids, key=sample_score)[:12]
    assert art.stats["sampled_documents"] == 12
    assert art.stats["sampled_characters"] == sum(len(texts[ids.index(d)]) for d in lowest)
    assert set(lowest) != set(train_ids[:12])  # drawn across the corpus, not its first documents
    threshold = sample_score(lowest[-1])
    assert art.stats["documents"] == sum(sample_score(d) <= threshold for d in ids)  # the report: both sides

    both_sides = sorted(ids, key=sample_score)
    report_cap = sum(len(texts[ids.index(d)]) for d in both_sides[:5]) + 1  # the 6th would not fit
    reported = run_tokenizer(SMALL.model_copy(update={"report_max_chars": report_cap}), clean, tmp_path)
    assert reported.stats["documents"] == 5 and reported.stats["sampled_documents"] == len(train_ids)
    assert reported.stats["bytes"] == sum(len(texts[ids.index(d)].encode()) for d in both_sides[:5])

    by_score = sorted(train_ids, key=sample_score)
    lines = {d: sum(1 for line in texts[ids.index(d)].split("\n") if line.strip()) for d in ids}
    max_lines = sum(lines[d] for d in by_score[:15]) + lines[by_score[15]] - 1  # the 16th would not fit
    fewer = run_tokenizer(SMALL.model_copy(update={"input_sentence_size": max_lines}), clean, tmp_path)
    assert fewer.stats["sampled_documents"] == 15
    assert fewer.stats["sampled_lines"] == sum(lines[d] for d in by_score[:15])

    cap = sum(len(texts[ids.index(d)]) for d in by_score[:20]) + 1  # the 21st document would not fit
    capped = run_tokenizer(SMALL.model_copy(update={"max_chars": cap}), clean, tmp_path)
    assert capped.stats["sampled_documents"] == 20 and capped.stats["sampled_characters"] == cap - 1


# -- encode: shards and resume --------------------------------------------------------------------------


def test_encode_resumes_at_shard_granularity(corpus, tmp_path):
    """A run that dies after two shards redoes only the others, and publishes the same files."""
    clean, tok_art, enc, _ = corpus
    root = tmp_path / "root"
    ran: list[int] = []

    def dying(fn, jobs):
        results = []
        for job in jobs:
            if len(ran) == 2:
                raise KeyboardInterrupt("killed halfway")
            ran.append(job.index)
            results.append(fn(job))
        return results

    with pytest.raises(KeyboardInterrupt):
        run_encode(SMALL, clean, tok_art, root, mapper=dying)
    assert not (root / "encode" / enc.fingerprint).exists()
    work = root / "encode" / f".work-{enc.fingerprint}"
    finished = {p.name: p.stat().st_mtime_ns for p in work.glob("train-*.parquet")}
    assert sorted(finished) == ["train-00000.parquet", "train-00001.parquet"]
    assert sorted(p.name for p in work.glob("done-*.json")) == ["done-00000.json", "done-00001.json"]

    redone: list[int] = []

    def recording(fn, jobs):
        redone.extend(j.index for j in jobs if not (Path(j.work) / f"done-{j.index:05d}.json").is_file())
        return [fn(j) for j in jobs]

    again = run_encode(SMALL, clean, tok_art, root, mapper=recording)
    assert redone == list(range(2, len(clean.shards["documents"])))
    assert again.files == enc.files and again.shards == enc.shards  # byte for byte what one run gives
    assert len(enc.shards["train"]) == len(clean.shards["documents"]) > 1
    assert not work.exists()  # published: the work folder is gone
    for name, mtime in finished.items():  # the finished shards were reused, not written again
        assert (again.dir / name).stat().st_mtime_ns == mtime


def test_a_shard_this_machine_cannot_see_names_the_shared_folder_it_needs(corpus, tmp_path):
    _, tok_art, _, _ = corpus
    split = DocSplit(0.1, documents=2, held_out=1)
    job = EncodeJob(
        0,
        str(tmp_path / "elsewhere.parquet"),
        str(tok_art.file("tokenizer.model")),
        str(tmp_path),
        split,
        16,
        1,
        100,
    )
    with pytest.raises(FileNotFoundError, match=r"not on this machine .* shared file system"):
        encode_shard(job)
    assert list(tmp_path.iterdir()) == []  # nothing written, no done record


@pytest.mark.parametrize(
    ("max_docs", "max_chars", "max_lines"),
    [
        (1000, 10**9, None),
        (17, 10**9, None),
        (1000, 3000, None),
        (1000, 10**9, 40),
        (30, 5000, 60),
        (5, 1, 1),
    ],
)
def test_the_one_pass_sample_is_the_lowest_scoring_prefix_within_every_cap(
    tmp_path, max_docs, max_chars, max_lines
):
    """Against the definition, on many small batches (so the running cut-off is trimmed many times)."""
    words = doc_texts(1)[0].split()
    texts = [
        "\n".join(" ".join(words[i : i + 3 + (i * 7 + j) % 20]) for j in range(1 + i % 9)) + "\n\n \n"
        for i in range(150)
    ]
    clean = write_clean(tmp_path, texts)
    paths = clean.shard_paths("documents")
    ids = [doc_id(t) for t in texts]
    split = DocSplit.scan(ids, 0.1)
    got = choose_sample(paths, split, max_docs, max_chars, batch_docs=5, max_lines=max_lines)

    ranked = sorted(
        (sample_score(d), len(t), sum(1 for line in t.split("\n") if line.strip()))
        for d, t in zip(ids, texts, strict=True)
        if not split.is_val(d)
    )
    take = 0
    while (
        take < min(len(ranked), max_docs)
        and sum(r[1] for r in ranked[: take + 1]) <= max_chars
        and (max_lines is None or sum(r[2] for r in ranked[: take + 1]) <= max_lines)
    ):
        take += 1
    take = max(take, 1)
    assert (got.documents, got.threshold) == (take, ranked[take - 1][0])
    assert got.characters == sum(r[1] for r in ranked[:take])
    if max_lines is not None:
        assert got.lines == sum(r[2] for r in ranked[:take])


def test_a_document_after_a_trim_still_fills_the_gap_the_first_left_out_leaves(tmp_path):
    """Scores a < b < d < c; c (too long) is left out when the first batch is trimmed, then the short d
    arrives and fits: the running cut-off is c's score, not b's."""
    a, b, d, c = sorted((f"doc-{i}" for i in range(40)), key=sample_score)[:4]
    clean = write_clean(tmp_path, ["x" * 10, "y" * 10, "z" * 100, "w" * 5], ids=[a, b, c, d])
    got = choose_sample(clean.shard_paths("documents"), DocSplit(1e-12), 10, 25, batch_docs=3)
    assert (got.documents, got.characters, got.threshold) == (3, 25, sample_score(d))
