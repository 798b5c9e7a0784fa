"""Field report issue 13, items 12-18: bad input that was accepted, misreported or crashed.

Each test names the class of inputs it covers; the CLI tests run ``frip`` as a user does.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import unit_vectors

from frip_engine.embeddings import normalise, read_embedding_file
from frip_engine.engine import Engine, EnrolItem
from frip_engine.errors import (
    EmbeddingError,
    InputError,
    NotFoundError,
    SubjectError,
    UnknownSubjectError,
)
from frip_engine.hookspecs import hookimpl

DIM = 512


def frip(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """Run the CLI and check its exit code; never a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "frip_engine", *args], capture_output=True, text=True
    )
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture
def plain(make_engine: Callable[..., Engine]) -> Engine:
    """A plaintext engine (fast): the checks under test run before any backend is involved."""
    return make_engine(
        "plain", engine={"name": "plain", "insecure": True}, he={"plugin": "plaintext"}
    )


# ------------------------------------------------------------------ 12: embedding values
@pytest.mark.parametrize(
    ("values", "named"),
    [
        (np.ones(DIM, dtype=bool), "boolean"),
        (np.ones(DIM, dtype=np.complex128), "complex"),
        (np.full(DIM, "0.1"), "text"),
        (np.ones(DIM, dtype=np.int64), "integer"),
        (np.ones(DIM, dtype=np.uint8), "integer"),
        (np.array([0.1] * DIM, dtype=object), "Python objects"),
        (np.zeros(DIM, dtype=[("a", "f4")]), "structured"),
        ([True] * DIM, "boolean"),
        (["0.1"] * DIM, "text"),
        ([1j] * DIM, "complex"),
        ([None] * DIM, "None"),
    ],
)
def test_only_real_floating_point_vectors_are_embeddings(values: object, named: str) -> None:
    with pytest.raises(EmbeddingError, match=named):
        normalise(values, DIM)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.longdouble])
def test_every_real_float_width_is_accepted_as_is(dtype: type) -> None:
    """float16 is accepted on purpose: widening it to float64 is exact, so the engine adds
    no loss; the rounding happened when the producer stored it (cosine error < 1e-3)."""
    raw = unit_vectors(1, seed=3)[0].astype(dtype)
    got = normalise(raw, DIM)
    assert got.dtype == np.float64
    expected = raw.astype(np.float64) / np.linalg.norm(raw.astype(np.float64))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_json_style_lists_of_numbers_are_vectors() -> None:
    """JSON has one number type: [0, 1, 0.5] is a vector; bools and strings are not."""
    values: list[float | int] = [0] * DIM
    values[3], values[7] = 1, 0.5
    got = normalise(values, DIM)
    assert got[3] == pytest.approx(1 / np.sqrt(1.25))


@pytest.mark.parametrize("scale", [1e155, 1e300, 1e-13 / np.sqrt(DIM), 1e-300, 5e-324 * 2**20])
def test_normalise_neither_overflows_nor_underflows(scale: float) -> None:
    unit = unit_vectors(1, seed=5)[0]
    got = normalise(unit * scale, DIM)
    np.testing.assert_allclose(got, unit, atol=1e-9 if scale > 1e-300 else 1e-6)
    assert np.linalg.norm(got) == pytest.approx(1.0)


