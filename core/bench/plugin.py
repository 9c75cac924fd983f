"""The plugin that adds `specdec bench` to the CLI through the `register_commands` hook."""

from __future__ import annotations

from specdec.hookspecs import hookimpl


@hookimpl
def register_commands(subparsers):
    from specdec.bench.cli import add_bench_parser

    add_bench_parser(subparsers)
