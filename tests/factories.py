"""Small real things the tests share: a SentencePiece model trained on text every Python ships, and a
tiny model directory in the format `TinyLlama.from_pretrained` reads."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tasks.sources.document import DOCUMENT_SCHEMA, Document, document_row
from tinyllama_model.model import ModelConfig, TinyLlama
from tinyllama_model.tokenizer import train_sentencepiece

TINY_VOCAB = 512  # small, yet covers every character of pydoc's topics without byte fallback


def training_texts() -> list[str]:
    try:
        from pydoc_data.topics import topics

        texts = list(topics.values())
    except ImportError:  # some distributions strip pydoc_data
        texts = []
    paragraphs = [
        "The transformer is a deep learning architecture based on attention.",
        "Language models predict the next token from the tokens before it.",
        "Rotary position embeddings rotate queries and keys by their position.",
    ]
    return texts + paragraphs * 200


def train_tiny_tokenizer(directory: Path, vocab_size: int = TINY_VOCAB) -> Path:
    return train_sentencepiece(training_texts(), Path(directory) / "tokenizer.model", vocab_size=vocab_size)


def make_model_dir(
    directory: Path, tokenizer_file: Path, seed: int = 0, vocab_size: int = TINY_VOCAB
) -> Path:
    """A randomly initialised model of ~60k parameters saved with its tokenizer."""
    torch.manual_seed(seed)
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=2, vocab_size=vocab_size, max_seq_len=64, multiple_of=16)
    return TinyLlama(cfg).save_pretrained(directory, tokenizer_file=tokenizer_file)


def collect_all(source, ctx=None):
    """(documents, summary) of a collect source, its documents kept in a list: small test corpora only."""
    from tasks.sources.base import SourceContext

    documents: list = []

    class _ListSink:
        def write(self, doc) -> None:
            documents.append(doc)

    summary = source.collect(ctx if ctx is not None else SourceContext(), _ListSink())
    return documents, summary


def write_documents(path: Path, docs: list[Document]) -> int:
    """One shard of the documents table, written whole (a test's hand-made input); returns the row count."""
    table = pa.Table.from_pylist([document_row(d) for d in docs], schema=DOCUMENT_SCHEMA)
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


def read_documents(path: Path) -> list[Document]:
    """One small shard of the documents table as Document objects."""
    table = pq.read_table(path, columns=DOCUMENT_SCHEMA.names)
    return [Document.from_record(row) for row in table.to_pylist()]
