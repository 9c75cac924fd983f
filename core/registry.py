"""The component registry: what each plugin registered, validated when it registers.

Kept free of torch: listing plugins and validating pipeline files never loads a model.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from specdec.errors import PluginError

KINDS = ("drafter", "verifier", "acceptance")

#: The entry-point group in which a plugin distribution declares the components it provides,
#: one entry ``"<kind>.<name>" = "<its import name>"`` each (never loaded). It lets an unknown
#: name point at the installed distribution whose plugin did not load, without the core knowing
#: any plugin by name.
COMPONENTS_GROUP = "specdec.components"

_LABELS = {"drafter": ("drafter", "drafters"), "verifier": ("verifier", "verifiers"),
           "acceptance": ("acceptance policy", "acceptance policies")}

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Component:
    kind: str  # one of KINDS
    name: str
    params_model: type[BaseModel]
    factory: Callable[..., Any]
    description: str
    plugin: str  # the plugin (entry point or built-in module) that registered it
    lossless: bool | None = None  # acceptance policies only


@dataclass
class BuildContext:
    """What a component factory gets besides its own params.

    :param target: the target model (a loaded `transformers` model).
    :param tokenizer: its tokenizer (None when built from raw models in Python).
    :param load_model: ``load_model(name_or_path) -> (model, tokenizer)`` on the pipeline's
        device and dtype, cached, so several components can share a model.
    :param build_drafter: ``build_drafter(spec, location)`` builds a nested drafter from a
        ``{"type": ..., "params": {...}}`` mapping (for composite drafters).
    :param base_dir: the directory of the pipeline file (None for pipelines built from a dict);
        `resolve_path` resolves relative paths in params against it.
    :param verifier: the pipeline's verifier (set before drafters are built): a layer-skip or
        other self-drafting drafter shares the target's cache through it.
    """

    target: Any
    tokenizer: Any
    device: Any
    dtype: Any
    load_model: Callable[[str], tuple[Any, Any]]
    build_drafter: Callable[[dict, str], Any]
    extras: dict[str, Any] = field(default_factory=dict)
    base_dir: Path | None = None
    verifier: Any = None  # the pipeline's `specdec.Verifier`, built before the drafter (self-drafting shares its cache)

    def resolve_path(self, path: str | Path) -> Path:
        """A path from a params block: absolute as is; relative to the pipeline file's directory
        (like docker-compose), or to the working directory for pipelines built from a dict."""
        path = Path(path).expanduser()
        if path.is_absolute() or self.base_dir is None:
            return path
        return self.base_dir / path


class Registry:
    """All registered components by kind and name, with the plugin each came from."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}

    def register_callback(self, kind: str, plugin: str) -> Callable[..., None]:
        """The ``register`` function handed to one plugin's hook for one kind of component."""

        def register(name: str, params_model: type[BaseModel], factory: Callable[..., Any],
                     description: str = "", lossless: bool | None = None) -> None:
            self._add(Component(kind, name, params_model, factory, description, plugin, lossless))

        return register

    def _add(self, component: Component) -> None:
        kind, name, plugin = component.kind, component.name, component.plugin
        where = f"plugin '{plugin}' registered {kind} '{name}'"
        if not isinstance(name, str) or not _NAME.match(name):
            raise PluginError(f"plugin '{plugin}' registered a {kind} named {name!r}; names must "
                              f"be lowercase letters, digits and underscores, starting with a letter")
        if not (isinstance(component.params_model, type) and issubclass(component.params_model, BaseModel)):
            raise PluginError(f"{where} with params_model {component.params_model!r}, which is not "
                              f"a pydantic BaseModel subclass")
        if not callable(component.factory):
            raise PluginError(f"{where} with a factory that is not callable")
        if kind == "acceptance" and not isinstance(component.lossless, bool):
            raise PluginError(f"{where} without saying whether it is lossless: pass lossless=True "
                              f"or lossless=False")
        existing = self.components[kind].get(name)
        if existing is not None:
            raise PluginError(f"{kind} '{name}' is registered twice: by plugin '{existing.plugin}' "
                              f"and by plugin '{plugin}'; uninstall one of them")
        self.components[kind][name] = component

    def get(self, kind: str, name: str) -> Component:
        """The component, or a `KeyError` whose message lists what is installed and what is close."""
        found = self.components[kind].get(name)
        if found is None:
            raise KeyError(self.unknown_message(kind, name))
        return found

    def unknown_message(self, kind: str, name: str) -> str:
        installed = sorted(self.components[kind])
        label, plural = _LABELS[kind]
        parts = [f"unknown {label} '{name}'"]
        for provider in declared_providers(kind, name):
            parts.append(f"it is provided by the plugin distribution {provider}, which is installed "
                         f"but not loaded: `specdec plugins` shows why (or SPECDEC_LOAD_PLUGINS "
                         f"excludes it)")
        close = difflib.get_close_matches(str(name), installed, n=1, cutoff=0.6)
        if close:
            parts.append(f"did you mean '{close[0]}'?")
        parts.append(f"installed {plural}: {', '.join(installed) if installed else 'none'}")
        return "; ".join(parts)


def declared_providers(kind: str, name: str) -> list[str]:
    """Installed distributions that declare the component in `COMPONENTS_GROUP`."""
    return sorted({entry_point.dist.name
                   for entry_point in importlib.metadata.entry_points(group=COMPONENTS_GROUP)
                   if entry_point.name == f"{kind}.{name}" and entry_point.dist is not None})
