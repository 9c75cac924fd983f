"""What the launcher told this process: how many ranks it started and which one this is.

`torchrun` (and other launchers of `torch.distributed`) set WORLD_SIZE and RANK in each process's
environment. The CLIs read them before any pipeline or model exists (to prefix error messages
with the rank, to refuse a launch that does not match `target.tp_size`, to let only rank 0 print,
write results and listen for HTTP), so this module imports nothing heavy: `specdec plugins` and
`specdec validate` start without torch.
"""

from __future__ import annotations

import os


def launched_ranks() -> int | None:
    """WORLD_SIZE when this process was launched by torchrun (or another launcher setting it), else None."""
    world = os.environ.get("WORLD_SIZE")
    return int(world) if world and world.isdigit() else None


def launched_rank() -> int | None:
    """This process's RANK in a launch of more than one process, else None (a single process,
    also one that torchrun started alone)."""
    rank = os.environ.get("RANK")
    if (launched_ranks() or 1) < 2 or rank is None or not rank.isdigit():
        return None
    return int(rank)


def is_follower_rank() -> bool:
    """Whether this is a rank other than 0 of a multi-process launch: it computes its share of
    every step but prints, writes and serves nothing."""
    return (launched_rank() or 0) != 0
