"""Which component a conformance suite checks: the one its vendor declares, or it fails
saying why (a name registered twice, a component from another module, a package not
installed or a plugin that failed to load), never another plugin's component."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest

from frip_engine import plugins, testing
from frip_engine.hookspecs import hookimpl
from frip_engine.testing import AdapterConformance, HEBackendConformance, KeyStoreConformance


class _SecondMemory:
    """A vendor's plugin registering a key store under the built-in's name."""

    @hookimpl
    def register_key_stores(self, register: Any) -> None:
        register("memory", dict)


class _FailsToRegister:
    @hookimpl
    def register_adapters(self, register: Any) -> None:
        raise SyntaxError("invalid syntax (frip_x.py, line 3)")


class _Memory(KeyStoreConformance):
    plugin_name = "memory"


def test_a_name_registered_twice_fails_the_suite(fresh_plugins: None) -> None:
    plugins.register_plugin(_SecondMemory(), "frip-memory", package="frip-memory")
    with pytest.raises(pytest.fail.Exception, match=r"registered twice.*frip-memory"):
        _Memory().make()


def test_a_component_from_another_module_fails_the_suite(fresh_plugins: None) -> None:
    class Declared(_Memory):
        plugin_module: ClassVar[str] = "frip_memory"

    with pytest.raises(
        pytest.fail.Exception, match=r"comes from frip_plugins\.key_stores\.memory.*not frip_memory"
    ):
        Declared().make()


def test_the_declared_module_and_its_submodules_are_accepted(fresh_plugins: None) -> None:
    class Declared(_Memory):
        plugin_module: ClassVar[str] = "frip_plugins.key_stores"

    assert Declared().make().name == "memory"


def test_an_uninstalled_or_broken_plugin_says_so(fresh_plugins: None) -> None:
    plugins.register_plugin(_FailsToRegister(), "x", package="frip-x")

    class Missing(AdapterConformance):
        plugin_name = "x"

    with pytest.raises(pytest.fail.Exception) as failed:
        Missing().make()
    message = str(failed.value)
    assert "unknown adapter 'x'" in message
    assert "is its package installed (pip install -e .)?" in message
    assert "plugin 'x' (frip-x" in message and "invalid syntax (frip_x.py, line 3)" in message


def test_an_encrypting_backend_without_weak_or_other_params_fails(fresh_plugins: None) -> None:
    tenseal = plugins.registry().get("he_backend", "tenseal")
    if not tenseal.available:
        pytest.skip(f"{tenseal.label} is unavailable: {tenseal.install_hint()}")

    class Unset(HEBackendConformance):
        plugin_name = "tenseal"

    suite = Unset()
    with pytest.raises(pytest.fail.Exception, match=r"set weak_params to parameters under 128"):
        suite.test_parameters_under_128_bit_security_are_refused()
    keyed: Any = SimpleNamespace(backend=SimpleNamespace(encrypted=True, name="tenseal"))
    with pytest.raises(pytest.fail.Exception, match=r"set other_params to a second parameter"):
        suite.test_a_block_from_another_parameter_set_is_refused(keyed, np.zeros((1, 1)))


def test_every_check_of_the_suites_says_what_failed() -> None:
    """Every assert carries a message and no bare pytest.raises ("DID NOT RAISE") is used:
    a vendor reads what broke, not ``assert False``."""
    bare = []
    for path in sorted(Path(testing.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assert) and node.msg is None:
                bare.append(f"{path.name}:{node.lineno} assert")
            if isinstance(node, ast.Attribute) and node.attr == "raises":
                bare.append(f"{path.name}:{node.lineno} pytest.raises")
    assert not bare, bare
