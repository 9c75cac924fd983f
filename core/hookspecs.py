"""The hooks through which plugins (built-in ones included) add components and commands to specdec.

A plugin is a module with functions decorated by `specdec.hookimpl`, exposed under the
entry-point group `specdec`. Every hook is called once when the registry is built (the first
time a pipeline is built or the CLI starts), never inside the decoding loop. Hooks gain only
keyword arguments over time, so a plugin written today keeps working.
"""

from __future__ import annotations

import pluggy

PROJECT = "specdec"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_drafters(register):
    """Add drafters.

    Call ``register(name, params_model, factory, description="...")`` once per drafter:

    - ``name``: the ``drafter.type`` users write in YAML (lowercase, ``[a-z0-9_]``);
    - ``params_model``: a pydantic model of the ``drafter.params`` block (use
      ``extra="forbid"`` so typos are caught); keep it importable without torch;
    - ``factory(context, params)``: builds the drafter from a `specdec.registry.BuildContext`
      (target model, tokenizer, device, dtype, model loader) and the validated params. Import
      heavy modules inside the factory, not at module level.
    """


@hookspec
def register_verifiers(register):
    """Add verifiers: ``register(name, params_model, factory, description="...")``.

    The factory receives a `specdec.registry.BuildContext` and the validated params and
    returns an object implementing `specdec.Verifier`.
    """


@hookspec
def register_acceptance_policies(register):
    """Add acceptance policies: ``register(name, params_model, factory, description="...", lossless=...)``.

    ``lossless`` is required: True only when the policy's output is distributed exactly as
    plain sampling from the target. Lossy policies are flagged in ``specdec plugins`` and when a
    pipeline is built.
    """


@hookspec
def register_commands(subparsers):
    """Add ``specdec`` subcommands to the CLI's ``argparse`` subparsers.

    Call ``subparsers.add_parser(name, help=...)`` and set a handler with
    ``parser.set_defaults(handler=function)``; the handler receives the parsed ``argparse``
    namespace and returns an exit code.
    """


@hookspec
def default_pipeline():
    """Offer the pipeline that ``specdec generate`` runs when no ``--pipeline`` file is given.

    Return a mapping of pipeline-file sections (as in YAML), e.g.
    ``{"name": "pld", "drafter": {"type": "prompt_lookup"}}``, or None to offer nothing. It is
    merged section by section over the core default: the embedded default model, no drafter
    (plain decoding), ``rejection`` acceptance, greedy, 256 new tokens. Called once when the
    plugins load; when several installed plugins offer one, the first loaded wins and
    ``specdec generate`` says which it used.
    """
