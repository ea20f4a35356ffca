"""The packed token stream the trainer reads, and the window sampler that walks it.

Documents are joined into one stream with EOS before each document and one after the last:
`EOS d1 EOS d2 ... EOS dn EOS`, never padded, never truncated. A training example is any window of
`seq_len + 1` consecutive tokens (inputs are the first `seq_len`, targets the last `seq_len`), so every
token of every document is a target, including the EOS that ends it, and the leading EOS lets the first
token of a document be predicted from a "document starts here" context.

Each epoch visits a fresh set of non-overlapping windows: a random offset in `[0, seq_len)` shifts the
window grid (so window boundaries move between epochs) and a random permutation orders the windows.
Both come from a generator seeded by `(seed, epoch)`, so the whole data order is a pure function of the
seed and "data position" is two integers, `(epoch, index)`, that a checkpoint stores and a resumed run
restores exactly. Under DDP every rank draws the same global batch and takes its own slice of it, so
ranks never see the same window in a step and N ranks see exactly what one process with an N-times
larger batch would see.

The stream lives in a flat binary file (`.bin`, uint16 or uint32, memory-mapped) written by
`write_packed`; this module knows nothing about Parquet or tokenizers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tinyllama_model.files import atomic_path
from tinyllama_model.tokenizer import EOS_ID


class CorpusTooSmallError(ValueError):
    """The token stream cannot fill a single training window."""


def pack_documents(
    docs: Iterable[np.ndarray | list[int]], eos_id: int = EOS_ID, dtype=np.uint32
) -> np.ndarray:
    """Join token lists into one stream: `EOS d1 EOS d2 ... EOS dn EOS` (in memory; see `write_packed`)."""
    parts: list[np.ndarray] = []
    sep = np.array([eos_id], dtype=dtype)
    for doc in docs:
        parts.append(sep)
        parts.append(np.asarray(doc, dtype=dtype))
    parts.append(sep)
    return np.concatenate(parts)


def write_packed(
    docs: Iterable[np.ndarray | list[int]], path: str | Path, dtype, eos_id: int = EOS_ID
) -> int:
    """Stream documents into a packed `.bin` file (atomically); returns the stream length in tokens.

    Memory stays bounded by one document, so the corpus size is limited by disk, not RAM.
    """
    sep = np.array([eos_id], dtype=dtype)
    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for doc in docs:
            arr = np.asarray(doc, dtype=dtype)
            sep.tofile(f)
            arr.tofile(f)
            n += 1 + arr.size
        sep.tofile(f)
        n += 1
    return n


class PackedTokens:
    """A read-only packed stream, memory-mapped from a `.bin` file or wrapped around an array."""

    def __init__(self, tokens: np.ndarray):
        if tokens.ndim != 1:
            raise ValueError(f"a packed stream is 1-D, got shape {tokens.shape}")
        self.tokens = tokens

    @classmethod
    def from_file(cls, path: str | Path, dtype) -> PackedTokens:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no packed token file at {path}; run the encode phase first")
        if path.stat().st_size == 0:
            return cls(np.zeros(0, dtype=dtype))
        return cls(np.memmap(path, dtype=dtype, mode="r"))

    def __len__(self) -> int:
        return int(self.tokens.size)

    def windows(self, starts: np.ndarray | list[int], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets for windows beginning at `starts`: two (B, seq_len) int64 tensors."""
        rows = np.stack([np.asarray(self.tokens[s : s + seq_len + 1], dtype=np.int64) for s in starts])
        xy = torch.from_numpy(rows)  # (B, seq_len + 1)
        return xy[:, :-1], xy[:, 1:]


def windows_per_epoch(n_tokens: int, seq_len: int, offset: int = 0) -> int:
    """Non-overlapping windows that fit after `offset` (a window's last target is the next one's input)."""
    return max(0, (n_tokens - 1 - offset) // seq_len)


def check_fits(n_tokens: int, seq_len: int, what: str = "training") -> None:
    """Fail with the fix when a stream cannot fill one window of `seq_len` inputs plus one target."""
    if n_tokens < seq_len + 1:
        raise CorpusTooSmallError(
            f"the {what} token stream has {n_tokens} tokens, fewer than one window of train.seq_len="
            f"{seq_len} needs ({seq_len + 1}); add documents, or lower train.seq_len to "
            f"{max(1, n_tokens - 1)} or less"
        )


@dataclass
class SamplerState:
    epoch: int = 0
    index: int = 0  # windows of this epoch already handed out (globally, over all ranks)
    windows_seen: int = 0  # over all epochs: the budget in epochs counts these


class WindowSampler:
    """Hands out window starts: a seeded permutation of a shifted grid per epoch, resumable by position.

    `next_starts(n)` returns the next `n` starts of the global order; batches run across epoch
    boundaries without dropping or repeating windows.
    """

    def __init__(self, n_tokens: int, seq_len: int, seed: int):
        check_fits(n_tokens, seq_len)
        self.n_tokens, self.seq_len, self.seed = n_tokens, seq_len, seed
        self.state = SamplerState()
        self._epoch_order: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            # The grid shift stays small enough that at least one window fits after it.
            offset = int(torch.randint(min(self.seq_len, self.n_tokens - self.seq_len), (1,), generator=g))
            n = windows_per_epoch(self.n_tokens, self.seq_len, offset)
            perm = torch.randperm(n, generator=g).numpy()
            self._epoch_order = (epoch, offset + perm.astype(np.int64) * self.seq_len)
        return self._epoch_order[1]

    @property
    def epochs_done(self) -> float:
        """Fractional epochs consumed: full epochs plus the part of the current one."""
        return self.state.epoch + self.state.index / len(self._order(self.state.epoch))

    def next_starts(self, n: int) -> np.ndarray:
        out: list[np.ndarray] = []
        while n > 0:
            order = self._order(self.state.epoch)
            take = order[self.state.index : self.state.index + n]
            out.append(take)
            n -= take.size
            self.state.index += take.size
            self.state.windows_seen += take.size
            if self.state.index >= order.size:
                self.state.epoch += 1
                self.state.index = 0
        return np.concatenate(out)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.state.epoch, "index": self.state.index, "windows_seen": self.state.windows_seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state = SamplerState(int(state["epoch"]), int(state["index"]), int(state["windows_seen"]))


def eval_starts(n_tokens: int, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """Fixed validation windows on the non-overlapping grid; `max_windows` of them spread evenly over it.

    Spreading (rather than taking the first ones) keeps a subset representative of every document.
    """
    n = windows_per_epoch(n_tokens, seq_len)
    index = np.arange(n, dtype=np.int64)
    if max_windows is not None and max_windows < n:
        index = np.linspace(0, n - 1, max_windows).round().astype(np.int64)
    return index * seq_len
