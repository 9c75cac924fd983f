"""PositionalKVCache: writes after the committed entries, keeps what `commit` says, grows."""

import torch

from specdec.cache import PositionalKVCache


def filled(capacity=8):
    cache = PositionalKVCache(num_layers=2, capacity=capacity)
    for layer in range(2):
        keys = torch.arange(5, dtype=torch.float32).view(1, 1, 5, 1) + 100 * layer
        cache.update(keys, -keys, layer)
    return cache


def test_forward_writes_after_committed_entries_without_committing():
    cache = filled()
    assert cache.length == 0 and cache.get_seq_length() == 0
    cache.commit(2)
    keys, values = cache.keys_values(1)
    assert keys.flatten().tolist() == [100, 101] and values.flatten().tolist() == [-100, -101]


def test_commit_gathers_a_tree_path_next_to_the_committed_entries():
    cache = filled()
    cache.commit(1, extra_offsets=[1, 3])  # keep entry 0, then entries 2 and 4
    assert cache.length == 3
    assert cache.keys_values(0)[0].flatten().tolist() == [0, 2, 4]
    assert cache.keys_values(1)[1].flatten().tolist() == [-100, -102, -104]


def test_rollback_moves_an_index_and_the_next_write_overwrites():
    cache = filled()
    cache.commit(5)
    cache.crop(-3)
    assert cache.length == 2
    for layer in range(2):
        cache.update(torch.full((1, 1, 1, 1), 7.0), torch.full((1, 1, 1, 1), 7.0), layer)
    cache.commit(1)
    assert cache.keys_values(0)[0].flatten().tolist() == [0, 1, 7]


def test_growing_keeps_committed_entries():
    cache = filled(capacity=5)
    cache.commit(5)
    cache.ensure_capacity(9)
    assert cache.capacity >= 9
    assert cache.keys_values(1)[0].flatten().tolist() == [100, 101, 102, 103, 104]
