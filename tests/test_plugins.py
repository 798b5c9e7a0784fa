"""Plugin discovery, switches, availability and fault isolation."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from typing import Any

import pytest

from frip_engine import hookspecs, plugins
from frip_engine.errors import PluginError
from frip_engine.hookspecs import hookimpl
from frip_engine.kinds import KINDS, SECTIONS
from frip_engine.plugins import Requirement
from frip_engine.profile import Components

BUILT_INS = {
    ("extractor", "arcface"),
    ("he_backend", "tenseal"),
    ("he_backend", "plaintext"),
    ("protection", "none"),
    ("clusterer", "single"),
    ("key_store", "file"),
    ("key_store", "memory"),
    ("gallery_store", "sqlite"),
}


def _names(registry: plugins.Registry) -> set[tuple[str, str]]:
    return {(c.kind, c.name) for kind in KINDS for c in registry.of_kind(kind.name)}


def test_built_ins_come_through_entry_points_of_frip_engine(fresh_plugins: None) -> None:
    registry = plugins.registry()
    assert _names(registry) >= BUILT_INS
    for kind, name in BUILT_INS:
        component = registry.get(kind, name)
        assert component.package == "frip-engine"
        assert component.version
        assert component.available, component.install_hint()


def test_one_table_of_kinds_names_hooks_sections_defaults_and_fields(
    fresh_plugins: None,
) -> None:
    registry = plugins.registry()
    assert all(hasattr(hookspecs, kind.hook) for kind in KINDS)
    assert len({kind.name for kind in KINDS}) == len(KINDS)
    # the profile's sections as they are on disk ([he] included); every default is a built-in
    assert list(SECTIONS) == [
        "extractor",
        "he",
        "protection",
        "clusterer",
        "key_store",
        "gallery_store",
        "executor",
    ]
    for kind in SECTIONS.values():
        assert registry.get(kind.name, str(kind.default)).package == "frip-engine"
    # the executor is built by the engine once its keys are known, not with the others
    assert [f.name for f in dataclasses.fields(Components)] == [
        kind.name for kind in SECTIONS.values() if kind.name != "executor"
    ]


def test_vendor_adapter_is_discovered_from_its_own_distribution(fresh_plugins: None) -> None:
    adapter = plugins.registry().get("adapter", "acme-v1")
    assert adapter.package == "frip-adapter-acme"
    assert adapter.plugin == "acme"


def test_no_third_party_switch_keeps_only_built_ins(
    fresh_plugins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRIP_NO_THIRD_PARTY", "1")
    names = _names(plugins.registry())
    assert names >= BUILT_INS
    assert ("adapter", "acme-v1") not in names


def test_load_only_named_plugins(fresh_plugins: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRIP_LOAD_PLUGINS", "tenseal,acme")
    assert _names(plugins.registry()) == {("he_backend", "tenseal"), ("adapter", "acme-v1")}


class _NeedsMissing:
    @hookimpl
    def register_extractors(self, register: Any) -> None:
        register(
            "needs-missing",
            object,
            summary="test",
            requires=(Requirement("frip_no_such_module_xyz", "frip-no-such-package"),),
        )


class _Broken:
    @hookimpl
    def register_clusterers(self, register: Any) -> None:
        raise RuntimeError("this plugin is broken on purpose")


def test_missing_dependency_is_listed_with_hint_and_refused_cleanly(fresh_plugins: None) -> None:
    plugins.register_plugin(_NeedsMissing(), "needs-missing")
    component = plugins.registry().get("extractor", "needs-missing")
    assert not component.available
    assert component.install_hint() == "pip install frip-no-such-package"
    with pytest.raises(PluginError, match="pip install frip-no-such-package"):
        component.create()


def test_broken_plugin_is_reported_not_fatal(fresh_plugins: None) -> None:
    plugins.register_plugin(_Broken(), "broken-one")
    registry = plugins.registry()
    assert any(b.name == "broken-one" and "on purpose" in b.error for b in registry.broken)
    assert _names(registry) >= BUILT_INS


def test_unknown_plugin_names_the_known_ones(fresh_plugins: None) -> None:
    with pytest.raises(PluginError, match=r"unknown he backend 'seal9'.*tenseal"):
        plugins.create("he_backend", "seal9")


class _HalfKeyStore:
    """A vendor's key store written against an old contract: most members are missing."""

    name = "half"

    def bind(self, engine_dir: str) -> None:
        pass

    def init(self, engine_id: str) -> None:
        pass


class _HalfAdapter:
    name = "half-v0"

    def decode(self, payload: bytes) -> Any:
        raise NotImplementedError


class _IncompleteVendor:
    @hookimpl
    def register_key_stores(self, register: Any) -> None:
        register("half", _HalfKeyStore)

    @hookimpl
    def register_adapters(self, register: Any) -> None:
        register("half-v0", _HalfAdapter)