def test_float32_vectors_whose_float32_norm_overflows_are_normalised() -> None:
    unit = unit_vectors(1, seed=6)[0]
    big = (unit * 1e30).astype(np.float32)  # sum of squares overflows float32
    np.testing.assert_allclose(normalise(big, DIM), unit, atol=1e-6)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (np.zeros(DIM), "all zeros"),
        (np.full(DIM, np.nan), "NaN or infinite"),
        (np.r_[np.inf, np.ones(DIM - 1)], "NaN or infinite"),
        ([10**400] + [0] * (DIM - 1), "too large"),
        (np.ones((2, DIM // 2)), "one vector"),
        (np.ones(DIM - 1), "dimension 511"),
        (np.float64(1.0), "one vector"),
    ],
)
def test_unusable_vectors_name_their_problem(values: object, named: str) -> None:
    with pytest.raises(EmbeddingError, match=named):
        normalise(values, DIM)


def test_extreme_scales_enrol_and_identify_through_the_engine(plain: Engine) -> None:
    unit = unit_vectors(2, seed=7)
    plain.enrol(EnrolItem("huge", embeddings=[unit[0] * 1e155, unit[0] * 1e155]))
    plain.enrol(EnrolItem("tiny", embeddings=[unit[1] * 1e-13 / np.sqrt(DIM)]))
    assert plain.identify(embedding=unit[0] * 1e-200).subject_id == "huge"
    found = plain.identify(embedding=unit[1] * 1e200)
    assert found.subject_id == "tiny" and found.score == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------ 12: embedding files
def _npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b"", "empty"),
        (b"0.1 0.2 0.3\n", "not a NumPy .npy file.*text"),
        (pickle.dumps([0.1] * DIM), "not a NumPy .npy file.*pickle"),
        (b"PK\x03\x04rest-of-a-zip", "not a NumPy .npy file.*zip"),
        (b"\xff\xd8\xff\xe0JFIF", "not a NumPy .npy file"),
        (_npy_bytes(np.array([0.1] * DIM, dtype=object), allow_pickle=True), "pickled"),
        (_npy_bytes(np.ones(DIM))[:200], "damaged or truncated"),
        (_npy_bytes(np.ones(DIM, dtype=bool)), "boolean"),
        (_npy_bytes(np.ones(DIM, dtype=np.complex64)), "complex"),
        (_npy_bytes(np.ones(DIM, dtype=np.int32)), "integer"),
    ],
)
def test_npy_files_refused_with_the_actual_problem(
    tmp_path: Path, content: bytes, named: str
) -> None:
    path = tmp_path / "probe.npy"
    path.write_bytes(content)
    with pytest.raises(EmbeddingError, match=named):
        read_embedding_file(path, DIM)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("", "empty"),
        ("[0.1, 0.2", "not valid JSON"),
        ('{"embedding": [0.1]}', "list of numbers"),
        (json.dumps(["0.1"] * DIM), "text"),
        (json.dumps([True] * DIM), "boolean"),
        (json.dumps([1e400] * DIM).replace("Infinity", "1e400"), "NaN or infinite"),
        ("[" + "9" * 5000 + "]", "number with too many digits"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("[" * 100 + "]" * 100, "nested lists"),
    ],
)
def test_json_files_refused_with_the_actual_problem(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "probe.json"
    path.write_text(text)
    with pytest.raises(EmbeddingError, match=named):
        read_embedding_file(path, DIM)


def test_a_missing_embedding_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        read_embedding_file(tmp_path / "nowhere.npy", DIM)


def test_cli_names_the_problem_of_an_empty_npy(home: Path, tmp_path: Path) -> None:
    frip("engine", "create", "e")
    (tmp_path / "empty.npy").write_bytes(b"")
    done = frip("identify", "e", "--embedding", str(tmp_path / "empty.npy"), code=2)
    assert "empty" in done.stderr and "Aborted" not in done.stderr + done.stdout


# ------------------------------------------------------------------ 15: values outside their domain
BAD_IDS = [
    "",
    " padded",
    "padded ",
    "two\nlines",
    "tab\there",
    "nul\x00",
    "bell\x07",
    "del\x7f",
    "c1\x85",
    "rtl\u202eoverride",
    "isolate\u2066x",
    "zero\u200bwidth",
    "joiner\u200d",
    "bom\ufeff",
    "nbsp\u00a0space",
    "line\u2028sep",
    "private\ue000",
    "surrogate\ud800",
    "\u0301",  # a combining mark with nothing to combine with: it joins what is printed before
    "\u0301x",
    "\u3164",  # Hangul filler: a letter that prints as nothing
    "a\u115fb",
    "\u2800",  # braille blank
    "x" * 129,
    unicodedata.normalize("NFD", "José"),
]
GOOD_IDS = ["alice", "[bold]", "José", "Anna Maria", "x" * 128, "李小龙", ":smile:"]


@pytest.mark.parametrize("subject", BAD_IDS)
def test_subject_ids_that_break_output_are_refused_everywhere(plain: Engine, subject: str) -> None:
    vector = unit_vectors(1, seed=8)[0]
    with pytest.raises(SubjectError, match="subject id"):
        plain.enrol(EnrolItem(subject, embeddings=[vector]))
    with pytest.raises(SubjectError, match="subject id"):
        plain.verify(subject, embedding=vector)
    with pytest.raises(SubjectError, match="subject id"):
        plain.remove(subject)


def test_printable_subject_ids_are_accepted(plain: Engine) -> None:
    vectors = unit_vectors(len(GOOD_IDS), seed=9)
    for subject, vector in zip(GOOD_IDS, vectors, strict=True):
        plain.enrol(EnrolItem(subject, embeddings=[vector]))
    for subject, vector in zip(GOOD_IDS, vectors, strict=True):
        assert plain.identify(embedding=vector).subject_id == subject


def test_the_service_checks_subject_ids_with_the_core_rule() -> None:
    pytest.importorskip("starlette", reason="the service needs the [serve] extra")
    from frip_engine.service.requests import check_subject
    from frip_engine.validate import check_subject_id

    for subject in BAD_IDS:
        with pytest.raises(SubjectError):
            check_subject(subject)
        with pytest.raises(SubjectError):
            check_subject_id(subject)


@pytest.mark.parametrize(
    "threshold",
    [2.0, -1.5, float("nan"), float("inf"), True, "0.5", 10**400, -(10**400), Fraction(10**400, 3)],
)
def test_thresholds_outside_the_cosine_range_are_refused(plain: Engine, threshold: object) -> None:
    vector = unit_vectors(1, seed=10)[0]
    plain.enrol(EnrolItem("a", embeddings=[vector]))
    with pytest.raises(InputError, match="threshold"):
        plain.identify(embedding=vector, threshold=threshold)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="threshold"):
        plain.verify("a", embedding=vector, threshold=threshold)  # type: ignore[arg-type]


