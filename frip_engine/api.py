"""``open_engine``: open an engine by name, or create it on first use.

    import frip_engine
    with frip_engine.open_engine("doors", create=True, extractor="arcface") as engine:
        ...

Engines live in ``$FRIP_HOME/engines/<name>/`` (``home`` overrides ``$FRIP_HOME``). The
file key store (the default) reads its passphrase from ``$FRIP_PASSPHRASE``, or prompts on
a terminal; it is never an argument, so it stays out of code, shell history and logs.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from frip_engine import plugins
from frip_engine.engine import PROFILE_FILE, Engine
from frip_engine.errors import EngineExistsError, InputError, ProfileError
from frip_engine.kinds import SECTIONS
from frip_engine.param_types import init_chain
from frip_engine.profile import Profile, check_name, engine_dir, read_profile_file
from frip_engine.validate import check_threshold
from frip_engine.writelock import write_lock

# A section's choice: a plugin name, or a table of the plugin and its parameters.
Section = str | Mapping[str, Any]


def open_engine(
    name: str,
    create: bool = False,
    home: Path | str | None = None,
    *,
    profile: Path | str | Mapping[str, Any] | None = None,
    extractor: Section | None = None,
    he: Section | None = None,
    protection: Section | None = None,
    clusterer: Section | None = None,
    key_store: Section | None = None,
    gallery_store: Section | None = None,
    threshold: float | None = None,
    workers: int | None = None,
) -> Engine:
    """The engine ``name``, open; close it (or use it in a ``with`` block) when done.

    With ``create=True`` an engine that does not exist yet is created: the profile is
    ``profile`` (a TOML file or its tables, as ``frip engine create --profile``), with
    each section given here replacing that section's plugin or parameters, e.g.
    ``extractor="sface"`` or ``he={"plugin": "tenseal", "preset": "compact"}``; sections
    not given take the embedded defaults. ``threshold`` (cosine, in [-1, 1]) and
    ``workers`` (scoring processes) go into ``[engine]``. An engine that exists is opened
    as it is, and everything asked for must match its profile, so running the same call
    twice opens the engine the first run created.

    Raises NotFoundError (no such engine, and ``create`` is false), ProfileError (the
    engine exists with a different profile than asked: the message names each
    difference; or the profile is invalid), InputError (an invalid engine name) and
    KeyStoreError (creating with the file key store and no passphrase).
    """
    check_name(name)
    if home is not None and not isinstance(home, str | Path):
        raise InputError(f"home is a folder's path (str or Path), not {type(home).__name__}")
    home = Path(home) if home is not None else None
    asked = requested_profile(
        name,
        profile,
        {
            "extractor": extractor,
            "he": he,
            "protection": protection,
            "clusterer": clusterer,
            "key_store": key_store,
            "gallery_store": gallery_store,
        },
        threshold=threshold,
        workers=workers,
    )
    wanted = Profile.from_dict(asked, f"open_engine({name!r})")  # checked before any use
    if create and not (engine_dir(name, home) / PROFILE_FILE).is_file():
        try:
            return Engine.create(wanted, home)
        except EngineExistsError:
            _await_creation(name, home)  # another process made it or is making it: open it
    engine = Engine.open(name, home)
    try:
        check_same_profile(engine.profile, wanted, asked)
    except BaseException:
        engine.close()
        raise
    return engine


def _await_creation(name: str, home: Path | None) -> None:
    """Wait while another process creates engine ``name`` (it holds the engine's write lock
    until the engine is whole). Raises ProfileError when the folder holds no engine once
    the lock is free: a creation that was interrupted (its folder is left for its owner
    to remove) or that failed and was removed."""
    directory = engine_dir(name, home)
    if directory.is_dir() and not (directory / PROFILE_FILE).is_file():
        with write_lock(directory, name):
            pass
    if (directory / PROFILE_FILE).is_file():
        return
    if directory.exists():
        raise ProfileError(
            f"{directory} holds no engine: its creation was interrupted; remove that folder "
            "and create the engine again"
        )
    raise ProfileError(f"another process creating engine '{name}' failed; create it again")


def requested_profile(
    name: str,
    profile: Path | str | Mapping[str, Any] | None,
    sections: Mapping[str, Section | None],
    threshold: float | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """The tables of a new engine's profile: ``profile`` (a TOML file or its tables; its
    engine id is dropped, a new engine gets a new one), each of ``sections`` given (a
    plugin name, or a table whose keys replace the profile's) and the ``[engine]`` name,
    threshold and workers. Raises MissingFileError or ProfileError for a bad file or
    table (or a profile or section of another type), InputError for a threshold outside
    [-1, 1]."""
    if threshold is not None:
        threshold = check_threshold(threshold)
    if isinstance(profile, str):
        profile = Path(profile)
    if profile is not None and not isinstance(profile, Path | Mapping):
        raise ProfileError(
            "profile is a TOML file's path (str or Path) or a table of its sections, "
            f"not {type(profile).__name__}"
        )
    for section, choice in sections.items():
        if choice is not None and not isinstance(choice, str | Mapping):
            raise ProfileError(
                f"[{section}] is a plugin name or a table of the plugin and its parameters, "
                f"not {type(choice).__name__}"
            )
    source = str(profile) if isinstance(profile, Path) else "profile"
    tables = read_profile_file(profile) if isinstance(profile, Path) else dict(profile or {})
    data = {key: dict(body) if isinstance(body, Mapping) else body for key, body in tables.items()}
    given = {section: choice for section, choice in sections.items() if choice is not None}
    for key in ("engine", *given):
        if not isinstance(data.setdefault(key, {}), dict):
            raise ProfileError(f"{source}: [{key}] must be a table")
    data["engine"].pop("id", None)  # a new engine gets a new id
    data["engine"]["name"] = name
    if threshold is not None:
        data["engine"]["threshold"] = threshold
    if workers is not None:
        data["engine"]["workers"] = workers
    for section, choice in given.items():
        data[section].update({"plugin": choice} if isinstance(choice, str) else choice)
    return data


_UNSET = object()  # a parameter neither the profile nor the factory gives a value


def _effective(profile: Profile, section: str, key: str) -> object:
    """The value ``key`` of ``section`` has in an engine with ``profile``: the profile's,
    else the plugin's default (its factory's keyword default), else _UNSET."""
    if key == "plugin":
        return profile.plugin(section)
    if key in profile.sections.get(section, {}):
        return profile.sections[section][key]
    try:
        component = plugins.registry().get(SECTIONS[section].name, profile.plugin(section))
    except ProfileError:
        return _UNSET
    for function in init_chain(component.factory):
        try:
            parameter = inspect.signature(function).parameters.get(key)
        except (TypeError, ValueError):
            return _UNSET
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return _UNSET


def check_same_profile(have: Profile, wanted: Profile, asked: Mapping[str, Any]) -> None:
    """Raise ProfileError naming every value ``asked`` for (tables of a profile, as
    checked into ``wanted``) that the existing engine's profile ``have`` differs in."""
    differences = []
    for key in asked.get("engine", {}):
        if key != "name" and getattr(have, key) != getattr(wanted, key):
            differences.append(
                f"[engine] {key} is {getattr(have, key)!r}, not {getattr(wanted, key)!r}"
            )
    for section, body in asked.items():
        if section == "engine":
            continue
        for key in body:
            mine, theirs = _effective(have, section, key), wanted.sections[section][key]
            if mine != theirs:
                shown = "not set (the plugin's default)" if mine is _UNSET else repr(mine)
                differences.append(f"[{section}] {key} is {shown}, not {theirs!r}")
    if differences:
        raise ProfileError(
            f"engine '{have.name}' exists with a different profile than asked: "
            + "; ".join(differences)
            + f". Open it as it is (open_engine({have.name!r})), or create the engine you "
            "asked for under another name"
        )
