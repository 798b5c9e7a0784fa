"""Profiles are validated on load with errors that name the problem."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from frip_engine import plugins
from frip_engine.ckks import PRESETS, CKKSParams, params_from
from frip_engine.engine import Engine
from frip_engine.errors import NotFoundError, PluginError, ProfileError, SecurityError
from frip_engine.hookspecs import hookimpl
from frip_engine.profile import Profile, build, load_profile


def _build(**sections: Any) -> Any:
    return build(Profile.from_dict({"engine": {"name": "p"}, **sections}))


def test_defaults_build_and_fit_together() -> None:
    parts = _build()
    assert parts.extractor.name == "arcface"
    assert parts.dimension == 512
    assert parts.he_backend.params == PRESETS["fast"]


def test_round_trip_through_toml() -> None:
    profile = Profile.from_dict(
        {"engine": {"name": "rt", "threshold": 0.4}, "he": {"preset": "paper"}}
    )
    again = Profile.from_toml(profile.to_toml())
    assert again == profile


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ({"he": {"plugin": "seal9"}}, PluginError, r"\[he\] unknown he backend 'seal9'"),
        ({"extractor": {"plugin": "nope"}}, PluginError, "unknown extractor 'nope'"),
        ({"he": {"preset": "turbo"}}, ProfileError, "unknown CKKS preset 'turbo'"),
        ({"he": {"plugin": "plaintext"}}, ProfileError, "insecure = true"),
        (
            {"he": {"coeff_mod_bit_sizes": [60, 60, 60, 60]}},
            SecurityError,
            "less than 128-bit security",
        ),
        (
            {"he": {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [40, 40, 40]}},
            SecurityError,
            "at most 109",
        ),
        ({"he": {"coeff_mod_bit_sizes": [40, 60], "scale_bits": 29}}, ProfileError, "overflow"),
        ({"he": {"bogus": 1}}, PluginError, "has no parameter 'bogus'; it accepts: "),
        ({"key_store": {"scrypt_log2_n": 8}}, ProfileError, "scrypt_log2_n"),
        ({"he": {"coeff_mod_bit_sizes": [70, 70]}}, ProfileError, "20 to 60 bits"),
        ({"he": {"scale_bits": -3}}, ProfileError, "scale_bits must be"),
        ({"he": {"scale_bits": 0}}, ProfileError, "scale_bits must be"),
    ],
)
def test_bad_profiles_are_refused(data: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        _build(**data)


def test_dimension_mismatch_is_refused() -> None:
    with pytest.raises(ProfileError, match="dimension = 128 but extractor 'arcface'"):
        build(Profile.from_dict({"engine": {"name": "d", "dimension": 128}}))


class _NeedsEncryptedProbes:
    name = "needs-encrypted"
    probe_mode = "encrypted"
    probe_block_size = None

    def bind(self, extractor: str, dimension: int) -> None:
        pass

    def output_dimension(self, dimension: int) -> int:
        return dimension

    def protect(self, embedding: Any) -> Any:
        return embedding

    def protect_probe(self, embedding: Any) -> Any:
        return embedding


class _Plugin:
    @hookimpl
    def register_protections(self, register: Any) -> None:
        register("needs-encrypted", _NeedsEncryptedProbes)


def test_incompatible_protection_and_backend(fresh_plugins: None) -> None:
    plugins.register_plugin(_Plugin(), "incompatible")
    with pytest.raises(ProfileError, match=r"probe mode 'encrypted'.*cannot score"):
        _build(protection={"plugin": "needs-encrypted"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[engine\nname=", "not valid TOML"),
        ('[engine]\nname = "x"\n[turbo]\n', "unknown section"),
        ("[he]\nplugin = 'tenseal'\n", "needs a name"),
        ('[engine]\nname = "bad name!"\n', "not valid"),
        ('[engine]\nname = "x"\nthreshold = 3\n', "threshold"),
        ('[engine]\nname = "x"\ncolour = 1\n', "unknown key"),
    ],
)
def test_malformed_profile_text(text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        Profile.from_toml(text)


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        load_profile(tmp_path / "none.toml")


def test_every_preset_is_128_bit_secure() -> None:
    for preset in PRESETS:
        params_from(preset).check()
    with pytest.raises(SecurityError):
        CKKSParams(16384, (60,) * 8, 40).check()


def test_engine_that_does_not_exist(home: Path) -> None:
    with pytest.raises(NotFoundError, match="engine 'ghost' does not exist"):
        Engine.open("ghost", home)


def test_existing_engine_is_not_overwritten(make_engine: Any) -> None:
    make_engine("twice")
    with pytest.raises(ProfileError, match="already exists"):
        make_engine("twice")


def test_gallery_and_profile_dimension_must_agree(make_engine: Any, home: Path) -> None:
    engine = make_engine("dims")
    engine.close()
    with sqlite3.connect(engine.directory / "gallery.sqlite") as db:
        db.execute("UPDATE meta SET value = '128' WHERE key = 'dimension'")
    with pytest.raises(ProfileError, match="holds 128-d templates"):
        Engine.open("dims", home)