@pytest.mark.parametrize("top_k", [0, -1, 10_001, True, 2.5])
def test_top_k_outside_its_range_is_refused(plain: Engine, top_k: object) -> None:
    vector = unit_vectors(1, seed=11)[0]
    with pytest.raises(InputError, match="top_k"):
        plain.identify(embedding=vector, top_k=top_k)  # type: ignore[arg-type]


def test_cli_refuses_a_threshold_outside_the_cosine_range(home: Path, tmp_path: Path) -> None:
    frip("engine", "create", "e")
    np.save(tmp_path / "p.npy", unit_vectors(1, seed=12)[0])
    done = frip("identify", "e", "--embedding", str(tmp_path / "p.npy"), "--threshold", "2", code=2)
    assert "threshold" in done.stderr and "[-1, 1]" in done.stderr
    frip("engine", "create", "f", "--threshold", "1.5", code=2)


# ------------------------------------------------------------------ 16: exit codes as documented
def test_exit_codes_follow_the_readme(home: Path, tmp_path: Path) -> None:
    frip("engine", "create", "e")
    vector = tmp_path / "p.npy"
    np.save(vector, unit_vectors(1, seed=13)[0])
    frip("enrol", "e", "--subject", "alice", "--embedding", str(vector))
    # 3: not found (an engine, a subject, a file the caller named)
    assert "not enrolled" in frip("remove", "e", "nobody", code=3).stderr
    assert (
        "not enrolled" in frip("verify", "e", "nobody", "--embedding", str(vector), code=3).stderr
    )
    frip("identify", "e", "--embedding", str(tmp_path / "missing.npy"), code=3)
    frip("identify", "e", str(tmp_path / "missing.jpg"), code=3)
    frip("enrol", "e", "--subject", "bob", "--image", str(tmp_path / "missing.jpg"), code=3)
    frip("identify", "e", "--template", str(tmp_path / "t.acmt"), "--adapter", "acme-v1", code=3)
    frip("engine", "create", "g", "--profile", str(tmp_path / "missing.toml"), code=3)
    frip("identify", "nowhere", "--embedding", str(vector), code=3)
    # 2: bad input (an engine name is the caller's input, not a profile fault)
    assert "engine name" in frip("engine", "create", "bad name!", code=2).stderr
    frip("identify", "../escape", "--embedding", str(vector), code=2)
    # 4: bad profile
    frip("engine", "create", "h", "--he", "no-such-backend", code=4)


def test_unknown_subject_is_not_found_for_the_api_and_keeps_its_http_code(plain: Engine) -> None:
    from frip_engine.service.errors import http_error

    with pytest.raises(UnknownSubjectError) as caught:
        plain.remove("nobody")
    assert isinstance(caught.value, NotFoundError) and caught.value.exit_code == 3
    assert http_error(caught.value) == (404, "subject_not_found")


# ------------------------------------------------------------------ 14: markup in human output
def test_brackets_and_colons_in_data_and_messages_survive_every_output(
    home: Path, tmp_path: Path
) -> None:
    frip("engine", "create", "e")
    vectors = unit_vectors(2, seed=14)
    for name, vector in zip(("[bold]", ":smile:"), vectors, strict=True):
        np.save(tmp_path / "v.npy", vector)
        frip("enrol", "e", "--subject", name, "--embedding", str(tmp_path / "v.npy"))
    np.save(tmp_path / "bold.npy", vectors[0])
    probe = str(tmp_path / "bold.npy")
    again = frip("enrol", "e", "--subject", "[bold]", "--embedding", probe, code=2)
    assert "[bold]" in again.stderr
    shown = frip("identify", "e", "--embedding", probe, "--top-k", "2").stdout
    assert "match [bold]" in shown and ":smile:" in shown
    assert "match [bold]" in frip("verify", "e", "[bold]", "--embedding", probe).stdout
    assert "q=[60,60]" in frip("stats", "e").stdout.replace(" ", "")
    assert "removed [bold]" in frip("remove", "e", "[bold]").stdout
    assert "[bold]" in frip("remove", "e", "[bold]", code=3).stderr
    insecure = frip("engine", "create", "p", "--he", "plaintext", code=4).stderr
    assert "insecure = true in [engine]" in insecure
    (tmp_path / "typo.toml").write_text("[engine]\ntreshold = 0.4\n")
    typo = frip("engine", "create", "t", "--profile", str(tmp_path / "typo.toml"), code=4)
    assert "in [engine]" in typo.stderr


