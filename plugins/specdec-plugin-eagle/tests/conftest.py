"""Tiny models run fastest single-threaded (as in specdec's own test suite)."""

import torch

torch.set_num_threads(1)
