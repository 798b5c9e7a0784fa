"""The short public API: ``import frip_engine``, ``open_engine``, enrol by path, subjects,
engines as context managers, and the README's Python example run twice on real faces."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import LFW_DEV, PASSPHRASE, REPO, unit_vectors

import frip_engine
from frip_engine import EnrolItem, open_engine
from frip_engine.errors import (
    DuplicateSubjectError,
    InputError,
    MissingFileError,
    NotFoundError,
    ProfileError,
    SubjectError,
)


def _open_files_under(folder: Path) -> list[str]:
    """This process's open file descriptors on files inside ``folder``."""
    fds = Path("/proc/self/fd")
    found = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


def test_import_loads_no_engine_and_names_everything_a_user_needs() -> None:
    code = (
        "import sys, frip_engine;"
        "loaded = [m for m in ('frip_engine.engine', 'frip_engine.probe', 'numpy', 'pluggy', "
        "'tenseal', 'onnxruntime', 'cv2') if m in sys.modules]; print(loaded)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    for name in frip_engine.__all__:
        assert getattr(frip_engine, name) is not None
    assert {"open_engine", "Engine", "EnrolItem", "Decision", "ProfileError"} <= set(
        dir(frip_engine)
    )
    assert {"Probe", "VendorTemplate"} <= set(dir(frip_engine))
    from frip_engine.probe import Probe, VendorTemplate

    assert frip_engine.Probe is Probe and frip_engine.VendorTemplate is VendorTemplate
    assert issubclass(frip_engine.KeyStoreError, frip_engine.FripError)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        frip_engine.nothing_here  # noqa: B018


def test_open_engine_creates_once_then_opens_what_it_created(home: Path) -> None:
    alice, bob = unit_vectors(2, seed=3)
    with open_engine("doors", create=True, extractor="arcface", he="tenseal") as engine:
        assert engine.name == "doors" and engine.subjects() == []
        engine.enrol("alice", embeddings=[alice])
        engine.enrol(EnrolItem("bob", embeddings=[bob]))
        engine_id = engine.profile.engine_id
    with open_engine("doors", create=True, extractor="arcface", he="tenseal") as again:
        assert again.profile.engine_id == engine_id  # opened, not made anew
        assert again.subjects() == ["alice", "bob"]
        records = again.subject_records()
        assert [r.subject_id for r in records] == ["alice", "bob"]
        assert all(r.images == 1 and r.enrolled_at for r in records)
        decision = again.identify(embedding=bob)
        assert decision.matched and decision.subject_id == "bob"
        with pytest.raises(DuplicateSubjectError):
            again.enrol("alice", embeddings=[alice])
    with open_engine("doors") as plain:  # no options: opened as it is
        assert plain.subjects() == ["alice", "bob"]
    assert frip_engine.list_engines() == ["doors"]


def test_an_engine_with_another_profile_is_refused_naming_each_difference(home: Path) -> None:
    open_engine("doors", create=True, he={"plugin": "tenseal", "preset": "fast"}).close()
    with pytest.raises(ProfileError) as refused:
        open_engine("doors", create=True, extractor="sface", he={"preset": "compact"})
    message = str(refused.value)
    assert "engine 'doors' exists with a different profile than asked" in message
    assert "[extractor] plugin is 'arcface', not 'sface'" in message
    assert "[he] preset is 'fast', not 'compact'" in message
    with pytest.raises(ProfileError, match=r"\[engine\] threshold is None, not 0.5"):
        open_engine("doors", threshold=0.5)
    assert _open_files_under(home) == []  # each refused engine was closed


def test_asking_for_the_defaults_opens_an_engine_made_with_them(home: Path) -> None:
    """Spelling out a plugin's default is asking for the same engine, not another one."""
    open_engine("plain", create=True).close()  # every section at its default
    with open_engine(
        "plain", create=True, extractor="arcface", he={"plugin": "tenseal", "preset": "fast"}
    ) as engine:
        assert engine.name == "plain"
    with pytest.raises(ProfileError, match=r"\[he\] preset is 'fast', not 'compact'"):
        open_engine("plain", he={"preset": "compact"})


def test_open_engine_errors_are_typed(home: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="engine 'nowhere' does not exist"):
        open_engine("nowhere")
    with pytest.raises(InputError, match="engine name"):
        open_engine("../up", create=True)
    with pytest.raises(InputError, match="threshold"):
        open_engine("t", create=True, threshold=3.0)
    with pytest.raises(MissingFileError):
        open_engine("t", create=True, profile=tmp_path / "absent.toml")
    with pytest.raises(ProfileError, match="unknown section"):
        open_engine("t", create=True, profile={"extractr": {"plugin": "arcface"}})
    assert frip_engine.list_engines() == []  # nothing was created by a refused call


def test_profile_file_and_options_make_one_profile(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[engine]\nname = "other"\nid = "abc"\n[he]\npreset = "compact"\n')
    with open_engine("p", create=True, profile=path, key_store="memory") as engine:
        assert engine.profile.engine_id != "abc"  # a new engine gets a new id
        assert engine.profile.sections["he"] == {"plugin": "tenseal", "preset": "compact"}
        assert engine.profile.plugin("key_store") == "memory"


def test_enrol_by_path_and_item_and_the_with_block_closes_everything(
    home: Path, tmp_path: Path
) -> None:
    faces = LFW_DEV / "Adam_Sandler"
    with open_engine("faces", create=True) as engine:
        report = engine.enrol(
            "adam", faces / "Adam_Sandler_0001.jpg", str(faces / "Adam_Sandler_0002.jpg")
        )
        assert report.enrolled == ["adam"]
        assert engine.subject_records()[0].images == 2
        with pytest.raises(MissingFileError, match=r"absent\.jpg does not exist"):
            engine.enrol("ghost", tmp_path / "absent.jpg")
        with pytest.raises(InputError, match="inside the EnrolItem"):
            engine.enrol(EnrolItem("x"), "a.jpg")
        good = EnrolItem("adam-2", images=[faces / "Adam_Sandler_0002.jpg"])
        for odd in (..., "bob", {"subject_id": "bob"}, None):
            with pytest.raises(InputError, match=r"item 1 is .*nobody was enrolled"):
                engine.enrol_many([good, odd])  # type: ignore[list-item]
        assert engine.subjects() == ["adam"]  # not even the good item before it
        decision = engine.identify(str(faces / "Adam_Sandler_0003.jpg"))
        assert decision.matched and decision.subject_id == "adam"
        assert _open_files_under(home)  # the gallery is open inside the block
    assert _open_files_under(home) == []
    with pytest.raises(RuntimeError), open_engine("faces") as engine:
        assert engine.subjects() == ["adam"]
        raise RuntimeError("a failure inside the block")
    assert _open_files_under(home) == []


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_leaving_the_with_block_stops_the_worker_processes(home: Path) -> None:
    vector = unit_vectors(1, seed=5)[0]
    with open_engine("w", create=True, key_store="memory", workers=2) as engine:
        engine.enrol("a", embeddings=[vector])
        assert engine.identify(embedding=vector).subject_id == "a"
        assert engine._scorer is not None  # the workers scored
        workers = [pid for pool in engine._scorer._pools for pid in pool._processes]  # type: ignore[union-attr]
        assert workers and all(map(_running, workers))  # started on first use
    deadline = time.monotonic() + 10
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, workers))
    assert _open_files_under(home) == []


