"""``frip plugins new KIND NAME``: a new plugin package, ready to install and test.

The package holds a pyproject with the ``frip_engine`` entry point, a module whose class
has every member of the kind's protocol (:mod:`frip_engine.contracts`, read at run time,
so a scaffold always matches this engine) as a TODO (a method raising
NotImplementedError, an attribute holding a placeholder), a test file running the kind's
conformance suite (:mod:`frip_engine.testing`) against the vendor's own module, and a
README. Every file is clean under ruff's default settings.
Mounted by ``frip_engine.cli`` with ``add_scaffold_command``.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path
from typing import Annotated, Any

import typer

from frip_engine import plugins
from frip_engine.cli.output import out
from frip_engine.contracts import protocol_members
from frip_engine.errors import DestinationError, InputError
from frip_engine.kinds import BY_NAME, KINDS, Kind

NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
WIDTH = 88  # ruff's default line length: a scaffold is clean under ruff's defaults
# the TODO value of a property member, by its annotation: a plain class attribute, so
# the suite reaches (and names) every member left to do; strings say TODO, which the
# conformance suites refuse
TODO_VALUES = {"str": '"TODO"', "int": "0", "float": "0.0", "bool": "False"}
# members whose TODO value is not their type's: an HE backend encrypts (False would skip
# the suite's secrecy checks)
TODO_MEMBER_VALUES = {"encrypted": "True"}
# kinds as the command spells them (key-store); key_store is accepted too
KIND_NAMES = ", ".join(k.name.replace("_", "-") for k in KINDS)
# standard-library names a generated module may use in annotations -> their import
STDLIB = {
    "Sequence": "from collections.abc import Sequence",
    "AbstractContextManager": "from contextlib import AbstractContextManager",
    "Future": "from concurrent.futures import Future",
    "Any": "from typing import Any",
}
CONTRACT_NAMES = (
    "BlockInfo",
    "Decryptor",
    "Extraction",
    "Matcher",
    "ModelFile",
    "NewSubject",
    "ShardStatus",
    "SubjectRecord",
)


def add_scaffold_command(plugins_app: typer.Typer) -> None:
    """Mount ``frip plugins new`` on the ``frip plugins`` group."""
    plugins_app.command("new")(new_command)


def new_command(
    kind: Annotated[str, typer.Argument(help=f"One of: {KIND_NAMES}.")],
    name: Annotated[str, typer.Argument(help="The component's name, e.g. acme-hsm.")],
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where to create it (default: ./frip-NAME).")
    ] = None,
) -> None:
    """Scaffold an installable plugin package: entry point, protocol stubs, conformance tests."""
    target = scaffold(kind, name, directory or Path(f"frip-{name}"))
    out.print(f"created {target}; next, install it and run its tests:", soft_wrap=True)
    for command in (f"pip install -e {target}", f"pytest {target}"):
        out.print(f"  {command}", soft_wrap=True)  # whole, however narrow the output


def _kind(kind: str) -> Kind:
    found = BY_NAME.get(kind.replace("-", "_"))
    if found is None:
        raise InputError(f"unknown plugin kind {kind!r}; one of: {KIND_NAMES}")
    return found


def scaffold(kind: str, name: str, directory: Path) -> Path:
    """Write the package for component ``name`` of ``kind`` into ``directory`` (which must
    not exist) and return it. Raises InputError for an unknown kind, a name that is not
    lower-case letters, digits and single hyphens (2-40 characters), a name a plugin
    already registered for the kind (the conformance suite would check that plugin's
    component) or an existing path; DestinationError (an InputError) when the folder
    cannot be created or written."""
    chosen = _kind(kind)
    if not (2 <= len(name) <= 40 and NAME.fullmatch(name)):
        raise InputError(
            f"plugin name {name!r}: use 2-40 lower-case letters, digits and single hyphens, "
            "starting with a letter (e.g. acme-hsm)"
        )
    taken = plugins.registry().components[chosen.name].get(name)
    if taken is not None:
        raise InputError(
            f"{chosen.name.replace('_', '-')} '{name}' is already registered by plugin "
            f"'{taken.plugin}' ({taken.package}); choose another name"
        )
    if directory.exists() or directory.is_symlink():
        raise InputError(f"{directory} exists; choose a new --dir")
    module = f"frip_{name.replace('-', '_')}"
    files = {
        "pyproject.toml": _pyproject(chosen, name, module),
        "README.md": _readme(chosen, name, module),
        f"{module}/__init__.py": _module(chosen, name),
        f"tests/test_{module}_conformance.py": _tests(chosen, name, module),
    }
    try:
        for relative, text in files.items():
            path = directory / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    except OSError as exc:
        raise DestinationError(f"cannot create {directory}: {exc.strerror or exc}") from exc
    return directory


def _class_name(name: str, kind: Kind) -> str:
    return "".join(part.title() for part in name.split("-")) + kind.protocol.__name__


def _pyproject(kind: Kind, name: str, module: str) -> str:
    return f'''[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "frip-{name}"
version = "0.1.0"
description = "frip-engine {kind.label} '{name}'"
requires-python = ">=3.11"
dependencies = ["frip-engine", "numpy"]

# What connects this package to frip-engine: an entry point in its group.
[project.entry-points.frip_engine]
{name} = "{module}"

[tool.setuptools]
packages = ["{module}"]
'''


# what a kind's README adds: where its suite's inputs come from
README_EXTRAS = {
    "extractor": """