# ------------------------------------------------------------------ 13: profiles
@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b"[engine\nname = 'x'\n", "not valid TOML"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01", "not UTF-8 text"),
        (b"engine = 3\n", r"\[engine\] must be a table"),
        (b"[engine]\nname = 'x'\n[he]\nplugin = 3\n", r"\[he\] plugin must be a name"),
    ],
)
def test_unreadable_profiles_are_profile_errors(
    home: Path, tmp_path: Path, content: bytes, named: str
) -> None:
    from frip_engine.errors import ProfileError
    from frip_engine.profile import load_profile

    path = tmp_path / "profile.toml"
    path.write_bytes(content)
    with pytest.raises(ProfileError, match=named):
        load_profile(path)
    done = frip("engine", "create", "x", "--profile", str(path), code=4)
    assert named.replace("\\", "") in done.stderr


@pytest.mark.parametrize(
    ("section", "body", "named"),
    [
        (
            "he",
            {"prest": "fast"},
            r"\[he\] he backend 'tenseal' has no parameter 'prest' "
            r"\(did you mean 'preset'\?\); it accepts: .*coeff_mod_bit_sizes.*preset",
        ),
        (
            "extractor",
            {"det_treshold": 0.5},
            r"\[extractor\].*'det_treshold' \(did you mean "
            r"'det_threshold'\?\)",
        ),
        (
            "extractor",
            {"plugin": "facenet", "selct": "largest"},
            r"\[extractor\].*'selct'.*"
            r"batch_size.*select.*standardisation",
        ),
        (
            "protection",
            {"colour": "red"},
            r"\[protection\] protection 'none' has no parameter "
            r"'colour'; it accepts: none besides plugin",
        ),
        ("clusterer", {"plugin": "kmeans", "probe_cluster": 2}, r"did you mean 'probe_clusters'"),
        ("key_store", {"passphrase": "x"}, r"\[key_store\].*'passphrase'.*passphrase_env"),
        ("gallery_store", {"file": "x"}, r"\[gallery_store\].*'file'.*it accepts: path"),
    ],
)
def test_every_key_of_every_section_is_checked_against_its_plugin(
    home: Path, section: str, body: dict[str, object], named: str
) -> None:
    _refused_at_create(home, section, body, named)


def _refused_at_create(home: Path, section: str, body: dict[str, object], named: str) -> None:
    """A profile with ``body`` as ``section`` is a ProfileError matching ``named`` at create,
    and leaves no engine folder behind."""
    from frip_engine.errors import ProfileError
    from frip_engine.profile import Profile

    profile = Profile.from_dict({"engine": {"name": "refused"}, section: body})
    with pytest.raises(ProfileError, match=named):
        Engine.create(profile, home)
    assert not (home / "engines" / "refused").exists()


class _KwargsPlugin:
    """Two third-party clusterers whose factories take ``**kwargs``: one declares what it
    accepts, the other cannot be checked and gets every key as before."""

    @hookimpl
    def register_clusterers(self, register: Any) -> None:
        register("declared", lambda **kw: kw, parameters=("fan_out",))
        register("open", lambda **kw: kw)


def test_declared_parameters_are_checked_and_open_factories_left_alone(
    fresh_plugins: None,
) -> None:
    from frip_engine import plugins
    from frip_engine.errors import PluginError

    plugins.register_plugin(_KwargsPlugin(), "kwargs-plugin")
    declared = plugins.registry().get("clusterer", "declared")
    assert declared.create(fan_out=2) == {"fan_out": 2}
    with pytest.raises(PluginError, match=r"'fan_in' \(did you mean 'fan_out'\?\)"):
        declared.create(fan_in=2)
    assert plugins.registry().get("clusterer", "open").create(anything=1) == {"anything": 1}


def test_engine_section_typos_name_the_accepted_keys() -> None:
    from frip_engine.errors import ProfileError
    from frip_engine.profile import Profile

    with pytest.raises(
        ProfileError,
        match=r"'treshold' \(did you mean 'threshold'\?\) in "
        r"\[engine\]; it accepts: .*workers",
    ):
        Profile.from_dict({"engine": {"name": "x", "treshold": 0.4}})


@pytest.mark.parametrize(
    ("engine", "named"),
    [
        ({"insecure": "false"}, "insecure must be true or false"),
        ({"workers": True}, "workers must be an integer"),
        ({"threshold": True}, r"threshold True is outside \[-1, 1\]"),
        ({"threshold": 2}, r"threshold 2 is outside \[-1, 1\]"),
        ({"dimension": "512"}, "dimension must be a positive integer"),
        ({"description": 5}, "description must be text"),
    ],
)
def test_engine_values_of_the_wrong_type_are_refused(engine: dict[str, object], named: str) -> None:
    """TOML's "false" is text, and true is not a count: neither may pass as another type."""
    from frip_engine.errors import ProfileError
    from frip_engine.profile import Profile

    with pytest.raises(ProfileError, match=named):
        Profile.from_dict({"engine": {"name": "x", **engine}})


