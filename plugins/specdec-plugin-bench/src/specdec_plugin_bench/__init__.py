"""specdec-plugin-bench: `specdec bench`, a Spec-Bench-style benchmark of pipelines against AR and
Hugging Face baselines, added to the CLI through the `register_commands` hook (this module).

Modules, light to heavy:

- `questions`: question files, tasks, per-task selection, multi-turn chat messages;
- `metrics`: the arithmetic (speedup, mean accepted tokens, acceptance, mismatches), pure functions;
- `plots`: the charts, drawn with matplotlib;
- `report`: report.md, results.json and the plots, from whatever records exist;
- `methods`: specdec pipelines and `model.generate()` baselines behind one `generate` call;
- `runner`: the interleaved, resumable measurement loop;
- `cli`: the `bench` subcommand;
- `enginebench`: the engine's own overhead against `model.generate()` (`python -m
  specdec_plugin_bench.enginebench --questions FILE`).

Run it as `specdec bench ...` (or `python -m specdec_plugin_bench ...`); see docs/bench.md.
This module stays light (no torch): `specdec plugins` imports it.
"""

from __future__ import annotations

from specdec import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_commands(subparsers):
    from specdec_plugin_bench.cli import add_bench_parser

    add_bench_parser(subparsers)
