"""`specdec serve`: the command line of the server.

    specdec serve pipeline.yaml --port 8000 --max-batch 16
    specdec serve                       # the default pipeline on the embedded default model
    torchrun --nproc-per-node 2 -m specdec.cli serve pipeline.yaml --tp-size 2   # rank 0 answers HTTP

Everything a user can get wrong (the pipeline file, the flags, a port in use) is checked before
the model loads. SIGINT or SIGTERM stops accepting connections, lets the requests in flight
finish for up to --shutdown-timeout seconds, cancels the rest and exits with status 0.

This module stays light (argparse only); the handler imports torch, FastAPI and uvicorn.
"""

from __future__ import annotations

import argparse

from specdec import ConfigError, is_follower_rank

DESCRIPTION = """\
Serve a pipeline over HTTP with OpenAI's API: POST /v1/completions and /v1/chat/completions
(streaming or not), GET /v1/models, /health and /metrics (Prometheus). Requests from all clients
are decoded together by the step scheduler (continuous batching); each request may turn
speculation off or tune the drafter's params with a `speculation` object. See docs/serving.md.
"""


#: Default of --max-model-len (prompt + completion tokens of one request) when the model attends
#: over more: the cache holds max-batch times this many positions, allocated at start.
DEFAULT_MAX_MODEL_LEN = 4096


def resolve_max_model_len(pipeline, requested: int | None) -> int:
    """The --max-model-len a server of `pipeline` runs with: `requested`, checked against the
    model's positions, or by default the model's positions up to DEFAULT_MAX_MODEL_LEN."""
    positions = pipeline.verifier.max_positions
    if requested is not None and requested > positions:
        raise ConfigError(f"--max-model-len {requested}: the model attends over at most {positions} "
                          f"positions; pass at most {positions}")
    return requested or min(positions, DEFAULT_MAX_MODEL_LEN)


def prepare(pipeline, num_sequences: int, max_model_len: int) -> None:
    """Build `num_sequences` drafters and allocate the cache for `num_sequences` requests of
    `max_model_len` tokens now (on CUDA also capture every CUDA graph), so that no request pays
    for them: growing the cache later copies every slot while the whole batch waits."""
    try:
        pipeline.scheduler.prepare(num_sequences, max_model_len)
    except RuntimeError as error:  # torch's "can't allocate memory" / CUDA out of memory
        if "memory" not in str(error).lower():
            raise
        raise ConfigError(f"the KV cache for {num_sequences} requests of {max_model_len} tokens does not fit in "
                          f"memory ({str(error).splitlines()[0]}); lower --max-batch or --max-model-len") from None


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `serve` subcommand to the `specdec` CLI's subparsers."""
    parser = subparsers.add_parser("serve", help="serve a pipeline with an OpenAI-compatible HTTP API",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", nargs="?", metavar="PIPELINE.yaml",
                        help="pipeline file (default: the default pipeline on the embedded model)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the server to the network)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--max-batch", type=int, metavar="N",
                        help="most requests decoded together (default: the pipeline's scheduler.max_batch_size); "
                             "more wait for a slot")
    parser.add_argument("--max-model-len", type=int, metavar="TOKENS",
                        help="most tokens of one request, prompt and completion together (default: the model's "
                             f"positions, at most {DEFAULT_MAX_MODEL_LEN}); the KV cache for --max-batch such "
                             "requests is allocated at start")
    parser.add_argument("--model-name", metavar="NAME",
                        help="the model name clients send (default: the pipeline's name or file stem)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="on SIGINT/SIGTERM, how long requests in flight may still run before they are "
                             "cancelled (default 30)")
    parser.add_argument("--tp-size", type=int, metavar="N",
                        help="shard the target over N ranks: launch with torchrun --nproc-per-node N "
                             "(docs/scaling.md); rank 0 answers HTTP, the others follow its steps")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--access-log", action="store_true", help="log every HTTP request")
    parser.set_defaults(handler=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    from specdec import Pipeline, default_plugins, validated_pipeline, with_tp_size
    from specdec_plugin_serve.server import bind, serve

    if args.max_batch is not None and args.max_batch < 1:
        raise ConfigError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_model_len is not None and args.max_model_len < 2:
        raise ConfigError(f"--max-model-len must be >= 2 tokens, got {args.max_model_len}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    if args.shutdown_timeout < 0:
        raise ConfigError(f"--shutdown-timeout must be >= 0 seconds, got {args.shutdown_timeout}")
    if args.model_name is not None and not args.model_name.strip():
        raise ConfigError("--model-name must not be empty")
    plugins = default_plugins()
    validated = with_tp_size(validated_pipeline(args.pipeline, plugins), args.tp_size)
    sharded = validated.spec.target.tp_size > 1
    follower = sharded and is_follower_rank()
    # before the model loads: a port in use fails in a second (rank 0 alone listens)
    listener = None if follower else bind(args.host, args.port)
    pipeline = Pipeline(validated, plugins)
    if args.max_batch is not None:
        pipeline.scheduler.max_batch_size = args.max_batch
    max_model_len = resolve_max_model_len(pipeline, args.max_model_len)
    prepare(pipeline, pipeline.scheduler.max_batch_size, max_model_len)
    control = None
    if sharded:
        from specdec_plugin_serve.tensor_parallel import Control, follow

        control = Control(pipeline.tp)
        if follower:
            return follow(pipeline, control)
    return serve(pipeline, listener, model_name=args.model_name, shutdown_timeout=args.shutdown_timeout,
                 log_level=args.log_level, access_log=args.access_log, control=control, max_model_len=max_model_len)