def _readme_python_example() -> str:
    """The first Python block of the README's "Python API" section."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "README's Python API section has no python block"
    return found.group(1)


def test_readme_python_example_runs_twice_in_a_row(tmp_path: Path) -> None:
    """Exactly the README's code, in a fresh FRIP_HOME, on real lfw-dev faces; the second
    run opens the engine the first created."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "alice.jpg").symlink_to(LFW_DEV / "Adam_Sandler" / "Adam_Sandler_0001.jpg")
    (work / "probe.jpg").symlink_to(LFW_DEV / "Adam_Sandler" / "Adam_Sandler_0002.jpg")
    script = work / "example.py"
    script.write_text(_readme_python_example())
    environment = {
        **os.environ,
        "FRIP_HOME": str(tmp_path / "frip-home"),
        "FRIP_PASSPHRASE": PASSPHRASE,
    }
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, str(script)], cwd=work, env=environment, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert "alice True ['alice']" in outputs[0]
    assert [p.name for p in (tmp_path / "frip-home" / "engines").iterdir()] == ["doors"]


def test_probe_fields_take_only_their_types() -> None:
    from frip_engine.errors import ProbeError
    from frip_engine.probe import Probe

    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    for odd in (5, [pixels], {"a": 1}, 1.5):
        with pytest.raises(ProbeError, match="an image is a path, str, bytes or"):
            Probe(image=odd)  # type: ignore[arg-type]
    with pytest.raises(ProbeError, match="a template is a VendorTemplate"):
        Probe(template="acme-v1")  # type: ignore[arg-type]
    assert Probe(image=bytearray(b"\xff\xd8")).image == b"\xff\xd8"  # bytes-like: its bytes
    assert Probe(image=memoryview(b"\xff\xd8")).image == b"\xff\xd8"


def test_bad_probes_are_typed_errors_alone_in_a_batch(home: Path) -> None:
    from frip_engine.errors import ProbeError

    vector = unit_vectors(1, seed=7)[0]
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    with open_engine("probes", create=True, key_store="memory") as engine:
        engine.enrol("a", embeddings=[vector])
        for odd in ({"image": 5}, {"image": [pixels]}, [pixels]):
            with pytest.raises(ProbeError):
                engine.identify(odd)  # type: ignore[arg-type]
        with pytest.raises(ProbeError):
            engine.verify("a", {"image": 5})  # type: ignore[arg-type]
        got = engine.identify_many([{"image": 5}, {"embedding": vector}, [pixels]])  # type: ignore[list-item]
        assert isinstance(got[0], ProbeError) and isinstance(got[2], ProbeError)
        assert isinstance(got[1], frip_engine.Decision) and got[1].subject_id == "a"
        for whole in ("a.jpg", b"\xff\xd8", Path("a.jpg"), {"image": "a.jpg"}, pixels):
            with pytest.raises(InputError, match="identify_many takes a sequence of probes"):
                engine.identify_many(whole)  # type: ignore[arg-type]
        matrix = unit_vectors(3, seed=8)
        rows = engine.identify_many(embeddings=matrix)
        assert len(rows) == 3 and all(isinstance(r, frip_engine.Decision) for r in rows)
        with pytest.raises(InputError, match="one row per probe"):
            engine.identify_many(embeddings=vector)


