"""Plugin discovery: built-in plugins plus the `specdec` entry-point group, failures isolated.

A plugin that cannot be imported, implements a hook that does not exist (or with an argument the
hook does not have), or raises while registering is recorded as a `PluginFailure` (which plugin,
what went wrong) and skipped; the other plugins still load. `SPECDEC_LOAD_PLUGINS` restricts
which entry points load: a comma-separated list of entry-point names, or an empty string for none
(built-ins always load).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from typing import Iterable

import pluggy

from specdec import hookspecs
from specdec.registry import KINDS, Registry

#: Built-in components register through the same hooks as third-party plugins.
DEFAULT_PLUGINS = ("specdec.drafters", "specdec.verifiers", "specdec.builtin_policies")

_HOOKS = {"drafter": "register_drafters", "verifier": "register_verifiers",
          "acceptance": "register_acceptance_policies"}
assert set(_HOOKS) == set(KINDS)


@dataclass(frozen=True)
class PluginInfo:
    name: str  # entry-point name, or the module name of a built-in
    distribution: str  # the installed distribution that provides it
    version: str
    builtin: bool


@dataclass(frozen=True)
class PluginFailure:
    name: str
    distribution: str
    stage: str  # "import", "hooks" or "registration"
    error: str

    def __str__(self) -> str:
        return f"plugin '{self.name}' ({self.distribution}) failed during {self.stage}: {self.error}"


@dataclass
class PluginSet:
    """The loaded plugins, the registry they filled, and the plugins that failed."""

    manager: pluggy.PluginManager
    registry: Registry
    plugins: list[PluginInfo] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)
    #: ``(plugin name, pipeline sections)`` offered through the `default_pipeline` hook, in
    #: loading order (built-ins first, then entry points).
    default_pipelines: list[tuple[str, dict]] = field(default_factory=list)


def load_plugins(extra_plugins: Iterable[tuple[str, object]] = (),
                 entry_points: bool = True) -> PluginSet:
    """Build a fresh plugin manager and registry.

    :param extra_plugins: ``(name, module_or_object)`` pairs registered after the built-ins, as
        if installed (tests use this for throwaway plugins).
    :param entry_points: load installed plugins from the ``specdec`` entry-point group.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    loaded = PluginSet(manager, Registry())
    from specdec import __version__

    for module_name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
        loaded.plugins.append(PluginInfo(module_name, "specdec", __version__, builtin=True))

    candidates: list[tuple[str, str, str, object]] = []  # name, distribution, version, loader
    if entry_points:
        allowed = _allowed_entry_points()
        for entry_point in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            if allowed is not None and entry_point.name not in allowed:
                continue
            dist = entry_point.dist
            candidates.append((entry_point.name, dist.name if dist else "?",
                               dist.version if dist else "?", entry_point))
    candidates.extend((name, "<in-process>", "", plugin) for name, plugin in extra_plugins)

    for name, distribution, version, source in candidates:
        if manager.has_plugin(name):
            loaded.failures.append(PluginFailure(
                name, distribution, "import",
                f"another plugin is already registered under the name '{name}'"))
            continue
        try:
            plugin = source.load() if isinstance(source, importlib.metadata.EntryPoint) else source
        except Exception as error:  # noqa: BLE001 - a broken plugin must not take others down
            loaded.failures.append(PluginFailure(name, distribution, "import", _describe(error)))
            continue
        problem = _unknown_hooks(plugin)
        if problem:
            loaded.failures.append(PluginFailure(name, distribution, "hooks", problem))
            continue
        try:
            manager.register(plugin, name=name)
        except Exception as error:  # noqa: BLE001 - e.g. pluggy's PluginValidationError
            if manager.is_registered(plugin):
                manager.unregister(plugin)
            loaded.failures.append(PluginFailure(name, distribution, "hooks", _describe(error)))
            continue
        loaded.plugins.append(PluginInfo(name, distribution, version, builtin=False))

    distributions = {info.name: info.distribution for info in loaded.plugins}
    for kind, hook_name in _HOOKS.items():
        hook = getattr(manager.hook, hook_name)
        for implementation in hook.get_hookimpls():  # registration order: built-ins first
            plugin_name = implementation.plugin_name
            try:
                call_hook(implementation, register=loaded.registry.register_callback(kind, plugin_name))
            except Exception as error:  # noqa: BLE001 - isolate the failing plugin
                loaded.failures.append(PluginFailure(
                    plugin_name, distributions.get(plugin_name, "?"), "registration", _describe(error)))
    for implementation in manager.hook.default_pipeline.get_hookimpls():
        plugin_name = implementation.plugin_name
        try:
            offer = call_hook(implementation)
            if offer is not None and not isinstance(offer, dict):
                raise TypeError(f"default_pipeline returned {type(offer).__name__}, not a dict or None")
        except Exception as error:  # noqa: BLE001 - isolate the failing plugin
            loaded.failures.append(PluginFailure(
                plugin_name, distributions.get(plugin_name, "?"), "registration", _describe(error)))
            continue
        if offer is not None:
            loaded.default_pipelines.append((plugin_name, offer))
    return loaded


def call_hook(implementation: pluggy.HookImpl, **arguments):
    """Call one hook implementation with only the arguments it declares, as pluggy itself does.

    Calling ``implementation.function(**arguments)`` would break every existing plugin the day a
    hook gains a keyword argument, and any plugin that takes fewer arguments than the hook offers.
    """
    return implementation.function(*(arguments[name] for name in implementation.argnames))


@functools.lru_cache(maxsize=1)
def default_plugins() -> PluginSet:
    """The process-wide plugin set (built once, on first use)."""
    return load_plugins()


def _allowed_entry_points() -> set[str] | None:
    value = os.environ.get("SPECDEC_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _unknown_hooks(plugin: object) -> str | None:
    """Name hook implementations that match no specdec hook (a misspelt hook silently never runs)."""
    known = [name for name in dir(hookspecs)
             if hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT}_spec")]
    marker = f"{hookspecs.PROJECT}_impl"
    unknown = [name for name in dir(plugin)
               if hasattr(getattr(plugin, name, None), marker) and name not in known]
    if not unknown:
        return None
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return f"implements unknown hook {', '.join(parts)}; specdec hooks are {', '.join(known)}"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