def test_a_block_the_store_cannot_hold_is_refused_at_create(home: Path) -> None:
    """N=32768 with six 60-bit primes: a packed block of 512-d templates is >= 1.26 GB,
    over SQLite's 1 GB blob limit; refused from the parameters, before key generation."""
    import time

    from frip_engine.errors import ProfileError
    from frip_engine.profile import Profile

    big = {"poly_modulus_degree": 32768, "coeff_mod_bit_sizes": [60] * 6, "scale_bits": 40}
    profile = Profile.from_dict({"engine": {"name": "huge"}, "he": big})
    start = time.perf_counter()
    with pytest.raises(
        ProfileError,
        match=r"at least 1,258 MB, over the sqlite store's limit "
        r"of 1,000 MB",
    ):
        Engine.create(profile, home)
    assert time.perf_counter() - start < 5  # no key generation happened
    assert not (home / "engines" / "huge").exists()
    # the same ring with fewer primes fits: 512 x 2 x 32768 x 120 bits = 503 MB
    fits = Profile.from_dict(
        {"engine": {"name": "fits"}, "he": {**big, "coeff_mod_bit_sizes": [60, 60, 60]}}
    )
    from frip_engine.profile import build

    build(fits)


def test_a_block_the_machine_cannot_hold_is_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frip_engine import profile as profile_module
    from frip_engine.errors import ProfileError

    monkeypatch.setattr(profile_module, "physical_memory", lambda: 200_000_000)  # 200 MB
    fast = profile_module.Profile.from_dict({"engine": {"name": "small-ram"}})  # 63 MB blocks
    with pytest.raises(ProfileError, match=r"needs about 0\.3 GB of memory, this machine has 0\.2"):
        profile_module.build(fast)


# ------------------------------------------------------------------ 17: damaged numba cache
KERNEL_RUN = """
import numpy as np
from frip_plugins.he_backends import _fast_kernels as fast_kernels
from frip_plugins.he_backends._fast_scorer import combine_residues
out = combine_residues(np.ones((5, 2, 1, 8), np.uint64), np.arange(-2, 3, dtype=np.int64), [97])
print(int(out[0, 0, 0]), sum(fast_kernels.combine_serial._cache_hits.values()))
"""


def _kernel_run(cache: Path) -> list[str]:
    import os

    done = subprocess.run(
        [sys.executable, "-c", KERNEL_RUN],
        env={**os.environ, "NUMBA_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_an_unreadable_numba_cache_is_a_cache_miss(tmp_path: Path) -> None:
    """Truncated and overwritten index (.nbi) and data (.nbc) files, as a full disk or a
    crash leaves them: the kernels compile again, answer right, and the cache heals."""
    assert _kernel_run(tmp_path) == ["0", "0"]  # compiled, cache written
    index = sorted(tmp_path.rglob("*.nbi"))
    data = sorted(tmp_path.rglob("*.nbc"))
    assert len(index) >= 6 and len(data) >= 6
    for n, path in enumerate(index + data):
        content = path.read_bytes()
        path.write_bytes(content[: len(content) // 3] if n % 2 else b"\x00" * 16)
    assert _kernel_run(tmp_path) == ["0", "0"]  # damaged: recompiled, not loaded
    assert _kernel_run(tmp_path) == ["0", "1"]  # rewritten: loaded from disk again


# ------------------------------------------------------------------ 18: no main guard
SCRIPT = """
import numpy as np
from frip_engine.engine import Engine, EnrolItem
from frip_engine.profile import Profile


def main() -> None:
    vector = np.random.default_rng(0).standard_normal(512)
    profile = {{"engine": {{"name": "{name}", "workers": 2, "insecure": True}},
               "he": {{"plugin": "plaintext"}}}}
    with Engine.create(Profile.from_dict(profile)) as engine:
        engine.enrol(EnrolItem("alice", embeddings=[vector]))
        print("found", engine.identify(embedding=vector).subject_id)


{call}
"""


def _script(
    tmp_path: Path, name: str, call: str, stdin: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the script from its file, or (``stdin``) as ``python - < file``."""
    path = tmp_path / f"{name}.py"
    path.write_text(SCRIPT.format(name=name, call=call))
    return subprocess.run(
        [sys.executable, "-" if stdin else str(path)],
        input=path.read_text() if stdin else None,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_script_without_a_main_guard_is_told_what_to_do(home: Path, tmp_path: Path) -> None:
    done = _script(tmp_path, "unguarded", "main()")
    assert done.returncode != 0
    assert "WorkerStartError" in done.stderr and 'if __name__ == "__main__":' in done.stderr
    assert "unguarded.py, line 16:" in done.stderr  # the line of the unguarded call
    assert "bootstrapping" not in done.stderr and "BrokenPipeError" not in done.stderr
    assert "BrokenProcessPool" not in done.stderr


def test_a_guarded_script_scores_in_workers(home: Path, tmp_path: Path) -> None:
    done = _script(tmp_path, "guarded", 'if __name__ == "__main__":\n    main()')
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["found", "alice"]


def test_a_script_read_from_stdin_is_told_what_to_do(home: Path, tmp_path: Path) -> None:
    """Workers run the script again from its file: one read from standard input has none,
    guard or not (forkserver would fail with FileNotFoundError '<stdin>')."""
    done = _script(tmp_path, "piped", 'if __name__ == "__main__":\n    main()', stdin=True)
    assert done.returncode != 0
    assert "WorkerStartError" in done.stderr and "standard input" in done.stderr
    assert "FileNotFoundError" not in done.stderr and "BrokenPipeError" not in done.stderr


def test_the_readme_error_table_names_each_class_with_its_exit_code() -> None:
    """Every error class the README's table names exits with the code of its row."""
    import re

    from frip_engine import errors

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| (\d) \| (.+?) \|", readme, flags=re.MULTILINE)
    assert {code for code, _ in rows} >= {"1", "2", "3", "4", "5", "6", "7"}
    for code, classes in rows:
        for name in re.findall(r"`(\w+Error)`", classes):
            assert getattr(errors, name).exit_code == int(code), (name, code)


def test_folder_identities_are_taken_in_nfc(tmp_path: Path, lfw: Path) -> None:
    """A decomposed folder name (as macOS stores 'José') becomes the composed subject id,
    which the subject-id rule accepts."""
    from frip_engine.datasets import folder_identities

    person = tmp_path / unicodedata.normalize("NFD", "José")
    person.mkdir()
    (person / "a.jpg").symlink_to(lfw / "Adam_Sandler" / "Adam_Sandler_0001.jpg")
    assert list(folder_identities(tmp_path)) == ["José"]


# ---------------------------------------------------------- 12 (more): hostile embedding files
def _npy_with_header(header: str, data: bytes = b"") -> bytes:
    """A version 1.0 .npy file whose header dict text is ``header`` (padded as numpy does)."""
    text = header.encode("latin1")
    pad = (64 - (10 + len(text) + 1) % 64) % 64
    body = text + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body + data


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (
            _npy_with_header(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (999999999999,), }"
            ),
            "999999999999 values.*at most 65,536",
        ),
        (
            _npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (4, 2**40), }"),
            "damaged .npy header",
        ),
        (
            _npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 256), }"),
            r"one vector, got shape \(2, 256\)",
        ),
        (_npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (512,"), "header"),
        (_npy_with_header("{'descr': '<f4', 'shape': (512,), }"), "header"),
        (_npy_with_header("{'descr': 'zz', 'fortran_order': False, 'shape': (512,), }"), "header"),
        (_npy_with_header("'''"), "header"),
        (_npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-5,), }"), "header"),
        (
            _npy_with_header("(" * 3000 + ")" * 3000),
            r"header \(Cannot parse header: .{1,200}\.\.\.\)",
        ),
        (_npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (512,), }"), "short"),
        (_npy_bytes(np.ones(DIM)) + b"garbage", "7 bytes after the array"),
        (_npy_bytes(np.ones(DIM))[:-1], "short"),
        (b"\x93NUMPY\x09\x00" + b"\x00" * 100, "header"),
        (b"\x93NUMPY\x01", "header"),
    ],
)
def test_npy_headers_are_checked_before_any_data_is_read(
    tmp_path: Path, content: bytes, named: str
) -> None:
    """Shapes too large to allocate, garbled headers, truncation and trailing bytes."""
    path = tmp_path / "probe.npy"
    path.write_bytes(content)
    with pytest.raises(EmbeddingError, match=named):
        read_embedding_file(path, DIM)


