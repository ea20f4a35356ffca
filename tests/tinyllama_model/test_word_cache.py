"""The word cache gives SentencePiece's ids exactly: adversarial text, other trainer options, a real corpus.

Every comparison is against `sp.encode` on the same model, and each module asserts the cache is in use,
so an equality here is the cache's, not SentencePiece's own path answering twice.
"""

from __future__ import annotations

import json
import random
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import sentencepiece as spm

from tests.factories import train_tiny_tokenizer, training_texts
from tinyllama_model import word_cache as word_cache_module
from tinyllama_model.tokenizer import Tokenizer, train_sentencepiece
from tinyllama_model.word_cache import SPACE, split_words

ADVERSARIAL = [
    "",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    " \n ",
    "word",
    " word",
    "word ",
    "  two  spaces  ",
    "   leading, trailing and  inner   runs   ",
    "tabs\tand\t\ttabs\t",
    " \t mixed \t whitespace\t \n",
    "lines\nand\n\nparagraphs\n\n\nend\n",
    "\n  indented\n    code()\n",
    "numbers 3.14159, 2024-01-01 and 1 000 000",
    "12345678901234567890",
    "emoji 🦙🚀 and 👩‍👩‍👧 and rare ꙮ 𝔘 𓀀",
    "CJK 你好世界 日本語のテキスト 한국어",
    "Ελληνικά и кириллица and עברית",
    "the marker ▁ itself, ▁▁ doubled, ▁word and word▁",
    "▁",
    "▁ ▁",
    "ﬁ ligature, ① circled, ＦＵＬＬ　ｗｉｄｔｈ and ｶﾀｶﾅ",
    "no\u00a0break\u00a0spaces and an ideographic\u3000space",
    "acute \u00b4 alone, e\u0301 combining, \u0301 after a space",
    "café naïve Zürich — “quotes” …",
    "a" * 300,
    "w" * 20_000,
    "controls a\x00b \x00 \x0b\x0c\x1c, x\r\ny\r\n",
    "zero\u200bwidth \u200b, line\u2028separator, \ufeffbyte order mark, \U0010ffff",
    " ".join(["repeated words repeat"] * 50),
]

# Characters that stress the cut: spaces NFKC makes, the marker, newlines, digits, byte fallback.
ALPHABET = [*"ab ▁\n\t0123.,", "the", "ﬁ", "\u00a0", "\u3000", "\u00b4", "\u0301", "🦙", "你", "Ａ", "  "]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(ALPHABET, k=rng.randint(0, 40))) for _ in range(n)]


def assert_same_ids(tok: Tokenizer, texts: list[str], **kwargs) -> None:
    expected = tok.sp.encode(texts)
    got = tok.encode_batch(texts, num_threads=1, **kwargs)
    for text, e, g in zip(texts, expected, got, strict=True):
        assert g == e, f"{text!r}: cache {g} != SentencePiece {e}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tokenizer:
    tok = Tokenizer(train_tiny_tokenizer(tmp_path_factory.mktemp("tiny")))
    assert tok.word_cache is not None, tok.word_cache_refusal
    return tok


@pytest.fixture(scope="module")
def larger(tmp_path_factory) -> Tokenizer:
    """A vocabulary big enough for whole words, digits and whitespace-only pieces of several spaces."""
    path = tmp_path_factory.mktemp("larger") / "tokenizer.model"
    tok = Tokenizer(train_sentencepiece(training_texts(), path, vocab_size=3000))
    assert tok.word_cache is not None, tok.word_cache_refusal
    assert tok.sp.piece_to_id("▁▁▁") != tok.sp.unk_id()  # runs of spaces have pieces of their own
    return tok


def test_adversarial_texts_tiny_vocabulary(tiny):
    assert_same_ids(tiny, ADVERSARIAL)


def test_adversarial_texts_larger_vocabulary(larger):
    assert_same_ids(larger, ADVERSARIAL)
    assert_same_ids(larger, ADVERSARIAL)  # again, now from the cache


def test_random_texts(tiny, larger):
    texts = random_texts(400)
    assert_same_ids(tiny, texts)
    assert_same_ids(larger, texts)


def test_each_text_alone_and_in_a_batch(larger):
    for text in ADVERSARIAL:
        assert larger.encode_batch([text], num_threads=1) == [larger.sp.encode(text)]