def test_enrol_refuses_what_it_cannot_take_clearly(home: Path) -> None:
    vector = unit_vectors(1, seed=9)[0]
    with open_engine("enrol", create=True, key_store="memory") as engine:
        with pytest.raises(SubjectError, match="no usable image"):
            engine.enrol("s", bytearray(b"not an image"))  # bytes-like: read as its bytes
        for odd in ([Path("a.jpg")], np.zeros((4, 4, 3), dtype=np.uint8), 5):
            with pytest.raises(InputError, match="an image is a path, str or bytes"):
                engine.enrol("s", odd)  # type: ignore[arg-type]
        with pytest.raises(InputError, match=r"embeddings= is a list of vectors.*\[vector\]"):
            engine.enrol("s", embeddings=vector)
        assert engine.subjects() == []


def test_open_engine_argument_types(home: Path, tmp_path: Path) -> None:
    for name in (None, 123, b"doors", Path("doors")):
        with pytest.raises(InputError, match="engine name is a str"):
            open_engine(name)  # type: ignore[arg-type]
    for odd in (5, ["arcface"]):
        with pytest.raises(ProfileError, match=r"\[extractor\] is a plugin name or a table"):
            open_engine("t", create=True, extractor=odd)  # type: ignore[arg-type]
    with pytest.raises(
        ProfileError, match=r"profile is a TOML file.s path \(str or Path\) or a table"
    ):
        open_engine("t", create=True, profile=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(ProfileError, match="is a folder, not a TOML profile"):
        open_engine("t", create=True, profile=tmp_path)
    path = tmp_path / "mine.toml"
    path.write_text('[he]\npreset = "compact"\n')
    with open_engine("t", create=True, profile=str(path), home=str(home), key_store="memory") as e:  # type: ignore[arg-type]
        assert e.profile.sections["he"]["preset"] == "compact"


def test_a_closed_engine_refuses_every_operation(home: Path) -> None:
    from frip_engine.errors import EngineClosedError

    vector = unit_vectors(1, seed=11)[0]
    with open_engine("shut", create=True, key_store="memory") as engine:
        engine.enrol("a", embeddings=[vector])
    engine.close()  # twice: harmless
    with pytest.raises(EngineClosedError):
        engine.__enter__()
    assert issubclass(EngineClosedError, InputError)
    calls = [
        lambda: engine.enrol("b", embeddings=[vector]),
        lambda: engine.enrol_many([EnrolItem("b", embeddings=[vector])]),
        lambda: engine.identify(embedding=vector),
        lambda: engine.identify_many(embeddings=[vector]),
        lambda: engine.verify("a", embedding=vector),
        lambda: engine.remove("a"),
        engine.subjects,
        engine.subject_records,
        engine.stats,
        engine.key_status,
        engine.rotate_he_keys,
        engine.rotate_kek,
    ]
    for call in calls:
        with pytest.raises(EngineClosedError, match="engine 'shut' is closed"):
            call()
    assert _open_files_under(home) == []


def test_template_files_are_read_with_a_cap(tmp_path: Path) -> None:
    import os as _os

    from frip_engine.probe import TEMPLATE_CAP, VendorTemplate

    big = tmp_path / "big.tpl"
    with big.open("wb") as out:
        out.truncate(TEMPLATE_CAP + 1)
    with pytest.raises(InputError, match=r"larger than the 1 MiB a template may be"):
        VendorTemplate.read("acme", big)
    with pytest.raises(InputError, match="is a folder, not a template file"):
        VendorTemplate.read("acme", tmp_path)
    fifo = tmp_path / "fifo"
    _os.mkfifo(fifo)
    with pytest.raises(InputError, match="is not a regular file"):
        VendorTemplate.read("acme", fifo)
    with pytest.raises(MissingFileError, match="does not exist"):
        VendorTemplate.read("acme", tmp_path / "absent")


def test_enrol_takes_embeddings_as_any_iterable_or_a_matrix(home: Path) -> None:
    vectors = unit_vectors(4, seed=12)
    with open_engine("iter", create=True, key_store="memory") as engine:
        assert engine.enrol("g", embeddings=(v for v in vectors[:1])).enrolled == ["g"]
        assert engine.enrol("m", embeddings=vectors[1:2]).enrolled == ["m"]
        with pytest.raises(InputError, match=r"embeddings=\[vector\], not list"):
            engine.enrol("f", embeddings=list(vectors[2]))  # one vector's numbers
        probe = {"image": "a.jpg", 1: 2, "x": 3}
        (answer,) = engine.identify_many([probe])  # type: ignore[list-item]
        assert isinstance(answer, InputError) and "not 'x', 1" in str(answer)