The suite's real face comes from `pytest --frip-faces DIR` (or `$FRIP_TEST_FACES`): a
folder in the lfw-dev layout, `<person>/<image>.jpg`. Without either it uses lfw-dev
beside the project when present, else the public-domain face bundled with frip-engine.
""",
}


def _readme(kind: Kind, name: str, module: str) -> str:
    return f"""# frip-{name}

A frip-engine {kind.label}: `{name}`, in `{module}/__init__.py`.

```sh
pip install -e .    # frip-engine finds it through the frip_engine entry point
frip plugins        # lists {kind.label} {name}
pytest              # frip-engine's {kind.label} conformance suite
```

Every method marked TODO raises NotImplementedError and every attribute marked TODO
holds a placeholder until it is implemented; the tests fail, naming them, until then.
docs/plugins.md in frip-engine describes the protocol, the hooks and the checks.
{README_EXTRAS.get(kind.name, "")}"""


# what a kind's test file must set besides the plugin's name, as TODO values the suite
# refuses until they are filled
SUITE_SETTINGS = {
    "he_backend": (
        "    # TODO: parameters under 128-bit security, which make() or security_check() must\n"
        '    # refuse with SecurityError, e.g. {"poly_modulus_degree": 1024}\n'
        "    weak_params: ClassVar[dict[str, Any] | None] = None\n"
        "    # TODO: a second valid parameter set: a block made under one must be refused\n"
        '    # under the other, e.g. {"preset": "compact"}\n'
        "    other_params: ClassVar[dict[str, Any] | None] = None\n"
    ),
}


def _tests(kind: Kind, name: str, module: str) -> str:
    suite = f"{kind.protocol.__name__}Conformance"  # frip_engine.testing.SUITES
    settings = SUITE_SETTINGS.get(kind.name, "")
    imports = "from typing import Any, ClassVar\n\n" if settings else ""
    return f'''"""frip-engine's {kind.label} conformance suite against {name}."""

{imports}from frip_engine.testing import {suite}


