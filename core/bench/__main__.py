"""`python -m specdec.bench ...`: the `specdec bench` command without going through the plugin list."""

from __future__ import annotations

import sys

from specdec.cli import main


def run(argv: list[str] | None = None) -> int:
    from specdec.bench import plugin
    from specdec.plugins import default_plugins

    plugins = default_plugins()
    if not plugins.manager.is_registered(plugin) and not plugins.manager.has_plugin("specdec.bench.plugin"):
        plugins.manager.register(plugin, name="specdec.bench.plugin")
    return main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(run())
