"""What torchrun told this process, read before anything heavy is loaded (`specdec.launch`)."""

import subprocess
import sys

import pytest

from specdec import is_follower_rank, launched_rank, launched_ranks


@pytest.mark.parametrize("world, rank, ranks, expected_rank, follower", [
    (None, None, None, None, False),  # not launched by torchrun
    ("1", "0", 1, None, False),  # torchrun with one process: a single process
    ("2", "0", 2, 0, False),
    ("2", "1", 2, 1, True),
    ("4", "3", 4, 3, True),
    ("2", None, 2, None, False),  # a launcher that sets no RANK: nothing to tell apart
    ("two", "1", None, None, False),  # garbage is not a launch
    ("2", "x", 2, None, False),  # nor a garbage rank: this process acts as rank 0 would
])
def test_ranks_come_from_the_launchers_environment(monkeypatch, world, rank, ranks, expected_rank, follower):
    for name, value in (("WORLD_SIZE", world), ("RANK", rank)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert launched_ranks() == ranks
    assert launched_rank() == expected_rank
    assert is_follower_rank() is follower


def test_reading_the_launch_loads_no_torch():
    code = "import sys, specdec; specdec.is_follower_rank(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_cli_errors_name_the_rank_only_in_a_multi_process_launch(monkeypatch):
    from specdec.cli import _rank_prefix

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert _rank_prefix() == "rank 1: "
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _rank_prefix() == ""
