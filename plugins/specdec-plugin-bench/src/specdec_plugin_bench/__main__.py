"""`python -m specdec_plugin_bench ...`: the `specdec bench` command without going through the plugin list."""

from __future__ import annotations

import sys

from specdec import main


def run(argv: list[str] | None = None) -> int:
    import specdec_plugin_bench
    from specdec import default_plugins

    plugins = default_plugins()  # SPECDEC_LOAD_PLUGINS may have left the entry point out
    if not plugins.manager.is_registered(specdec_plugin_bench) and \
            not plugins.manager.has_plugin("specdec_plugin_bench"):
        plugins.manager.register(specdec_plugin_bench, name="specdec_plugin_bench")
    return main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    from specdec import exit_rank

    exit_rank(run())
