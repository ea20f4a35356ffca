"""The packed stream and the window sampler: layout, coverage per epoch, exact resume of the position."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinyllama_model.data import (
    EOS_ID,
    CorpusTooSmallError,
    PackedTokens,
    WindowSampler,
    eval_starts,
    pack_documents,
    windows_per_epoch,
    write_packed,
)
from tinyllama_model.tokenizer import EOS_ID as TOKENIZER_EOS
from tinyllama_model.tokenizer import token_dtype


def test_eos_matches_the_tokenizer():
    assert EOS_ID == TOKENIZER_EOS


def test_documents_are_joined_with_eos_never_padded_or_truncated():
    docs = [[5, 6, 7], [8], [9, 10]]
    stream = pack_documents(docs)
    assert stream.tolist() == [1, 5, 6, 7, 1, 8, 1, 9, 10, 1]


def test_write_packed_streams_the_same_layout_to_disk(tmp_path):
    docs = [np.arange(4, 4 + n) for n in (3, 1, 50)]
    path = tmp_path / "train.bin"
    n = write_packed(iter(docs), path, np.uint16)
    assert n == 3 + 1 + 50 + 4
    on_disk = PackedTokens.from_file(path, np.uint16)
    assert np.array_equal(np.asarray(on_disk.tokens), pack_documents(docs))
    assert [p.name for p in tmp_path.iterdir()] == ["train.bin"]  # no partial file left behind
    # the trainer reads the stream from the page cache, never a copy in its own memory
    assert isinstance(on_disk.tokens, np.memmap) and on_disk.tokens.mode == "r"
    x, y = on_disk.windows([0], 4)
    assert x.tolist() == [[1, 4, 5, 6]] and y.tolist() == [[4, 5, 6, 1]]


def test_token_dtype_is_the_narrowest_that_holds_every_id():
    assert token_dtype(12_000) == np.uint16
    assert token_dtype(65_536) == np.uint16  # ids 0 .. 65,535
    assert token_dtype(65_537) == np.uint32


def test_windows_give_next_token_targets():
    data = PackedTokens(np.arange(100, dtype=np.uint16))
    x, y = data.windows([0, 10, 50], seq_len=8)
    assert x.shape == y.shape == (3, 8) and x.dtype == torch.int64
    assert torch.equal(y, x + 1)
    assert x[1, 0] == 10


def test_an_epoch_visits_non_overlapping_windows_once_each():
    n, t = 1000, 16
    sampler = WindowSampler(n, t, seed=0)
    first = sampler._order(0)
    starts = sampler.next_starts(len(first))
    assert sampler.state.epoch == 1 and sampler.state.index == 0
    assert len(set(starts.tolist())) == len(starts) == windows_per_epoch(n, t, int(starts.min()))
    assert np.all(np.diff(np.sort(starts)) == t)  # a grid, every token covered once
    assert starts.max() + t + 1 <= n  # the last target exists


def test_epochs_shift_and_reshuffle_the_grid():
    sampler = WindowSampler(10_000, 32, seed=3)
    orders = [sampler._order(e) for e in range(4)]
    offsets = {int(o.min()) % 32 for o in orders}
    assert len(offsets) > 1  # window boundaries move between epochs
    assert not np.array_equal(orders[0][:20], orders[1][:20])


def test_batches_run_across_epoch_boundaries_without_loss_or_repeats():
    sampler = WindowSampler(200, 10, seed=1)
    per_epoch = len(sampler._order(0))
    got = sampler.next_starts(per_epoch + 5)
    assert len(got) == per_epoch + 5
    assert set(got[:per_epoch].tolist()) == set(sampler._order(0).tolist())
    assert np.array_equal(got[per_epoch:], sampler._order(1)[:5])
    assert sampler.epochs_done == pytest.approx(1 + 5 / len(sampler._order(1)))


def test_the_position_resumes_exactly():
    a = WindowSampler(5000, 20, seed=7)
    a.next_starts(37)
    state = a.state_dict()
    expected = a.next_starts(300)  # crosses into the next epoch
    b = WindowSampler(5000, 20, seed=7)
    b.load_state_dict(state)
    assert np.array_equal(b.next_starts(300), expected)


def test_the_order_depends_on_the_seed_only():
    assert np.array_equal(
        WindowSampler(5000, 20, 1).next_starts(50), WindowSampler(5000, 20, 1).next_starts(50)
    )
    assert not np.array_equal(
        WindowSampler(5000, 20, 1).next_starts(50), WindowSampler(5000, 20, 2).next_starts(50)
    )


def test_ranks_take_disjoint_slices_of_the_same_global_batch():
    """What the trainer does under DDP: every rank draws the global batch, then keeps its own slice."""
    world, b = 2, 4
    samplers = [WindowSampler(5000, 16, seed=0) for _ in range(world)]
    slices = [s.next_starts(world * b)[r * b : (r + 1) * b] for r, s in enumerate(samplers)]
    assert not set(slices[0].tolist()) & set(slices[1].tolist())
    assert np.array_equal(np.concatenate(slices), WindowSampler(5000, 16, seed=0).next_starts(world * b))


def test_a_stream_shorter_than_one_window_is_a_clear_error():
    with pytest.raises(CorpusTooSmallError, match=r"train\.seq_len to 9 or less"):
        WindowSampler(10, 64, seed=0)
    WindowSampler(65, 64, seed=0).next_starts(3)  # exactly one window fits: fine, every epoch


def test_eval_windows_are_a_fixed_grid_and_a_subset_spans_the_stream():
    assert eval_starts(100, 10).tolist() == list(range(0, 90, 10))
    assert eval_starts(100, 10, max_windows=3).tolist() == [0, 40, 80]  # first, middle, last window
    assert eval_starts(100, 10, max_windows=50).tolist() == list(range(0, 90, 10))