def test_an_incomplete_plugin_fails_at_profile_load_naming_what_it_lacks(
    fresh_plugins: None, home: Any
) -> None:
    from frip_engine.engine import Engine, list_engines
    from frip_engine.profile import Profile, build

    plugins.register_plugin(_IncompleteVendor(), "incomplete-vendor")
    profile = Profile.from_dict({"engine": {"name": "half"}, "key_store": {"plugin": "half"}})
    lacks = (
        r"\[key_store\] key store 'half' from plugin 'incomplete-vendor' does not provide what "
        r"a key store must \(KeyStore\): it lacks delete_secret, describe, load_secret, "
        r"rotate_kek, status, store_secret$"
    )
    with pytest.raises(PluginError, match=lacks):
        build(profile)
    with pytest.raises(PluginError, match=lacks):
        Engine.create(profile, home)
    assert list_engines(home) == []  # refused before any key or folder was made
    with pytest.raises(
        PluginError,
        match=r"adapter 'half-v0' from plugin 'incomplete-vendor' .*\(Adapter\): "
        r"it lacks encode, vendor$",
    ):
        plugins.create("adapter", "half-v0")


def test_frip_plugins_command_lists_everything_and_the_adapter() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "frip_engine", "plugins", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    listed = json.loads(result.stdout)
    names = {(c["kind"], c["name"]) for c in listed["components"]}
    assert BUILT_INS | {("adapter", "acme-v1")} <= names
    acme = next(c for c in listed["components"] if c["name"] == "acme-v1")
    assert acme["package"] == "frip-adapter-acme" and acme["available"]


def test_core_import_pulls_in_no_heavy_dependency() -> None:
    code = (
        "import sys, frip_engine.cli, frip_engine.engine, frip_engine.plugins;"
        "heavy = [m for m in ('tenseal', 'onnxruntime', 'cv2', 'insightface', 'matplotlib')"
        " if m in sys.modules]; print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


class _Listener:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    @hookimpl
    def frip_enrolled(self, engine: str, subject_id: str, block_id: int, slot: int) -> None:
        self.events.append(("enrolled", subject_id))

    @hookimpl
    def frip_identified(self, engine: str, decision: Any) -> None:
        self.events.append(("identified", str(decision.subject_id)))

    @hookimpl
    def frip_removed(self, engine: str, subject_id: str) -> None:
        self.events.append(("removed", subject_id))


def test_event_hooks_fire_after_each_committed_change(
    fresh_plugins: None, make_engine: Any
) -> None:
    import numpy as np

    from frip_engine.engine import EnrolItem

    listener = _Listener()
    plugins.register_plugin(listener, "listener")
    engine = make_engine("events")
    vector = np.ones(512)
    engine.enrol(EnrolItem("alice", embeddings=[vector]))
    engine.identify(embedding=vector)
    engine.remove("alice")
    failed = engine.enrol_many([EnrolItem("bob", embeddings=[np.zeros(512)])])
    assert failed.failed and listener.events == [
        ("enrolled", "alice"),
        ("identified", "alice"),
        ("removed", "alice"),
    ]


class _FailingListener:
    @hookimpl
    def frip_enrolled(self, engine: str, subject_id: str, block_id: int, slot: int) -> None:
        raise RuntimeError("audit sink is down")


def test_a_failing_event_listener_does_not_lose_enrolments(
    fresh_plugins: None, make_engine: Any
) -> None:
    import numpy as np

    from frip_engine.engine import EnrolItem

    plugins.register_plugin(_FailingListener(), "failing-listener")
    engine = make_engine("listener")
    rng = np.random.default_rng(3)
    items = [EnrolItem(f"s{i}", embeddings=[rng.standard_normal(512)]) for i in range(4)]
    report = engine.enrol_many(items)
    assert report.enrolled == ["s0", "s1", "s2", "s3"] and not report.failed


class _Commands:
    @hookimpl
    def register_commands(self, cli: Any) -> None:
        @cli.command("hello-frip")
        def hello() -> None:
            print("hello from a plugin command")


def test_plugins_can_add_cli_commands(fresh_plugins: None) -> None:
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()

    @app.command("noop")
    def noop() -> None:
        """A second command so typer keeps subcommand names."""

    plugins.register_plugin(_Commands(), "commands")
    plugins.plugin_manager().hook.register_commands(cli=app)
    result = CliRunner().invoke(app, ["hello-frip"])
    assert result.exit_code == 0 and "hello from a plugin command" in result.output


def test_plugin_commands_are_mounted_whichever_loads_first() -> None:
    """A plugin module that imports the CLI's helpers (frip_eval does) while the plugin
    manager loads it must still get its commands mounted: loading plugins before the CLI
    is imported (as a test or an embedding application does) used to leave `frip eval`
    out of the app."""
    script = (
        "from frip_engine import plugins\n"
        "plugins.plugin_manager()\n"
        "import typer.main\n"
        "from frip_engine.cli import app\n"
        "print(sorted(typer.main.get_command(app).commands))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "'eval'" in result.stdout and "'bench'" in result.stdout, result.stdout
