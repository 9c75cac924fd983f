"""The engine benchmark's parts that run without a GPU."""

from types import SimpleNamespace

import torch

from specdec_plugin_bench.enginebench import graph_forward_seconds


class CountedGraph:
    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


def verifier_with(graphs):
    return SimpleNamespace(runner=SimpleNamespace(device=torch.device("cpu"), graphs=graphs))


def test_the_graph_timed_is_the_one_token_one_row_graph_with_the_longest_span():
    short, long, wide = CountedGraph(), CountedGraph(), CountedGraph()
    captured = {(0, 1, 1, 256, ()): short, (0, 1, 1, 512, ()): long, (0, 1, 4, 1024, ()): wide}
    seconds = graph_forward_seconds(verifier_with(SimpleNamespace(captured=lambda: captured)), repeats=3)
    assert seconds is not None and seconds >= 0
    assert (short.replays, long.replays, wide.replays) == (0, 3, 0)


def test_without_such_a_graph_there_is_no_time():
    assert graph_forward_seconds(verifier_with(None)) is None
    two_rows = {(0, 2, 1, 256, ()): CountedGraph()}
    assert graph_forward_seconds(verifier_with(SimpleNamespace(captured=lambda: two_rows))) is None
