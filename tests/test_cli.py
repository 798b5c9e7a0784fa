"""The ``frip`` CLI as a user runs it: real processes, real faces, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from frip_adapter_acme import AcmeV1Adapter


def frip(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "frip_engine", *args], capture_output=True, text=True
    )
    if ok:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def _subset(lfw: Path, root: Path, names: list[str]) -> Path:
    """A folder of <identity>/<image> links to a few lfw-dev people (nothing is copied)."""
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / f"{name}_0001.jpg").symlink_to(lfw / name / f"{name}_0001.jpg")
    return root


def test_a_users_session(home: Path, lfw: Path, tmp_path: Path) -> None:
    names = ["Adam_Sandler", "Andy_Roddick", "Amanda_Bynes", "Alejandro_Toledo"]
    folder = _subset(lfw, tmp_path / "people", names)
    frip("engine", "create", "doors", "--preset", "fast")
    assert json.loads(frip("engine", "list", "--json").stdout) == ["doors"]
    frip("enrol", "doors", "--folder", str(folder))
    frip(
        "enrol",
        "doors",
        "--subject",
        "andy2",
        "--image",
        str(lfw / "Andy_Roddick" / "Andy_Roddick_0003.jpg"),
    )

    probe = lfw / "Adam_Sandler" / "Adam_Sandler_0002.jpg"
    decision = json.loads(frip("identify", "doors", str(probe), "--top-k", "3", "--json").stdout)
    assert decision["matched"] and decision["subject_id"] == "Adam_Sandler"
    assert len(decision["candidates"]) == 3
    assert {
        "probe_encryption",
        "distance_derivation",
        "minimum_selection",
        "other",
        "total",
    } <= set(decision["timings"])
    human = frip("identify", "doors", str(probe)).stdout
    assert "match" in human and "distance_derivation" in human

    verdict = json.loads(frip("verify", "doors", "Andy_Roddick", str(probe), "--json").stdout)
    assert not verdict["matched"]

    stats = json.loads(frip("stats", "doors", "--json").stdout)
    assert stats["subjects"] == 5 and stats["plugins"]["he"] == "tenseal"
    frip("remove", "doors", "Adam_Sandler")
    after = json.loads(frip("identify", "doors", str(probe), "--json").stdout)
    assert after["subject_id"] != "Adam_Sandler"
    assert "Adam_Sandler" not in [c["subject_id"] for c in after["candidates"]]
    assert "subjects" in frip("engine", "show", "doors").stdout


def test_embedding_files_and_vendor_templates(home: Path, lfw: Path, tmp_path: Path) -> None:
    frip("engine", "create", "emb")
    rng = np.random.default_rng(1)
    alice = rng.standard_normal(512)
    np.save(tmp_path / "alice.npy", alice)
    (tmp_path / "alice.json").write_text(json.dumps((alice * 2).tolist()))
    frip("enrol", "emb", "--subject", "alice", "--embedding", str(tmp_path / "alice.npy"))
    hit = json.loads(
        frip("identify", "emb", "--embedding", str(tmp_path / "alice.json"), "--json").stdout
    )
    assert hit["subject_id"] == "alice"
    (tmp_path / "alice.acmt").write_bytes(AcmeV1Adapter().encode(alice))
    vendor = json.loads(
        frip(
            "identify",
            "emb",
            "--template",
            str(tmp_path / "alice.acmt"),
            "--adapter",
            "acme-v1",
            "--json",
        ).stdout
    )
    assert vendor["subject_id"] == "alice" and vendor["score"] > 0.99
    damaged = bytearray((tmp_path / "alice.acmt").read_bytes())
    damaged[20] ^= 1
    (tmp_path / "bad.acmt").write_bytes(bytes(damaged))
    bad = frip(
        "identify",
        "emb",
        "--template",
        str(tmp_path / "bad.acmt"),
        "--adapter",
        "acme-v1",
        ok=False,
    )
    assert bad.returncode == 2 and "CRC" in bad.stderr


def test_errors_become_messages_and_exit_codes(home: Path, lfw: Path, tmp_path: Path) -> None:
    missing = frip(
        "identify", "nowhere", str(lfw / "Adam_Sandler" / "Adam_Sandler_0001.jpg"), ok=False
    )
    assert missing.returncode == 3 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr

    weak = frip("engine", "create", "weak", "--preset", "turbo", ok=False)
    assert weak.returncode == 4 and "unknown CKKS preset" in weak.stderr

    frip("engine", "create", "e")
    np.save(tmp_path / "short.npy", np.ones(10))
    short = frip("identify", "e", "--embedding", str(tmp_path / "short.npy"), ok=False)
    assert short.returncode == 2 and "dimension 10" in short.stderr

    (tmp_path / "notes.txt").write_text("hello")
    bad_image = frip(
        "enrol", "e", "--subject", "x", "--image", str(tmp_path / "notes.txt"), ok=False
    )
    assert bad_image.returncode == 2 and "not an image" in bad_image.stderr

    unknown = frip("remove", "e", "nobody", ok=False)
    assert unknown.returncode == 3 and "not enrolled" in unknown.stderr

    both = frip("identify", "e", ok=False)
    assert both.returncode == 2 and "exactly one probe" in both.stderr


def test_wrong_passphrase_exit_code(home: Path, monkeypatch: object, tmp_path: Path) -> None:
    frip("engine", "create", "locked")
    np.save(tmp_path / "v.npy", np.ones(512))
    frip("enrol", "locked", "--subject", "v", "--embedding", str(tmp_path / "v.npy"))
    import os

    env = dict(os.environ, FRIP_PASSPHRASE="nope")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "frip_engine",
            "identify",
            "locked",
            "--embedding",
            str(tmp_path / "v.npy"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 5 and "wrong passphrase" in result.stderr


def test_create_from_a_profile_file_keeps_every_engine_key(home: Path, tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('[engine]\nname = "ignored"\ndimension = 128\n')
    refused = frip("engine", "create", "fromfile", "--profile", str(profile), ok=False)
    assert refused.returncode == 4 and "dimension = 128" in refused.stderr
    profile.write_text('[engine]\nname = "x"\nthreshold = 0.5\n[he]\npreset = "precise"\n')
    frip("engine", "create", "fromfile", "--profile", str(profile))
    stats = json.loads(frip("stats", "fromfile", "--json").stdout)
    assert stats["threshold"] == 0.5 and "q=[60,40,60]" in stats["he"]