def test_a_version_2_npy_is_read(tmp_path: Path) -> None:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ones(DIM, dtype="<f4"), version=(2, 0))
    path = tmp_path / "v2.npy"
    path.write_bytes(buffer.getvalue())
    assert read_embedding_file(path, DIM) == pytest.approx(np.full(DIM, DIM**-0.5))
    big_endian = tmp_path / "be.npy"
    big_endian.write_bytes(_npy_bytes(np.arange(1, DIM + 1, dtype=">f8")))
    expected = np.arange(1, DIM + 1) / np.linalg.norm(np.arange(1, DIM + 1))
    assert read_embedding_file(big_endian, DIM) == pytest.approx(expected)


def test_an_oversized_json_embedding_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with path.open("wb") as handle:
        handle.truncate(17 * 1024 * 1024)
    with pytest.raises(EmbeddingError, match=r"17\.0 MB.*at most 16 MB"):
        read_embedding_file(path, DIM)


def test_cli_refuses_hostile_embedding_files_with_exit_2(home: Path, tmp_path: Path) -> None:
    frip("engine", "create", "e")
    huge = tmp_path / "huge.npy"
    huge.write_bytes(
        _npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (999999999999,), }")
    )
    garbled = tmp_path / "garbled.npy"
    garbled.write_bytes(_npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (5"))
    digits = tmp_path / "digits.json"
    digits.write_text("[" + "9" * 5000 + "]")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for path, named in [
        (huge, "at most 65,536"),
        (garbled, "header"),
        (digits, "too many digits"),
        (deep, "nested too deeply"),
    ]:
        done = frip("enrol", "e", "--subject", "s", "--embedding", str(path), code=2)
        assert named in done.stderr and "Unable to allocate" not in done.stderr


# ---------------------------------------------------------- 13 (more): profile values
@pytest.mark.parametrize(
    ("section", "body", "named"),
    [
        (
            "extractor",
            {"det_sizes": "x"},
            r"\[extractor\] extractor 'arcface': det_sizes: expected a list of integers, "
            r"got 'x' \(text\)",
        ),
        (
            "he",
            {"coeff_mod_bit_sizes": [60, "x"]},
            r"\[he\] he backend 'tenseal': coeff_mod_bit_sizes: expected a list of integers, "
            r"got \[60, 'x'\]",
        ),
        ("he", {"poly_modulus_degree": 8192.0}, r"poly_modulus_degree: expected an integer"),
        ("he", {"preset": 3}, r"\[he\] .*preset: expected text, got 3 \(integer\)"),
        ("he", {"scorer_threads": True}, r"scorer_threads: expected an integer, got True"),
        ("extractor", {"det_threshold": "0.5"}, r"det_threshold: expected a number"),
        ("key_store", {"scrypt_log2_n": "15"}, r"\[key_store\] .*scrypt_log2_n: expected"),
        (
            "protection",
            {"plugin": "pe-miu", "block_size": 0},
            r"\[protection\] protection 'pe-miu': .*block_size.*positive integer",
        ),
        ("protection", {"plugin": "pe-miu", "min_complexity": 1.5}, r"min_complexity: expected"),
    ],
)
def test_profile_values_of_the_wrong_type_or_range_are_profile_errors(
    home: Path, section: str, body: dict[str, object], named: str
) -> None:
    _refused_at_create(home, section, body, named)


class _Typed:
    """A third-party clusterer with every simple annotation the generic check reads."""

    def __init__(
        self,
        count: int = 1,
        ratio: float = 0.5,
        label: str = "a",
        flag: bool = False,
        sizes: list[int] | None = None,
        pair: tuple[int, int] = (1, 2),
        maybe: int | None = None,
        free: Any = None,
    ) -> None:
        if count > 100:
            raise ValueError(f"count {count} is over 100")
        self.values = (count, ratio, label, flag, sizes, pair, maybe, free)

    # the rest of what a clusterer provides (plugins.create checks it)
    name, routed, probe_clusters, max_size, fill, clusters = "typed", False, None, None, 1.0, None

    def fit(self, embeddings: Any, k: int) -> Any:
        raise NotImplementedError


class _TypedPlugin:
    @hookimpl
    def register_clusterers(self, register: Any) -> None:
        register("typed", _Typed)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"count": "1"}, r"count: expected an integer, got '1' \(text\)"),
        ({"count": 1.0}, r"count: expected an integer, got 1\.0"),
        ({"ratio": "0.5"}, r"ratio: expected a number"),
        ({"ratio": 10**400}, r"ratio: expected a number"),  # no float64 holds it
        ({"label": ["a"]}, r"label: expected text"),
        ({"flag": "false"}, r"flag: expected true or false"),
        ({"flag": 0}, r"flag: expected true or false"),
        ({"sizes": [1, True]}, r"sizes: expected a list of integers"),
        ({"sizes": 3}, r"sizes: expected a list of integers"),
        ({"pair": [1]}, r"pair: expected a list of 2 values \(an integer, an integer\)"),
        ({"pair": [1, "2"]}, r"pair: expected a list of 2 values"),
        ({"maybe": "3"}, r"maybe: expected an integer"),
    ],
)
def test_annotated_factory_parameters_are_type_checked_generically(
    fresh_plugins: None, params: dict[str, object], named: str
) -> None:
    from frip_engine import plugins
    from frip_engine.errors import PluginError

    plugins.register_plugin(_TypedPlugin(), "typed-plugin")
    with pytest.raises(PluginError, match=named):
        plugins.create("clusterer", "typed", **params)


