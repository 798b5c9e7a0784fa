"""``frip plugins new KIND NAME``: a package for every kind whose class has every member
of the kind's protocol; scaffolds install and run their conformance tests, which fail on
the TODOs (not on imports); bad kinds, names and existing folders are refused."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from frip_engine.cli.scaffold import _class_name, scaffold
from frip_engine.contracts import missing_members
from frip_engine.errors import InputError
from frip_engine.kinds import KINDS
from frip_engine.testing import SUITES


def _frip(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``frip ARGUMENTS`` in a subprocess (stdout a pipe, not a terminal)."""
    command = [sys.executable, "-m", "frip_engine", *arguments]
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd)


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
    if kind == "he_backend":  # False would skip the suite's secrecy checks
        assert component.encrypted is True
    assert hasattr(module, kind_row.hook)
    tests = (folder / "tests" / f"test_{module_name}_conformance.py").read_text()
    assert SUITES[kind].__name__ in tests and f'plugin_name = "{name}"' in tests
    assert f'plugin_module = "{module_name}"' in tests  # another plugin's name fails the suite
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
    # every member left to do is named: methods raise, attributes hold a TODO value
    for owner in ("AcmeXAdapter.encode", "VaultXKeyStore.bind"):
        assert f"NotImplementedError: TODO: {owner}" in output, output
    assert "AcmeXAdapter.vendor = 'TODO'" in output, output
    assert "ImportError" not in output and "error during collection" not in output, output
    assert "unknown" not in output, output  # no PluginError: both components were found


@pytest.mark.parametrize(("kind", "name"), [("key-store", "memory"), ("he_backend", "tenseal")])
def test_a_name_already_registered_for_the_kind_is_refused(
    kind: str, name: str, tmp_path: Path
) -> None:
    run = _frip("plugins", "new", kind, name, "--dir", str(tmp_path / "pkg"))
    label = kind.replace("_", "-")
    assert run.returncode == 2, run.stderr
    assert f"{label} '{name}' is already registered by plugin" in run.stderr, run.stderr
    assert "frip-engine" in run.stderr and not (tmp_path / "pkg").exists()


def test_a_folder_that_cannot_be_created_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    for target in ("/proc/frip-x", "/sys/frip-x", str(tmp_path / "afile" / "sub")):
        run = _frip("plugins", "new", "adapter", "acme-x", "--dir", target)
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith(f"error: cannot create {target}: "), run.stderr
        assert "Traceback" not in run.stderr


def test_kinds_are_spelled_with_hyphens_and_accepted_both_ways(tmp_path: Path) -> None:
    listed = "extractor, he-backend, protection, clusterer, key-store, gallery-store, adapter"
    assert listed in " ".join(_frip("plugins", "new", "--help").stdout.replace("│", " ").split())
    refused = _frip("plugins", "new", "widget", "acme", "--dir", str(tmp_path / "w"))
    assert refused.returncode == 2 and listed in refused.stderr, refused.stderr
    for spelling in ("gallery-store", "gallery_store"):
        assert _frip("plugins", "new", spelling, "acme-x", cwd=tmp_path).returncode == 0
        shutil.rmtree(tmp_path / "frip-acme-x")


def test_the_next_commands_are_printed_whole_on_their_own_lines(tmp_path: Path) -> None:
    target = tmp_path / ("a-long-folder-name-" * 6) / "frip-acme-x"
    run = _frip("plugins", "new", "adapter", "acme-x", "--dir", str(target))
    assert run.returncode == 0, run.stderr
    lines = [line.strip() for line in run.stdout.splitlines()]
    assert f"pip install -e {target}" in lines and f"pytest {target}" in lines, run.stdout


def test_scaffolds_are_clean_under_ruff_defaults(tmp_path: Path) -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).is_file():
        pytest.skip("ruff is not installed")
    for kind in KINDS:
        scaffold(kind.name, f"demo-{kind.name.replace('_', '-')}", tmp_path / kind.name)
    checks = [
        [ruff, "check", "--isolated", "--select", "E4,E7,E9,F,I", "."],
        [ruff, "format", "--isolated", "--check", "--diff", "."],
    ]
    for check in checks:
        run = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stdout + run.stderr


def test_the_extractor_readme_says_where_faces_come_from(tmp_path: Path) -> None:
    readme = (scaffold("extractor", "acme-face", tmp_path / "pkg") / "README.md").read_text()
    assert "--frip-faces DIR" in readme and "FRIP_TEST_FACES" in readme