def test_the_cache_remembers_and_stays_within_its_cap(tmp_path):
    tok = Tokenizer(train_tiny_tokenizer(tmp_path))
    texts = training_texts()[:40]
    assert_same_ids(tok, texts, cache_words=25)
    assert len(tok.word_cache) == 25
    assert_same_ids(tok, texts, cache_words=25)  # full: the words it lacks are encoded and forgotten
    assert len(tok.word_cache) == 25
    assert_same_ids(tok, texts)
    assert len(tok.word_cache) > 25


def test_zero_cache_words_is_sentencepiece_alone(tmp_path):
    tok = Tokenizer(train_tiny_tokenizer(tmp_path))
    assert_same_ids(tok, ADVERSARIAL, cache_words=0)
    assert len(tok.word_cache) == 0


def _train_raw(tmp_path, name: str, **options) -> Tokenizer:
    """A model trained with SentencePiece options other than ours (the special ids kept as the design's)."""
    prefix = tmp_path / name
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_texts()[-800:]),
        model_prefix=str(prefix),
        vocab_size=400,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=3,
        byte_fallback=True,
        minloglevel=2,
        **options,
    )
    return Tokenizer(f"{prefix}.model")


def test_dummy_prefix_and_removed_whitespace(tmp_path):
    # SentencePiece's defaults: "▁" put before the text, runs of spaces collapsed, ends stripped
    tok = _train_raw(tmp_path, "defaults", model_type="bpe")
    assert tok.word_cache is not None, tok.word_cache_refusal
    assert tok.sp.normalize(" a  b ") == "▁a▁b"  # a "▁" in front, the spaces collapsed and stripped
    assert_same_ids(tok, ADVERSARIAL + random_texts(200, seed=1))


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"model_type": "bpe", "treat_whitespace_as_suffix": True}, "after another character"),
        ({"model_type": "bpe", "split_by_whitespace": False}, "after another character"),
        ({"model_type": "unigram"}, "not BPE"),
    ],
)
def test_models_the_cache_would_not_be_exact_for_use_sentencepiece(tmp_path, options, reason):
    tok = _train_raw(tmp_path, "other", **options)
    assert tok.word_cache is None
    assert reason in tok.word_cache_refusal
    assert_same_ids(tok, ADVERSARIAL)


def test_every_document_of_the_real_corpus(shared_corpus, tmp_path):
    texts = [json.loads(line)["content"] for line in shared_corpus.read_text(encoding="utf-8").splitlines()]
    tok = Tokenizer(train_sentencepiece(texts, tmp_path / "tokenizer.model", vocab_size=8000))
    assert tok.word_cache is not None, tok.word_cache_refusal
    expected = tok.sp.encode(texts)
    got = [ids for i in range(0, len(texts), 64) for ids in tok.encode_batch(texts[i : i + 64])]
    mismatched = [i for i, (e, g) in enumerate(zip(expected, got, strict=True)) if e != g]
    assert not mismatched, f"documents {mismatched[:10]} differ"


@pytest.mark.parametrize("text", ["▁▁", "▁a", "a▁", "a▁▁", "▁▁a▁b▁▁▁c▁", "a▁b\n▁▁\n▁c", *ADVERSARIAL])
def test_split_words_cuts_before_the_first_space_of_every_run(text):
    normalized = text.replace(" ", SPACE)
    assert split_words(normalized) == re.split(f"(?<!{SPACE}){SPACE}", normalized)


def test_threads_sharing_a_full_cache_get_the_right_ids(tmp_path):
    tok = Tokenizer(train_tiny_tokenizer(tmp_path))
    batches = [random_texts(60, seed=s) + training_texts()[s : s + 5] for s in range(16)]
    expected = [tok.sp.encode(b) for b in batches]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so batches interleave
    try:
        with ThreadPoolExecutor(4) as pool:  # a cap of 50 words: most words are added, used and forgotten
            got = list(pool.map(lambda b: tok.encode_batch(b, num_threads=1, cache_words=50), batches * 8))
    finally:
        sys.setswitchinterval(interval)
    assert got == expected * 8


def test_without_protobuf_sentencepiece_encodes_alone(tmp_path, monkeypatch):
    # protobuf is installed here; its absence is what the module sees when the import fails
    monkeypatch.setattr(word_cache_module, "ModelProto", None)
    tok = Tokenizer(train_tiny_tokenizer(tmp_path))
    assert tok.word_cache is None and "protobuf" in tok.word_cache_refusal
    assert_same_ids(tok, ADVERSARIAL)
