"""What every conformance suite shares: which plugin it checks and how it is built."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from frip_engine import plugins


class Conformance:
    """Base of the suites. A subclass names the component to check.

    - ``plugin_name``: the component's registered name (``register("acme-v1", ...)``),
      built through the plugin registry exactly as the engine builds it, so the package
      must be installed (its ``frip_engine`` entry point found);
    - ``params``: the factory's keyword arguments (what a profile section would hold);
    - or override :meth:`make` to build the component directly (no registry).
    """

    kind: ClassVar[str] = ""
    plugin_name: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}

    def make(self, **overrides: Any) -> Any:
        """A fresh component built from ``params`` updated with ``overrides``."""
        if not self.plugin_name:
            pytest.fail(
                f"{type(self).__name__}: set plugin_name to the registered name of the "
                f"{self.kind.replace('_', ' ')} to check, or override make()"
            )
        return plugins.create(self.kind, self.plugin_name, **{**self.params, **overrides})