def test_values_that_fit_their_annotations_pass_unchanged(fresh_plugins: None) -> None:
    from frip_engine import plugins

    plugins.register_plugin(_TypedPlugin(), "typed-plugin")
    made = plugins.create(
        "clusterer",
        "typed",
        count=3,
        ratio=1,
        label="b",
        flag=True,
        sizes=[1, 2],
        pair=[3, 4],
        maybe=None,
        free={"any": "thing"},
    )
    assert made.values == (3, 1, "b", True, [1, 2], [3, 4], None, {"any": "thing"})


def test_a_factory_refusing_a_value_is_a_profile_error_naming_section_and_plugin(
    fresh_plugins: None, home: Path
) -> None:
    from frip_engine import plugins
    from frip_engine.errors import ProfileError
    from frip_engine.profile import Profile, build

    plugins.register_plugin(_TypedPlugin(), "typed-plugin")
    profile = Profile.from_dict(
        {"engine": {"name": "x"}, "clusterer": {"plugin": "typed", "count": 101}}
    )
    with pytest.raises(ProfileError, match=r"\[clusterer\] clusterer 'typed': count 101 is over"):
        build(profile)


def test_cli_profile_value_errors_exit_4_labelled_with_the_profile_file(
    home: Path, tmp_path: Path
) -> None:
    path = tmp_path / "mine.toml"
    for body, named in [
        ("[protection]\nplugin = 'pe-miu'\nblock_size = 0\n", "[protection] protection 'pe-miu'"),
        ("[extractor]\ndet_sizes = 'x'\n", "det_sizes: expected a list of integers"),
        ("[engine]\nworkers = 0\n", f"{path} (with the command line's options): [engine] workers"),
        (
            "[engine]\nthreshold = 7\n",
            f"{path} (with the command line's options): [engine] threshold 7",
        ),
        (
            "[extractr]\nplugin = 'arcface'\n",
            f"{path} (with the command line's options): unknown section",
        ),
    ]:
        path.write_text(body)
        done = frip("engine", "create", "e", "--profile", str(path), code=4)
        assert named in done.stderr and "command line:" not in done.stderr, done.stderr


