"""`specdec bench`: a Spec-Bench-style benchmark of pipelines against AR and Hugging Face baselines.

Modules, light to heavy:

- `questions`: question files, tasks, per-task selection, multi-turn chat messages;
- `metrics`: the arithmetic (speedup, mean accepted tokens, acceptance, mismatches), pure functions;
- `png`, `plots`: a dependency-free PNG canvas with a bitmap font, and the two charts;
- `report`: report.md, results.json and the plots, from whatever records exist;
- `methods`: specdec pipelines and `model.generate()` baselines behind one `generate` call;
- `runner`: the interleaved, resumable measurement loop;
- `cli`, `plugin`: the `bench` subcommand, added through the `register_commands` hook.

Run it as `specdec bench ...` (or `python -m specdec.bench ...`); see docs/bench.md.
"""
