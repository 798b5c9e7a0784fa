"""Engine profiles: one TOML file per engine naming one plugin of each kind.

    [engine]
    name = "office-doors"
    [extractor]
    plugin = "arcface"
    [he]
    plugin = "tenseal"
    preset = "fast"
    ...

Every key besides ``plugin`` is passed to the plugin's factory; a key the factory does
not accept is refused with the keys it does. ``build`` instantiates the components and
checks that they fit together and that one block fits the store and the machine, so a
bad profile fails on load (before any key is made) with a message that names the section
and the fix.
"""

from __future__ import annotations

import os
import re
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frip_engine import plugins
from frip_engine.contracts import (
    Clusterer,
    Extractor,
    GalleryStore,
    HEBackend,
    KeyStore,
    Protection,
)
from frip_engine.errors import InputError, MissingFileError, ProfileError
from frip_engine.kinds import SECTIONS
from frip_engine.validate import check_threshold, unknown_keys

ENGINE_KEYS = {"name", "id", "description", "threshold", "insecure", "dimension", "workers"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _whole(value: object) -> bool:
    """An integer that is not a bool (TOML's true is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def engines_home() -> Path:
    """Where engines live: $FRIP_HOME, else $XDG_DATA_HOME/frip, else ~/.local/share/frip."""
    if os.environ.get("FRIP_HOME"):
        return Path(os.environ["FRIP_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "frip"


def engine_dir(name: str, home: Path | str | None = None) -> Path:
    check_name(name)
    return (Path(home) if home else engines_home()) / "engines" / name


def check_name(name: str) -> None:
    """Raise InputError unless ``name`` is a valid engine name (it names a folder)."""
    if not isinstance(name, str):
        raise InputError(
            f"engine name is a str (1-64 letters, digits, '.', '_' or '-'), "
            f"not {type(name).__name__}"
        )
    if not NAME_PATTERN.fullmatch(name):
        raise InputError(
            f"engine name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-'"
        )


@dataclass
class Profile:
    name: str
    engine_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    description: str = ""
    threshold: float | None = None
    insecure: bool = False
    dimension: int | None = None
    workers: int = 1  # the old spelling of [executor] plugin = "processes", workers = N
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def plugin(self, section: str) -> str:
        return str(self.sections.get(section, {}).get("plugin", SECTIONS[section].default))

    def params(self, section: str) -> dict[str, Any]:
        return {k: v for k, v in self.sections.get(section, {}).items() if k != "plugin"}

    def executor(self) -> tuple[str, dict[str, Any]]:
        """The executor plugin and its parameters: ``[engine] workers = N`` (N > 1, the old
        spelling) means ``processes`` with N workers, else the ``[executor]`` section."""
        if self.workers > 1:
            return "processes", {"workers": self.workers}
        return self.plugin("executor"), self.params("executor")

    @classmethod
    def from_toml(cls, text: str, source: str = "profile") -> Profile:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{source}: not valid TOML: {exc}") from exc
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "profile") -> Profile:
        unknown = set(data) - set(SECTIONS) - {"engine"}
        if unknown:
            raise ProfileError(
                f"{source}: unknown section(s) {sorted(unknown)}; "
                f"known: engine, {', '.join(SECTIONS)}"
            )
        engine = data.get("engine", {})
        if not isinstance(engine, dict):
            raise ProfileError(f"{source}: [engine] must be a table")
        engine = dict(engine)
        bad = sorted(set(engine) - ENGINE_KEYS)
        if bad:
            raise ProfileError(
                f"{source}: unknown key {unknown_keys(bad, ENGINE_KEYS)} in [engine]; it "
                f"accepts: {', '.join(sorted(ENGINE_KEYS))}"
            )
        if "name" not in engine:
            raise ProfileError(f"{source}: [engine] needs a name")
        try:
            check_name(str(engine["name"]))
        except InputError as exc:
            raise ProfileError(f"{source}: [engine] {exc}") from exc
        sections: dict[str, dict[str, Any]] = {}
        for section, kind in SECTIONS.items():
            body = data.get(section, {})
            if not isinstance(body, dict):
                raise ProfileError(f"{source}: [{section}] must be a table")
            sections[section] = {"plugin": kind.default, **body}
            if not isinstance(sections[section]["plugin"], str):
                raise ProfileError(f"{source}: [{section}] plugin must be a name (text)")
        threshold = engine.get("threshold")
        if threshold is not None:
            try:
                threshold = check_threshold(threshold)
            except InputError as exc:
                raise ProfileError(f"{source}: [engine] {exc}") from exc
        workers = engine.get("workers", 1)
        if not _whole(workers) or not 1 <= workers <= 64:
            raise ProfileError(f"{source}: [engine] workers must be an integer from 1 to 64")
        if workers > 1 and "executor" in data:
            raise ProfileError(
                f"{source}: [engine] workers = {workers} is the old spelling of [executor] "
                f'plugin = "processes", workers = {workers}; keep the [executor] section only'
            )
        dimension = engine.get("dimension")
        if dimension is not None and (not _whole(dimension) or dimension < 1):
            raise ProfileError(f"{source}: [engine] dimension must be a positive integer")
        insecure = engine.get("insecure", False)
        if not isinstance(insecure, bool):
            raise ProfileError(
                f"{source}: [engine] insecure must be true or false, not {insecure!r}"
            )
        for key in ("id", "description"):
            if not isinstance(engine.get(key, ""), str):
                raise ProfileError(f"{source}: [engine] {key} must be text")
        return cls(
            workers=workers,
            name=str(engine["name"]),
            engine_id=engine.get("id") or uuid.uuid4().hex,
            description=engine.get("description", ""),
            threshold=threshold,
            insecure=insecure,
            dimension=dimension,
            sections=sections,
        )

    def to_toml(self) -> str:
        import tomli_w

        engine: dict[str, Any] = {"name": self.name, "id": self.engine_id}
        if self.description:
            engine["description"] = self.description
        if self.threshold is not None:
            engine["threshold"] = self.threshold
        if self.insecure:
            engine["insecure"] = True
        if self.dimension is not None:
            engine["dimension"] = self.dimension
        if self.workers != 1:
            engine["workers"] = self.workers
        sections = dict(self.sections)
        if sections.get("executor") == {"plugin": SECTIONS["executor"].default}:
            del sections["executor"]  # the default (and [engine] workers may choose it)
        return tomli_w.dumps({"engine": engine, **sections})


def save_profile(profile: Profile, path: Path) -> None:
    """Write atomically: a reader sees the old profile or the new one, never half."""
    from frip_engine.private import write_private

    staging = path.with_suffix(".toml.tmp")
    write_private(staging, profile.to_toml())  # 0600: it names the engine's key store
    staging.replace(path)


def read_profile_file(path: Path) -> dict[str, Any]:
    """The tables of a TOML profile file. Raises MissingFileError if there is no such file,
    ProfileError if it is not UTF-8 TOML (a binary file, a syntax error)."""
    if path.is_dir():
        raise ProfileError(f"{path} is a folder, not a TOML profile file")
    if not path.is_file():
        raise MissingFileError(f"profile {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(
            f"{path}: not a TOML profile: not UTF-8 text (byte {exc.start}); a binary file?"
        ) from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None


def load_profile(path: Path) -> Profile:
    return Profile.from_dict(read_profile_file(path), source=str(path))


@dataclass
class Components:
    """The live plugin instances of one engine, checked to fit together: one field per
    kind a profile chooses, named after the kind (:data:`frip_engine.kinds.SECTIONS`),
    but the executor, which the engine builds once its keys are known (``build`` checks
    its section)."""

    extractor: Extractor
    he_backend: HEBackend
    protection: Protection
    clusterer: Clusterer
    key_store: KeyStore
    gallery_store: GalleryStore

    @property
    def dimension(self) -> int:
        return int(self.protection.output_dimension(self.extractor.dimension))

    @property
    def pemiu_block_size(self) -> int | None:
        """The block size of every template and probe of a pe-miu engine, else None: the
        matcher takes only probes of this size."""
        size = self.protection.probe_block_size
        return None if size is None else int(size)


def build(profile: Profile) -> Components:
    """Instantiate every plugin the profile names and check the combination. Raises
    ProfileError naming the section (and plugin) for any value a plugin refuses."""
    made: dict[str, Any] = {}
    check_executor(profile)
    for section, kind in SECTIONS.items():
        if kind.name == "executor":
            continue
        name = profile.plugin(section)
        try:
            made[kind.name] = plugins.create(kind.name, name, **profile.params(section))
        except ProfileError as exc:
            raise type(exc)(f"[{section}] {exc}") from exc
        except (TypeError, ValueError, InputError) as exc:  # the factory refused a value
            raise ProfileError(f"[{section}] {kind.label} '{name}': {exc}") from exc
    parts = Components(**made)
    parts.he_backend.security_check()
    if not parts.he_backend.encrypted and not profile.insecure:
        raise ProfileError(
            f"[he] backend '{parts.he_backend.name}' keeps embeddings in the clear; it is the "
            "reference for tests and benchmarks. Set insecure = true in [engine] to use it."
        )
    mode = parts.protection.probe_mode
    if mode not in parts.he_backend.probe_modes:
        raise ProfileError(
            f"protection '{parts.protection.name}' needs probe mode '{mode}', which HE backend "
            f"'{parts.he_backend.name}' cannot score "
            f"(it offers {sorted(parts.he_backend.probe_modes)})"
        )
    if mode == "pe-miu" and parts.clusterer.routed:
        raise ProfileError(
            f"clusterer '{parts.clusterer.name}' routes on template values, but pe-miu shuffles "
            "each template differently: use clusterer 'single' with pe-miu"
        )
    if profile.dimension is not None and profile.dimension != parts.extractor.dimension:
        raise ProfileError(
            f"[engine] dimension = {profile.dimension} but extractor "
            f"'{parts.extractor.name}' produces {parts.extractor.dimension}-d embeddings"
        )
    try:
        parts.protection.bind(parts.extractor.name, parts.extractor.dimension)
    except ProfileError as exc:
        raise ProfileError(f"[protection] {exc}") from exc
    check_capacity(parts)
    return parts


def check_executor(profile: Profile) -> None:
    """Raise ProfileError (PluginError) for an ``[executor]`` section whose plugin is
    unknown or not installed, whose keys its factory does not take, or whose values it
    refuses: a factory with a ``check_params(params)`` static method checks their ranges
    (``workers = 0``) here, when the profile is loaded, not when the engine first scores."""
    name, params = profile.executor()
    try:
        if "setup" in params:
            raise ProfileError("'setup' is not a key a profile sets (the engine gives it)")
        entry = plugins.registry().get("executor", name)
        entry.check(params)
        check_params = getattr(entry.factory, "check_params", None)
        if check_params is not None:
            try:
                check_params(params)
            except ProfileError as exc:
                raise type(exc)(f"{entry.label}: {exc}") from exc
    except ProfileError as exc:
        raise type(exc)(f"[executor] {exc}") from exc


def executor_warnings(profile: Profile) -> list[str]:
    """One line per risk the profile's executor takes with the rest of the profile (the
    ``ray`` executor with a key store its cluster exposes): what ``frip engine create`` and
    ``frip cluster status`` print as warnings. An executor factory with a
    ``warnings(params, key_store)`` static method (``key_store``: the key store plugin's
    name) says them; none for an executor that is unknown or not installed."""
    name, params = profile.executor()
    try:
        entry = plugins.registry().get("executor", name)
    except ProfileError:
        return []
    warn = getattr(entry.factory, "warnings", None)
    return list(warn(params, profile.plugin("key_store"))) if warn is not None else []


# An enrolment holds a block several times over: the library's ciphertext objects, their
# serialisation, and the copy handed to the store (measured: ~5 GB for a 1.26 GB block).
BLOCK_COPIES_IN_MEMORY = 4


def physical_memory() -> int | None:
    """This machine's RAM in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_capacity(parts: Components) -> None:
    """Raise ProfileError if one block of this profile cannot be stored or held in memory:
    computed from the parameters, so it fails at create, before any key is made."""
    block = parts.he_backend.block_bytes(parts.dimension)
    limit = parts.gallery_store.max_blob_bytes
    fix = "use a smaller poly_modulus_degree, fewer or smaller primes, or a preset (fast, compact)"
    if block > limit:
        raise ProfileError(
            f"[he] {parts.he_backend.description}: one block of {parts.dimension}-d templates "
            f"takes at least {block / 1e6:,.0f} MB, over the {parts.gallery_store.name} "
            f"store's limit of {limit / 1e6:,.0f} MB per block: {fix}"
        )
    memory = physical_memory()
    if memory is not None and BLOCK_COPIES_IN_MEMORY * block > memory:
        raise ProfileError(
            f"[he] {parts.he_backend.description}: enrolling one block of {block / 1e9:,.1f} GB "
            f"needs about {BLOCK_COPIES_IN_MEMORY * block / 1e9:,.1f} GB of memory, this "
            f"machine has {memory / 1e9:,.1f} GB: {fix}"
        )
