"""What every conformance suite shares: which plugin it checks and how it is built."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pytest

from frip_engine import plugins
from frip_engine.errors import PluginError


@contextmanager
def refused(error: type[BaseException], what: str) -> Iterator[None]:
    """``pytest.raises(error)`` that says what failed: ``{what} did not raise {error}``
    when the block raises nothing (another exception propagates as it is)."""
    try:
        yield
    except error:
        return
    pytest.fail(f"{what} did not raise {error.__name__}")


def _within(module: str, package: str) -> bool:
    """Whether ``module`` is ``package`` or one of its submodules."""
    return module == package or module.startswith(package + ".")


class Conformance:
    """Base of the suites. A subclass names the component to check.

    - ``plugin_name``: the component's registered name (``register("acme-v1", ...)``),
      built through the plugin registry exactly as the engine builds it, so the package
      must be installed (its ``frip_engine`` entry point found);
    - ``plugin_module``: the vendor's module (``frip_acme``): the suite fails when the
      component under ``plugin_name`` comes from elsewhere (another plugin has the name);
    - ``params``: the factory's keyword arguments (what a profile section would hold);
    - or override :meth:`make` to build the component directly (no registry).

    :meth:`make` also fails when ``plugin_name`` is registered twice (the registry keeps
    the first and ignores the others: the suite could be checking another vendor's code).
    """

    kind: ClassVar[str] = ""
    plugin_name: ClassVar[str] = ""
    plugin_module: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}

    def component(self) -> plugins.Component:
        """The registry's entry for ``plugin_name``, checked to be the vendor's own:
        fails (pytest.fail) for an unknown name (is the package installed? which plugins
        failed to load, and why), a name registered twice, or a component from another
        module than ``plugin_module``."""
        label = self.kind.replace("_", "-")
        if not self.plugin_name:
            pytest.fail(
                f"{type(self).__name__}: set plugin_name to the registered name of the "
                f"{label} to check, or override make()"
            )
        registry = plugins.registry()
        try:
            component = registry.get(self.kind, self.plugin_name)
        except PluginError as exc:
            pytest.fail(f"{exc}; is its package installed (pip install -e .)?")
        ignored = registry.ignored_as(self.kind, self.plugin_name)
        if ignored:
            others = ", ".join(f"plugin '{i.plugin}' ({i.package})" for i in ignored)
            pytest.fail(
                f"{component.label} is registered twice: kept from plugin "
                f"'{component.plugin}' ({component.package}), ignored from {others}; the "
                "suite would check the kept one: give yours a name no other plugin uses"
            )
        source = getattr(component.factory, "__module__", None) or "?"
        if self.plugin_module and not _within(source, self.plugin_module):
            pytest.fail(
                f"{component.label} comes from {source} (plugin '{component.plugin}', "
                f"{component.package}), not {self.plugin_module}: another plugin has this "
                "name, or plugin_module is wrong"
            )
        return component

    def make(self, **overrides: Any) -> Any:
        """A fresh component built from ``params`` updated with ``overrides``, through
        the registry (:meth:`component` checks it is the vendor's)."""
        component = self.component()
        return plugins.create(self.kind, component.name, **{**self.params, **overrides})

    def test_no_member_is_left_todo(self) -> None:
        """No attribute of the component's class still holds a scaffold's TODO string
        (``frip plugins new`` writes ``vendor: str = "TODO"``)."""
        factory = self.component().factory if self.plugin_name else None
        owner = factory if isinstance(factory, type) else type(self.make())
        left = [
            f"{owner.__name__}.{name} = {value!r}"
            for cls in inspect.getmro(owner)
            if cls is not object
            for name, value in vars(cls).items()
            if not name.startswith("__") and isinstance(value, str) and value.startswith("TODO")
        ]
        assert not left, f"members still holding a TODO value: {', '.join(left)}"
