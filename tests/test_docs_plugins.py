"""docs/plugins.md runs as written: every fenced block in order, in an empty folder with a
throw-away virtual environment that sees this one's packages (so its `pip install -e`
installs there, not here). ``file=PATH`` blocks are written, ``sh`` blocks run by bash,
``python`` blocks by the environment's Python. It also names every hook and every
protocol member, and the README links it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

from frip_engine import hookspecs
from frip_engine.contracts import protocol_members
from frip_engine.kinds import KINDS
from frip_engine.testing import AdapterConformance

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _blocks() -> list[tuple[str, str, str]]:
    """(language, file path or "", body) of every fenced block, in order."""
    found = []
    for language, info, body in FENCE.findall(DOC.read_text()):
        match = re.search(r"file=(\S+)", info)
        found.append((language, match.group(1) if match else "", body))
    return found


def _environment(folder: Path) -> dict[str, str]:
    """A venv whose site-packages adds this interpreter's (a .pth line), with `frip`."""
    venv = folder / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    parent = sysconfig.get_paths()["purelib"]
    (site / "_frip_parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    frip = venv / "bin" / "frip"
    frip.write_text(f"#!{venv}/bin/python\nfrom frip_engine.cli import main\n\nmain()\n")
    frip.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "FRIP_HOME": str(folder / "home"),
    }


def test_every_code_block_runs(tmp_path: Path) -> None:
    blocks = _blocks()
    assert len(blocks) >= 10
    environment = _environment(tmp_path)
    for number, (language, path, body) in enumerate(blocks, 1):
        if path:
            target = tmp_path / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body)
            continue
        assert language in ("sh", "python"), f"block {number}: {language} without file="
        command = ["bash", "-euo", "pipefail", "-c", body] if language == "sh" else ["python"]
        run = subprocess.run(
            command,
            input=body if language == "python" else None,
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, f"block {number} failed:\n{body}\n{run.stdout}\n{run.stderr}"


def test_every_hook_and_protocol_member_is_documented() -> None:
    text = DOC.read_text()
    hooks = [name for name in vars(hookspecs) if name.startswith(("register_", "frip_"))]
    assert len(hooks) >= 11  # every hook of hookspecs.py, whoever adds one
    missing = [name for name in hooks if f"`{name}(" not in text]
    for kind in KINDS:
        section = text.split(f"**{kind.protocol.__name__}**", 1)[1].split("\n\n", 1)[0]
        missing += [
            f"{kind.protocol.__name__}.{member}"
            for member in protocol_members(kind.protocol)
            if f"`{member}" not in section
        ]
    assert not missing, missing


def test_the_readme_links_the_plugin_guide() -> None:
    assert "(docs/plugins.md)" in (ROOT / "README.md").read_text()


def test_the_tutorial_key_store_declares_what_it_imports() -> None:
    (pyproject,) = [body for _, path, body in _blocks() if path == "frip-zeta-vault/pyproject.toml"]
    dependencies = re.search(r"^dependencies = \[(.*)\]$", pyproject, re.MULTILINE)
    assert dependencies is not None and '"cryptography' in dependencies.group(1), pyproject


def test_a_profile_chooses_the_kinds_engine_create_has_no_flag_for() -> None:
    text = DOC.read_text()
    profiles = [body for language, _, body in _blocks() if language == "toml"]
    for section in ("[protection]", "[clusterer]", "[gallery_store]"):
        assert any(section in body for body in profiles), section
    assert "--profile" in text and "(../README.md#engine-profiles)" in text


def test_the_adapter_integrity_requirement_is_stated() -> None:
    text = " ".join(DOC.read_text().split())
    docstring = " ".join((AdapterConformance.__doc__ or "").split())
    for where in (text, docstring):
        assert "integrity data (a checksum or a MAC)" in where
        assert "never enrol a wrong face" in where
    assert "the engine normalises" in text


def test_kinds_are_spelled_as_the_command_spells_them() -> None:
    text = DOC.read_text()
    for kind in KINDS:
        if "_" in kind.name:
            assert f"| {kind.name} |" not in text and f"| {kind.name.replace('_', '-')} |" in text