# ---------------------------------------------------------- 13 (more): store paths
def _with_path(section: str, path: str) -> dict[str, Any]:
    return {
        "engine": {"name": "placed", "insecure": True},
        "he": {"plugin": "plaintext"},
        section: {"path": path},
    }


@pytest.mark.parametrize("section", ["key_store", "gallery_store"])
def test_store_paths_are_absolute_or_inside_the_engine_folder(
    home: Path, tmp_path: Path, section: str
) -> None:
    """No folder is made outside the engine's, and a relative path never depends on the
    folder the command was run from."""
    from frip_engine.errors import ProfileError
    from frip_engine.profile import Profile

    missing = tmp_path / "nowhere" / "file.db"
    for path, named in [
        (str(missing), rf"\[{section}\] path {missing}: the folder {missing.parent} does not"),
        ("../escape.db", rf"\[{section}\] path '\.\./escape\.db'.*may not leave"),
        ("sub/../../escape.db", "may not leave"),
        (str(tmp_path), r"is a folder"),
        ("nul\x00byte.db", "not a usable file path"),
        ("/" + "x" * 5000, "not a usable file path"),
        (str(tmp_path / ("x" * 300)), "not a usable file path"),
        ("~no-such-user-here/g.db", "not a usable file path"),
    ]:
        with pytest.raises(ProfileError, match=named):
            Engine.create(Profile.from_dict(_with_path(section, path)), home)
        assert not missing.parent.exists() and not (home / "engines" / "placed").exists()
    assert not (home / "engines" / "escape.db").exists()


@pytest.mark.parametrize("section", ["key_store", "gallery_store"])
def test_relative_and_absolute_store_paths_resolve_and_show(
    home: Path, tmp_path: Path, section: str
) -> None:
    from frip_engine.profile import Profile

    with Engine.create(Profile.from_dict(_with_path(section, "mine.db")), home) as engine:
        inside = home / "engines" / "placed" / "mine.db"
        assert inside.is_file() and str(inside) in str(engine.stats())
    elsewhere = tmp_path / "elsewhere.db"
    profile = Profile.from_dict(_with_path(section, str(elsewhere)) | {"engine": {"name": "far"}})
    profile.insecure = True
    Engine.create(profile, home).close()
    assert elsewhere.is_file()
    shown = json.loads(frip("engine", "show", "far", "--json").stdout)
    assert str(elsewhere) in shown[section]


def test_the_pkcs11_key_file_follows_the_same_path_rule(tmp_path: Path) -> None:
    from frip_engine import plugins
    from frip_engine.errors import ProfileError

    store = plugins.create("key_store", "pkcs11", path="../keys.sealed")
    with pytest.raises(ProfileError, match=r"\[key_store\] path '\.\./keys\.sealed'.*may not"):
        store.bind(str(tmp_path))
    placed = plugins.create("key_store", "pkcs11", path="keys.sealed")
    placed.bind(str(tmp_path))
    assert placed.path == tmp_path / "keys.sealed"


def test_a_path_that_is_not_a_regular_file_is_named_as_such(
    plain: Engine, home: Path, tmp_path: Path
) -> None:
    from frip_engine.embeddings import read_embedding_file
    from frip_engine.images import load_image

    for special in (Path("/dev/null"), tmp_path):
        with pytest.raises(InputError, match="not a regular file"):
            read_embedding_file(special, 512)
        with pytest.raises(InputError, match="not a regular file"):
            load_image(special)
        with pytest.raises(InputError, match="not a regular file"):
            plain.enrol("x", special)
    plain.close()
    done = frip("verify", "plain", "alice", "--embedding", "/dev/null", code=2)
    assert "/dev/null is not a regular file" in done.stderr, done.stderr


def test_a_number_too_long_to_print_is_described_not_a_traceback(plain: Engine) -> None:
    vector = unit_vectors(1)[0]
    huge = -(10**5000)  # repr() of it raises ValueError (over 4300 digits)
    with pytest.raises(InputError, match="over 4300 digits"):
        plain.identify(embedding=vector, threshold=huge)
    with pytest.raises(InputError, match="over 4300 digits"):
        plain.identify(embedding=vector, top_k=huge)
    with pytest.raises(InputError, match="over 4300 digits"):
        plain.identify(embedding=vector, probe_clusters=huge)
