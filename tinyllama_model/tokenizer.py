"""The SentencePiece tokenizer: training it and using it, with the fixed special ids of the design.

PAD=0 EOS=1 UNK=2 BOS=3; BPE with byte fallback, so any text encodes without UNK. Newlines are kept
as their own piece (`\\n` is a user-defined symbol and whitespace is not collapsed), so paragraphs
survive a round trip. Nothing here knows about Parquet, Prefect or where the text comes from.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from tinyllama_model.files import atomic_write
from tinyllama_model.word_cache import word_cache

PAD_ID, EOS_ID, UNK_ID, BOS_ID = 0, 1, 2, 3
N_SPECIAL = 4
TOKENIZER_FILE = "tokenizer.model"
# Distinct words `encode_batch` remembers by default: a corpus's frequent words, yet small for one encode job.
CACHE_WORDS = 200_000


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id: uint16 up to 65,535 ids, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65_536 else np.dtype(np.uint32)


def train_sentencepiece(
    sentences: Iterable[str],
    model_file: str | Path,
    vocab_size: int = 12_000,
    *,
    input_sentence_size: int = 2_000_000,
    max_sentence_length: int = 16_384,
    character_coverage: float = 0.9995,
    num_threads: int | None = None,
    seed_sentencepiece_size: int = 1_000_000,
) -> Path:
    """Train a BPE model from a stream of texts and write it to `model_file` (atomically).

    Texts are streamed through `sentence_iterator`, so nothing is spooled to a temporary file; each
    text is split into lines because SentencePiece silently skips any "sentence" longer than
    `max_sentence_length`. `input_sentence_size` caps how many lines it samples from a larger stream.
    The model comes back in memory and is written without the run's thread count, so the file's bytes
    (and the SHA-256 the artifacts record) depend on the texts and the settings only.
    """
    model_file = Path(model_file)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(sentences),
        model_writer=proto,
        model_type="bpe",
        vocab_size=vocab_size,
        normalization_rule_name="nfkc",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=["\n"],
        byte_fallback=True,
        character_coverage=character_coverage,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        max_sentence_length=max_sentence_length,
        seed_sentencepiece_size=seed_sentencepiece_size,
        num_threads=num_threads or os.cpu_count() or 1,
        minloglevel=2,
    )
    atomic_write(model_file, _without_run_details(proto.getvalue()))
    return model_file


def _without_run_details(serialized: bytes) -> bytes:
    """The model proto less the fields that describe the run rather than the model (the pieces do not
    depend on them): the thread count, and the output prefix SentencePiece would have written to."""
    model = sentencepiece_model_pb2.ModelProto.FromString(serialized)
    for field in ("num_threads", "model_prefix"):
        model.trainer_spec.ClearField(field)
    return model.SerializeToString(deterministic=True)


def _lines(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


class Tokenizer:
    """A thin wrapper over a SentencePiece model that checks the special ids on load."""

    def __init__(self, model_file: str | Path):
        path = Path(model_file)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at {path}; train one with the tokenizer phase first")
        self.path = path
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as err:
            raise ValueError(
                f"{path} is not a readable SentencePiece model ({err}); re-run the tokenizer phase"
            ) from err
        ids = (self.sp.pad_id(), self.sp.eos_id(), self.sp.unk_id(), self.sp.bos_id())
        if ids != (PAD_ID, EOS_ID, UNK_ID, BOS_ID):
            raise ValueError(f"{path} has special ids (pad, eos, unk, bos) = {ids}, expected (0, 1, 2, 3)")
        # None when the model's vocabulary lets BPE merge across words (`word_cache_refusal` says why)
        self.word_cache, self.word_cache_refusal = word_cache(self.sp)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def check_fits(self, model_vocab_size: int) -> None:
        """Refuse a model whose vocabulary is not this tokenizer's (the train phase makes them equal).

        A larger tokenizer gives ids the model has no embedding for; a smaller one cannot decode the ids
        the model samples above its size. Either way the pair was not trained together.
        """
        if self.vocab_size != model_vocab_size:
            raise ValueError(
                f"{self.path} has {self.vocab_size} pieces but the model's config.json says "
                f"vocab_size={model_vocab_size}: this tokenizer was not trained with this model. Put the "
                f"{TOKENIZER_FILE} from the same train artifact (its model/ folder) beside the weights"
            )

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return ([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else [])

    def encode_batch(
        self, texts: list[str], num_threads: int = -1, *, cache_words: int = CACHE_WORDS
    ) -> list[list[int]]:
        """Encode many texts, the same ids as SentencePiece's, through this tokenizer's word cache.

        Words the cache has not seen go to SentencePiece's own thread pool (`num_threads`, -1: all
        cores). The cache keeps up to `cache_words` distinct words across calls; 0 (or a model the
        cache would not be exact for) encodes with SentencePiece alone.
        """
        if cache_words <= 0 or self.word_cache is None or isinstance(texts, str):
            return self.sp.encode(texts, num_threads=num_threads)
        return self.word_cache.encode_batch(texts, num_threads, cache_words)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids if i >= N_SPECIAL or i == UNK_ID])

    def decode_batch(self, encoded: list[list[int]], num_threads: int = -1) -> list[str]:
        """Decode many outputs of `encode_batch` (no special ids in them) on SentencePiece's thread pool."""
        return self.sp.decode(encoded, num_threads=num_threads)

    def normalize(self, text: str) -> str:
        """The text as the model sees it (NFKC), i.e. what decode(encode(text)) gives back."""
        return self.sp.normalize(text).replace("\u2581", " ")

    def normalize_batch(self, texts: list[str]) -> list[str]:
        """`normalize` over many texts in one call."""
        return [t.replace("\u2581", " ") for t in self.sp.normalize(texts)]

    def pieces(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def stream_decode(self, ids: Iterable[int]) -> Iterator[str]:
        """Yield text deltas as ids arrive; multi-byte characters appear once complete."""
        seen: list[int] = []
        emitted = ""
        for i in ids:
            seen.append(int(i))
            text = self.decode(seen)
            if text.endswith("\ufffd"):
                continue  # a byte-fallback character is not complete yet
            if len(text) > len(emitted):
                yield text[len(emitted) :]
                emitted = text
        text = self.decode(seen)  # whatever is left, even an incomplete byte sequence (shown as U+FFFD)
        if len(text) > len(emitted):
            yield text[len(emitted) :]
