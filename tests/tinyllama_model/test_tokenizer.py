"""The SentencePiece wrapper: special ids, lossless round trips (newlines, Unicode, emoji), bad files.

`train_tiny_tokenizer` is shared with the generate and export tests: a real BPE model of a few hundred
pieces trained in well under a second on text that ships with Python (pydoc's topic help).
"""

from __future__ import annotations

import pytest
import sentencepiece as spm

from tests.factories import TINY_VOCAB, train_tiny_tokenizer, training_texts
from tinyllama_model.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_sentencepiece

SAMPLES = [
    "Hello world",
    "two\nlines\n\nand a blank one\n",
    "  leading and  double   spaces ",
    "tabs\tand\ttabs",
    "café naïve Zürich — “quotes” …",
    "ﬁ ligature and ① circled",  # NFKC changes these
    "emoji 🦙🚀 and CJK 你好 and Ελληνικά",
    "numbers 3.14159 and 2024-01-01",
    "",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return Tokenizer(train_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def test_special_ids_and_pieces(tok):
    assert (PAD_ID, EOS_ID, UNK_ID, BOS_ID) == (0, 1, 2, 3)
    assert [tok.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "</s>", "<unk>", "<s>"]
    assert tok.vocab_size == TINY_VOCAB
    assert tok.encode("hi", bos=True, eos=True)[0] == BOS_ID
    assert tok.encode("hi", bos=True, eos=True)[-1] == EOS_ID
    assert BOS_ID not in tok.encode("hi") and EOS_ID not in tok.encode("hi")


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_lossless_up_to_nfkc(tok, text):
    ids = tok.encode(text)
    assert UNK_ID not in ids  # byte fallback: nothing is unknown
    assert tok.decode(ids) == tok.normalize(text)


def test_round_trip_keeps_plain_text_exactly(tok):
    text = "First paragraph.\n\nSecond  paragraph,\twith tab.\n  indented line\n"
    assert tok.decode(tok.encode(text)) == text


def test_newline_is_its_own_piece(tok):
    assert "\n" in tok.pieces("a\nb")
    assert tok.encode("\n") == [tok.sp.piece_to_id("\n")]


def test_no_dummy_prefix(tok):
    # add_dummy_prefix=False: "word" at the start and " word" in the middle are different pieces
    assert tok.pieces("the")[0] != "▁the"
    assert tok.decode(tok.encode(" x")) == " x"


def test_emoji_goes_through_byte_fallback(tok):
    pieces = tok.pieces("🦙")
    assert pieces == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    assert tok.decode(tok.encode("🦙")) == "🦙"


def test_nfkc_is_applied(tok):
    assert tok.normalize("ﬁ①…") == "fi1..."
    assert tok.decode(tok.encode("ﬁ①…")) == "fi1..."


def test_encode_batch_equals_encode(tok):
    assert tok.encode_batch(SAMPLES, num_threads=1) == [tok.encode(s) for s in SAMPLES]


def test_the_batch_calls_equal_the_one_text_calls(tok):
    encoded = tok.encode_batch(SAMPLES, num_threads=2)
    assert tok.decode_batch(encoded, num_threads=2) == [tok.decode(ids) for ids in encoded]
    assert tok.normalize_batch(SAMPLES) == [tok.normalize(t) for t in SAMPLES]
    assert tok.normalize_batch(["a  b"]) == ["a  b"]  # the whitespace marker is a space again


def test_special_ids_are_dropped_by_decode_but_unk_kept(tok):
    ids = tok.encode("ab")
    assert tok.decode([BOS_ID, *ids, EOS_ID, PAD_ID]) == "ab"
    assert tok.decode([UNK_ID]) != ""  # an unknown token stays visible (as " ⁇ ")


def test_stream_decode_joins_to_decode(tok):
    text = "stream 🦙 ok\nnext line é"
    ids = tok.encode(text)
    pieces = list(tok.stream_decode(ids))
    assert "".join(pieces) == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)  # never half a character
    assert len(pieces) > 3


def test_stream_decode_flushes_an_incomplete_final_character(tok):
    ids = tok.encode("🦙")
    assert len(ids) > 1  # byte fallback: several ids for one character
    cut = ids[:-1]
    assert "".join(tok.stream_decode(cut)) == tok.decode(cut)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        Tokenizer(tmp_path / "nope.model")


def test_directory_resolves_to_tokenizer_model(tmp_path, tok):
    (tmp_path / "tokenizer.model").write_bytes(tok.path.read_bytes())
    assert Tokenizer(tmp_path).encode("abc") == tok.encode("abc")


def test_garbage_model_file_is_an_error(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"this is not a sentencepiece model" * 3)
    with pytest.raises(ValueError, match=r"not a readable SentencePiece model.*re-run the tokenizer phase"):
        Tokenizer(bad)


def test_wrong_special_ids_rejected(tmp_path):
    # SentencePiece's own defaults (unk=0, bos=1, eos=2, no pad) are not the design's ids
    prefix = tmp_path / "default_ids"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_texts()[-300:]),
        model_prefix=str(prefix),
        vocab_size=60,
        model_type="bpe",
        minloglevel=2,
    )
    with pytest.raises(ValueError, match="special ids"):
        Tokenizer(f"{prefix}.model")


def test_the_model_file_is_a_function_of_the_texts_and_settings_only(tmp_path):
    """Two trainings in different folders, on different thread counts, give the same bytes (and SHA-256)."""
    texts = training_texts()
    one = train_sentencepiece(texts, tmp_path / "a" / "tokenizer.model", vocab_size=TINY_VOCAB, num_threads=1)
    two = train_sentencepiece(texts, tmp_path / "b" / "tokenizer.model", vocab_size=TINY_VOCAB, num_threads=2)
    assert one.read_bytes() == two.read_bytes()
    assert sorted(p.name for p in one.parent.iterdir()) == ["tokenizer.model"]  # no partial files left
