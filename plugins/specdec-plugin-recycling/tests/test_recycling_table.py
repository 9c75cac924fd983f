"""The adjacency table: top-k rows from logits, newest row wins, unknown tokens have none."""

import numpy as np
import pytest
import torch

from specdec_plugin_recycling.table import AdjacencyTable, top_candidates


def test_top_candidates_are_the_best_tokens_with_their_share_of_the_top_k():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]])
    ids, shares = top_candidates(logits, 2)
    assert ids[0].tolist() == [1, 3] and ids[1, 0] == 0
    assert shares[0].tolist() == pytest.approx(torch.softmax(torch.tensor([3.0, 2.0]), -1).tolist())
    assert np.allclose(shares.sum(axis=1), 1.0)
    # a vocabulary smaller than k: missing candidates are -1 with share 0
    ids, shares = top_candidates(torch.tensor([[1.0, 2.0]]), 4)
    assert ids.tolist() == [[1, 0, -1, -1]] and shares[0, 2:].tolist() == [0.0, 0.0]


def test_rows_are_written_newest_last_and_read_back():
    table = AdjacencyTable(top_k=2)
    assert table.row(5) is None and table.num_rows == 0
    logits = torch.full((3, 10), -5.0)
    logits[0, 7] = logits[1, 8] = logits[2, 9] = 5.0
    table.update([5, 6, 5], logits)  # token 5 twice: its second row (best token 9) wins
    assert table.row(5)[0][0] == 9 and table.row(6)[0][0] == 8 and table.num_rows == 2
    assert table.row(6)[1][0] == pytest.approx(1 / (1 + np.exp(-10.0)))  # 8 against the runner-up at -5
    assert table.row(4) is None and table.row(-1) is None and table.row(10_000) is None
    table.update([3000], logits[:1])  # grows past the largest id seen so far
    assert table.row(3000)[0][0] == 7 and table.filled.shape[0] >= 3001
    table.clear()
    assert table.num_rows == 0 and table.row(5) is None
