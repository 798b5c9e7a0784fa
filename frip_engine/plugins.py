"""Plugin manager: loads entry points of group ``frip_engine`` and collects components.

Built-in plugins are entry points of this very distribution, loaded exactly like a
third party's. Environment switches (datasette/llm style):

- ``FRIP_LOAD_PLUGINS=name,name``: load only these entry points (built-ins included).
- ``FRIP_NO_THIRD_PARTY=1``: load only the entry points shipped with frip-engine.

A plugin that fails to import, or whose registration hook raises, is recorded as broken
and shown by ``frip plugins``; it never takes the engine down with it. Loading is safe
from any thread: the first caller loads, the others wait and then see the whole result.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from frip_engine import hookspecs
from frip_engine.contracts import Requirement, missing_members
from frip_engine.errors import PluginError
from frip_engine.kinds import BY_NAME, KINDS
from frip_engine.param_types import init_chain, wrong_types
from frip_engine.validate import unknown_keys

GROUP = "frip_engine"
OWN_DISTRIBUTION = "frip-engine"


@dataclass
class Component:
    """One registered component: a factory plus what ``frip plugins`` shows about it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    summary: str = ""
    requires: tuple[Requirement, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    plugin: str = ""
    package: str = ""
    version: str = ""

    @property
    def label(self) -> str:
        """Its kind and name, for messages: ``he backend 'tenseal'``."""
        return f"{BY_NAME[self.kind].label} '{self.name}'"

    def missing(self) -> list[Requirement]:
        return [r for r in self.requires if not r.present()]

    @property
    def available(self) -> bool:
        return not self.missing()

    def parameters(self) -> frozenset[str] | None:
        """The keyword parameters the factory accepts, or None if they cannot be known.

        A plugin may declare them (``register(..., parameters=("a", "b"))``); otherwise
        they are read from the factory's signature, following ``**kwargs`` up a class's
        ``__init__`` chain (a subclass passing the rest to its base).
        """
        declared = self.info.get("parameters")
        if declared is not None:
            return frozenset(declared)
        names: set[str] = set()
        for function in init_chain(self.factory):
            if function is object.__init__:
                return frozenset(names)  # the chain ended in object(): nothing more
            try:
                signature = inspect.signature(function)
            except (TypeError, ValueError):
                return None
            kinds = {p.kind for p in signature.parameters.values()}
            names.update(
                name
                for name, p in signature.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name != "self"
            )
            if inspect.Parameter.VAR_KEYWORD not in kinds:
                return frozenset(names)
        return None

    def check_parameters(self, params: dict[str, Any]) -> None:
        """Raise PluginError naming every key the factory does not accept, with the
        accepted ones (and the nearest one to each typo)."""
        accepted = self.parameters()
        if accepted is None:
            return
        unknown = sorted(set(params) - accepted)
        if not unknown:
            return
        given = {"setup"} if self.kind == "executor" else set()  # the engine gives it
        allowed = ", ".join(sorted(accepted - given)) or "none besides plugin"
        raise PluginError(
            f"{self.label} has no parameter "
            f"{unknown_keys(unknown, accepted)}; it accepts: {allowed}"
        )

    def install_hint(self) -> str:
        missing = self.missing()
        if not missing:
            return ""
        return "; ".join(f"pip install {r.install}" for r in missing)

    def check(self, params: dict[str, Any]) -> None:
        """Raise PluginError for an unknown parameter, a value that does not fit the
        factory's annotation or a missing dependency, saying what to change or install
        (what :meth:`create` checks before building)."""
        self.check_parameters(params)
        problems = wrong_types(self.factory, params)
        if problems:
            raise PluginError(f"{self.label}: {'; '.join(problems)}")
        if not self.available:
            names = ", ".join(r.module for r in self.missing())
            raise PluginError(
                f"{self.label} needs {names}, which is not installed; run: {self.install_hint()}"
            )

    def create(self, **params: Any) -> Any:
        """Build the component after :meth:`check`; a factory refusing its arguments'
        number or names is a PluginError too."""
        self.check(params)
        try:
            return self.factory(**params)
        except TypeError as exc:
            raise PluginError(f"{self.label}: bad parameters: {exc}") from exc


@dataclass
class BrokenPlugin:
    """A plugin (entry point) that failed to import or to register, and why."""

    name: str
    package: str
    version: str
    error: str


@dataclass
class IgnoredComponent:
    """A component registered under a name its kind already had: the first one kept
    the name (from plugin ``kept_plugin``), this one (plugin ``plugin`` of distribution
    ``package``) was dropped."""

    kind: str
    name: str
    plugin: str
    package: str
    kept_plugin: str


@dataclass
class Registry:
    """What the loaded plugins offer, by kind and name; ``ignored`` lists the components
    dropped because another plugin had registered their name first."""

    components: dict[str, dict[str, Component]]
    broken: list[BrokenPlugin]
    plugin_packages: dict[str, tuple[str, str]]
    ignored: list[IgnoredComponent] = field(default_factory=list)

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``. Raises PluginError for an unknown name,
        listing the known ones and every plugin that failed to load, with its reason (the
        missing component may be in one of them)."""
        found = self.components[kind].get(name)
        if found is None:
            known = ", ".join(sorted(self.components[kind])) or "none"
            failed = "".join(
                f"; plugin '{b.name}' ({b.package} {b.version}".rstrip()
                + f") failed to load: {b.error}"
                for b in self.broken
            )
            raise PluginError(f"unknown {BY_NAME[kind].label} '{name}' (known: {known}){failed}")
        return found

    def ignored_as(self, kind: str, name: str) -> list[IgnoredComponent]:
        """The components of ``kind`` dropped because ``name`` was already registered."""
        return [i for i in self.ignored if i.kind == kind and i.name == name]

    def of_kind(self, kind: str) -> list[Component]:
        return sorted(self.components[kind].values(), key=lambda c: c.name)


# Everything loaded is published in one step, under _LOCK, once complete: a thread never
# sees a plugin manager whose entry points are still being registered.
_LOCK = threading.RLock()
_state: dict[str, Any] = {}


_loading = threading.local()  # set while this thread imports the plugins' modules
_when_loaded: list[Callable[[pluggy.PluginManager], None]] = []


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with entry points loaded on first use (thread-safe)."""
    with _LOCK:
        if "pm" not in _state:
            pm = pluggy.PluginManager(GROUP)
            pm.add_hookspecs(hookspecs)
            outer, _loading.active = getattr(_loading, "active", False), True
            try:
                packages, broken = _load_entry_points(pm)
            finally:
                _loading.active = outer
            _state.update(pm=pm, packages=packages, broken=broken)
            while _when_loaded:
                _when_loaded.pop(0)(pm)
        pm_: pluggy.PluginManager = _state["pm"]
        return pm_


def when_loaded(callback: Callable[[pluggy.PluginManager], None]) -> None:
    """Call ``callback(plugin_manager())`` once every plugin is loaded: now, or, when a
    plugin's own import is what brought the caller in (a plugin module importing
    ``frip_engine.cli``'s helpers), right after the load in progress completes, so the
    callback never sees a half-loaded set of plugins."""
    with _LOCK:
        if getattr(_loading, "active", False):
            _when_loaded.append(callback)
            return
    callback(plugin_manager())


def _selected(ep: importlib.metadata.EntryPoint) -> bool:
    only = os.environ.get("FRIP_LOAD_PLUGINS", "").strip()
    if only:
        return ep.name in {n.strip() for n in only.split(",") if n.strip()}
    if os.environ.get("FRIP_NO_THIRD_PARTY", "").strip() not in ("", "0"):
        return ep.dist is not None and ep.dist.name == OWN_DISTRIBUTION
    return True


def _load_entry_points(
    pm: pluggy.PluginManager,
) -> tuple[dict[str, tuple[str, str]], list[BrokenPlugin]]:
    packages: dict[str, tuple[str, str]] = {}
    broken: list[BrokenPlugin] = []
    seen: set[str] = set()
    for ep in importlib.metadata.entry_points(group=GROUP):
        if ep.name in seen or not _selected(ep):
            continue
        seen.add(ep.name)
        dist = (ep.dist.name, ep.dist.version) if ep.dist else ("?", "?")
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not stop the engine
            broken.append(BrokenPlugin(ep.name, *dist, f"{type(exc).__name__}: {exc}"))
            continue
        packages[ep.name] = dist
    return packages, broken


def register_plugin(module: Any, name: str, package: str = "(in process)") -> None:
    """Register a plugin object at run time (tests, embedding applications)."""
    with _LOCK:
        plugin_manager().register(module, name=name)
        _state["packages"][name] = (package, "")
        _state.pop("registry", None)


def registry() -> Registry:
    """Collect every component from every loaded plugin (cached until plugins change).

    Thread-safe: the first caller builds the registry while the others wait for it.
    """
    with _LOCK:
        if "registry" not in _state:
            _state["registry"] = _collect(plugin_manager())
        cached: Registry = _state["registry"]
        return cached


def _collect(pm: pluggy.PluginManager) -> Registry:
    packages: dict[str, tuple[str, str]] = _state["packages"]
    broken: list[BrokenPlugin] = list(_state["broken"])
    components: dict[str, dict[str, Component]] = {kind.name: {} for kind in KINDS}
    ignored: list[IgnoredComponent] = []
    for kind in KINDS:
        for impl in getattr(pm.hook, kind.hook).get_hookimpls():
            package, version = packages.get(impl.plugin_name, ("?", "?"))

            def register(
                name: str,
                factory: Callable[..., Any],
                *,
                summary: str = "",
                requires: tuple[Requirement, ...] = (),
                _kind: str = kind.name,
                _plugin: str = impl.plugin_name,
                _package: str = package,
                _version: str = version,
                **info: Any,
            ) -> None:
                if name in components[_kind]:
                    other = components[_kind][name].plugin
                    print(
                        f"frip: {BY_NAME[_kind].label} '{name}' from plugin '{_plugin}' ignored: "
                        f"already registered by '{other}'",
                        file=sys.stderr,
                    )
                    ignored.append(IgnoredComponent(_kind, name, _plugin, _package, other))
                    return
                components[_kind][name] = Component(
                    _kind, name, factory, summary, requires, info, _plugin, _package, _version
                )

            try:
                impl.function(register=register)
            except Exception as exc:  # a failing registration hook marks its plugin broken
                broken.append(
                    BrokenPlugin(impl.plugin_name, package, version, f"{kind.hook}: {exc}")
                )
    return Registry(components, broken, dict(packages), ignored)


def reset() -> None:
    """Forget loaded plugins so the next call re-reads entry points and switches (tests)."""
    with _LOCK:
        _state.clear()


def create(kind: str, name: str, **params: Any) -> Any:
    """Build a component by kind and name, checked against its kind's protocol
    (:mod:`frip_engine.contracts`). Raises PluginError for an unknown name, a parameter or
    dependency problem (:meth:`Component.create`), or a component lacking a member its
    kind requires (naming the plugin, the kind and the members)."""
    component = registry().get(kind, name)
    made = component.create(**params)
    missing = missing_members(made, BY_NAME[kind].protocol)
    if missing:
        raise PluginError(
            f"{component.label} from plugin '{component.plugin}' does not provide what a "
            f"{BY_NAME[kind].label} must ({BY_NAME[kind].protocol.__name__}): it lacks "
            f"{', '.join(missing)}"
        )
    return made
