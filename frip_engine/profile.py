"""Engine profiles: one TOML file per engine naming one plugin of each kind.

    [engine]
    name = "office-doors"
    [extractor]
    plugin = "arcface"
    [he]
    plugin = "tenseal"
    preset = "fast"
    ...

Every key besides ``plugin`` is passed to the plugin's factory. ``build`` instantiates
the components and checks that they fit together, so a bad profile fails on load with
a message that names the section and the fix.
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
from frip_engine.errors import NotFoundError, ProfileError

SECTION_KIND = {
    "extractor": "extractor",
    "he": "he_backend",
    "protection": "protection",
    "clusterer": "clusterer",
    "key_store": "key_store",
    "gallery_store": "gallery_store",
}
DEFAULT_PLUGINS = {
    "extractor": "arcface",
    "he": "tenseal",
    "protection": "none",
    "clusterer": "single",
    "key_store": "file",
    "gallery_store": "sqlite",
}
ENGINE_KEYS = {"name", "id", "description", "threshold", "insecure", "dimension", "workers"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def engines_home() -> Path:
    """Where engines live: $FRIP_HOME, else $XDG_DATA_HOME/frip, else ~/.local/share/frip."""
    if os.environ.get("FRIP_HOME"):
        return Path(os.environ["FRIP_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "frip"


def engine_dir(name: str, home: Path | None = None) -> Path:
    check_name(name)
    return (home or engines_home()) / "engines" / name


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise ProfileError(
            f"engine name '{name}' is not valid: use 1-64 letters, digits, '.', '_' or '-'"
        )


@dataclass
class Profile:
    name: str
    engine_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    description: str = ""
    threshold: float | None = None
    insecure: bool = False
    dimension: int | None = None
    workers: int = 1  # scoring processes; >1 scores blocks in parallel workers
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def plugin(self, section: str) -> str:
        return str(self.sections.get(section, {}).get("plugin", DEFAULT_PLUGINS[section]))

    def params(self, section: str) -> dict[str, Any]:
        return {k: v for k, v in self.sections.get(section, {}).items() if k != "plugin"}

    @classmethod
    def from_toml(cls, text: str, source: str = "profile") -> Profile:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{source}: not valid TOML: {exc}") from exc
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "profile") -> Profile:
        unknown = set(data) - set(SECTION_KIND) - {"engine"}
        if unknown:
            raise ProfileError(
                f"{source}: unknown section(s) {sorted(unknown)}; "
                f"known: engine, {', '.join(SECTION_KIND)}"
            )
        engine = dict(data.get("engine", {}))
        bad = set(engine) - ENGINE_KEYS
        if bad:
            raise ProfileError(f"{source}: unknown key(s) {sorted(bad)} in [engine]")
        if "name" not in engine:
            raise ProfileError(f"{source}: [engine] needs a name")
        check_name(str(engine["name"]))
        sections: dict[str, dict[str, Any]] = {}
        for section in SECTION_KIND:
            body = data.get(section, {})
            if not isinstance(body, dict):
                raise ProfileError(f"{source}: [{section}] must be a table")
            sections[section] = {"plugin": DEFAULT_PLUGINS[section], **body}
        threshold = engine.get("threshold")
        if threshold is not None and not (
            isinstance(threshold, (int, float)) and -1.0 <= threshold <= 1.0
        ):
            raise ProfileError(f"{source}: [engine] threshold must be a number in [-1, 1]")
        workers = engine.get("workers", 1)
        if not isinstance(workers, int) or not 1 <= workers <= 64:
            raise ProfileError(f"{source}: [engine] workers must be an integer from 1 to 64")
        return cls(
            workers=workers,
            name=str(engine["name"]),
            engine_id=str(engine.get("id") or uuid.uuid4().hex),
            description=str(engine.get("description", "")),
            threshold=None if threshold is None else float(threshold),
            insecure=bool(engine.get("insecure", False)),
            dimension=engine.get("dimension"),
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
        return tomli_w.dumps({"engine": engine, **self.sections})


def save_profile(profile: Profile, path: Path) -> None:
    """Write atomically: a reader sees the old profile or the new one, never half."""
    from frip_engine.private import write_private

    staging = path.with_suffix(".toml.tmp")
    write_private(staging, profile.to_toml())  # 0600: it names the engine's key store
    staging.replace(path)


def load_profile(path: Path) -> Profile:
    if not path.is_file():
        raise NotFoundError(f"profile {path} does not exist")
    return Profile.from_toml(path.read_text(), source=str(path))


@dataclass
class Components:
    """The live plugin instances of one engine, checked to fit together."""

    extractor: Any
    backend: Any
    protection: Any
    clusterer: Any
    key_store: Any
    gallery_store: Any

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
    """Instantiate every plugin the profile names and check the combination."""
    made: dict[str, Any] = {}
    for section, kind in SECTION_KIND.items():
        name = profile.plugin(section)
        try:
            made[section] = plugins.create(kind, name, **profile.params(section))
        except ProfileError as exc:
            raise type(exc)(f"[{section}] {exc}") from exc
    parts = Components(
        made["extractor"],
        made["he"],
        made["protection"],
        made["clusterer"],
        made["key_store"],
        made["gallery_store"],
    )
    parts.backend.security_check()
    if not parts.backend.encrypted and not profile.insecure:
        raise ProfileError(
            f"[he] backend '{parts.backend.name}' keeps embeddings in the clear; it is the "
            "reference for tests and benchmarks. Set insecure = true in [engine] to use it."
        )
    mode = parts.protection.probe_mode
    if mode not in parts.backend.probe_modes:
        raise ProfileError(
            f"protection '{parts.protection.name}' needs probe mode '{mode}', which HE backend "
            f"'{parts.backend.name}' cannot score (it offers {sorted(parts.backend.probe_modes)})"
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
    return parts