class Test{_class_name(name, kind)}({suite}):
    plugin_name = "{name}"  # as registered in {module}
    # the suite fails if {name} comes from another plugin
    plugin_module = "{module}"
{settings}'''


def _member(protocol: type, member: str, owner: str) -> str:
    """One member of ``protocol`` as a stub: a property as a class attribute holding a TODO
    value (:data:`TODO_VALUES`), a method raising NotImplementedError. Lines fit
    :data:`WIDTH` once indented in the class."""
    value: Any = inspect.getattr_static(protocol, member)
    doc = inspect.getdoc(value.fget if isinstance(value, property) else value) or ""
    if isinstance(value, property):
        returns = value.fget.__annotations__.get("return", "Any") if value.fget else "Any"
        words = f"TODO: {doc}" if doc else f"TODO: {owner}.{member}"
        comment = "\n".join(f"# {line}" for line in textwrap.wrap(words, WIDTH - 6))
        todo_value = TODO_MEMBER_VALUES.get(member) or TODO_VALUES.get(returns, "None")
        return f"{comment}\n{member}: {returns} = {todo_value}"
    todo = f'raise NotImplementedError("TODO: {owner}.{member}")'
    if len(todo) + 8 > WIDTH:  # as ruff format splits it
        todo = f'raise NotImplementedError(\n    "TODO: {owner}.{member}"\n)'
    signature = inspect.signature(value)
    parameters = []
    for parameter in signature.parameters.values():
        text = parameter.name
        if parameter.annotation is not inspect.Parameter.empty:
            text += f": {parameter.annotation}"
        if parameter.default is not inspect.Parameter.empty:
            text += f" = {parameter.default!r}"
        parameters.append(text)
    returns = signature.return_annotation
    header = f"def {member}({', '.join(parameters)}) -> {returns}:"
    if len(header) + 4 > WIDTH:  # one parameter a line, as ruff format keeps it
        listed = "".join(f"\n    {text}," for text in parameters)
        header = f"def {member}({listed}\n) -> {returns}:"
    body = (f'"""{doc}"""\n' if doc else "") + todo
    return header + "\n" + textwrap.indent(body, "    ")


def _import(module: str, names: list[str]) -> str:
    """``from module import names`` as ruff writes it: on one line when it fits
    :data:`WIDTH`, else one name a line."""
    line = f"from {module} import {', '.join(names)}"
    if len(line) <= WIDTH:
        return line
    return f"from {module} import (\n" + "".join(f"    {n},\n" for n in names) + ")"


def _module(kind: Kind, name: str) -> str:
    owner = _class_name(name, kind)
    protocol = kind.protocol
    members = [m for m in protocol_members(protocol) if m != "name"]
    stubs = "\n\n".join(
        textwrap.indent(_member(protocol, m, owner), "    ")
        for m in members
        if not hasattr(type(protocol), m)
    )
    body = f'''class {owner}:
    """TODO: what this {kind.label} does (protocol: frip_engine.contracts.{protocol.__name__})."""

    name = "{name}"

{stubs}


@hookimpl
def {kind.hook}(register: Register[{protocol.__name__}]) -> None:
    register(
        "{name}",
        {owner},
        summary="TODO: one line for frip plugins",
    )
'''
    used = set(re.findall(r"[A-Za-z_]+", body))
    stdlib = sorted(line for word, line in STDLIB.items() if word in used)
    contracts = sorted({protocol.__name__, "Register", *(n for n in CONTRACT_NAMES if n in used)})
    third_party = [
        *(["import numpy as np"] if "np" in used else []),
        _import("frip_engine.contracts", contracts),
        *(["from frip_engine.errors import FripError"] if "FripError" in used else []),
        "from frip_engine.hookspecs import hookimpl",
        *(["from frip_engine.parallel import EncryptJob"] if "EncryptJob" in used else []),
        *(["from frip_engine.pemiu import PemiuTemplate"] if "PemiuTemplate" in used else []),
    ]
    header = "\n".join(stdlib) + ("\n\n" if stdlib else "") + "\n".join(third_party)
    return f'''"""frip-engine {kind.label} '{name}'. Each TODO method raises NotImplementedError
and each TODO attribute holds a placeholder until it is implemented; `pytest` runs
frip-engine's conformance suite against it."""

from __future__ import annotations

{header}


{body}'''
