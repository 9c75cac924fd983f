"""specdec-plugin-serve: `specdec serve`, an OpenAI-compatible HTTP server on specdec's step
scheduler, added to the CLI through the `register_commands` hook (this module).

Modules, light to heavy:

- `protocol`: the request models (pydantic), the error body, the response and chunk shapes;
- `metrics`: the Prometheus collectors, named as vLLM's;
- `engine`: the driver thread that runs the scheduler for the event loop's requests;
- `app`: the FastAPI application (`create_app(pipeline)`);
- `cli`: the `serve` subcommand (argparse only);
- `server`: the listening socket and the uvicorn server that exits cleanly on SIGINT/SIGTERM;
- `loadtest`: replays Spec-Bench questions against a running server (`python -m
  specdec_plugin_serve.loadtest --help`).

See docs/serving.md. This module stays light (no torch, no FastAPI): `specdec plugins` imports it.
"""

from __future__ import annotations

from specdec import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_commands(subparsers):
    from specdec_plugin_serve.cli import add_serve_parser

    add_serve_parser(subparsers)
