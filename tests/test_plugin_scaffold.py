"""``frip plugins new KIND NAME``: a package for every kind whose class has every member
of the kind's protocol; scaffolds install and run their conformance tests, which fail on
the TODOs (not on imports); bad kinds, names and existing folders are refused."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from frip_engine.cli.scaffold import _class_name, scaffold
from frip_engine.contracts import missing_members
from frip_engine.errors import InputError
from frip_engine.kinds import KINDS
from frip_engine.testing import SUITES


def _env(*first: Path) -> dict[str, str]:
    path = os.pathsep.join([*map(str, first), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.parametrize("kind", [k.name for k in KINDS])
def test_every_kind_scaffolds_a_module_with_the_whole_protocol(kind: str, tmp_path: Path) -> None:
    name = f"demo-{kind.replace('_', '-')}"
    folder = scaffold(kind, name, tmp_path / "pkg")
    module_name = f"frip_{name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, folder / module_name / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kind_row = next(k for k in KINDS if k.name == kind)
    component = getattr(module, _class_name(name, kind_row))()
    assert missing_members(component, kind_row.protocol) == []
    assert component.name == name
    assert hasattr(module, kind_row.hook)
    tests = (folder / "tests" / f"test_{module_name}_conformance.py").read_text()
    assert SUITES[kind].__name__ in tests and f'plugin_name = "{name}"' in tests
    pyproject = (folder / "pyproject.toml").read_text()
    assert f'[project.entry-points.frip_engine]\n{name} = "{module_name}"' in pyproject


@pytest.mark.parametrize(
    ("kind", "name", "message"),
    [
        ("widget", "acme", "unknown plugin kind 'widget'"),
        ("adapter", "Acme", "lower-case"),
        ("adapter", "acme--x", "single hyphens"),
        ("adapter", "a", "2-40"),
        ("adapter", "1acme", "starting with a letter"),
    ],
)
def test_bad_kinds_and_names_are_refused(
    kind: str, name: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=message):
        scaffold(kind, name, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


def test_the_cli_scaffolds_and_refuses_an_existing_folder(tmp_path: Path) -> None:
    target = tmp_path / "frip-acme-hsm"
    command = [sys.executable, "-m", "frip_engine", "plugins", "new", "key-store", "acme-hsm"]
    first = subprocess.run(
        [*command, "--dir", str(target)], capture_output=True, text=True, check=False
    )
    assert first.returncode == 0, first.stderr
    assert (target / "frip_acme_hsm" / "__init__.py").is_file()
    again = subprocess.run(
        [*command, "--dir", str(target)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 2 and "exists" in again.stderr


def test_scaffolds_install_and_their_tests_fail_on_the_todos(tmp_path: Path) -> None:
    packages = [
        scaffold("adapter", "acme-x", tmp_path / "frip-acme-x"),
        scaffold("key_store", "vault-x", tmp_path / "frip-vault-x"),
    ]
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    pip += ["--no-build-isolation", "--target", str(target), *map(str, packages)]
    subprocess.run(pip, check=True, capture_output=True)
    run = subprocess.run(  # the registry finds both through their entry points
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + [str(p / "tests") for p in packages],
        cwd=tmp_path,
        env=_env(target),
        capture_output=True,
        text=True,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    for owner in ("AcmeXAdapter.vendor", "VaultXKeyStore.bind"):
        assert f"NotImplementedError: TODO: {owner}" in output, output
    assert "ImportError" not in output and "error during collection" not in output, output
    assert "unknown" not in output, output  # no PluginError: both components were found
