"""``frip subjects``, ``frip embed`` and ``frip enrol ENGINE SUBJECT --template FILE
--adapter NAME``: real processes, real faces, one error line and the README's exit code for
each bad input."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import LFW_DEV
from frip_adapter_acme import AcmeV1Adapter

ADAM = LFW_DEV / "Adam_Sandler"
ACME = ("--adapter", "acme-v1")  # one spelling for enrol, identify and verify


def frip(*args: str, code: int = 0, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "frip_engine", *args],
        capture_output=True,
        text=True,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )
    assert result.returncode == code, result.stderr + result.stdout
    if code:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "Traceback" not in result.stderr
    return result


def test_export_an_embedding_then_enrol_it_as_a_vendor_template(home: Path, tmp_path: Path) -> None:
    frip("engine", "create", "doors")
    assert json.loads(frip("subjects", "doors", "--json").stdout) == []
    assert "0 subject(s) enrolled in doors" in frip("subjects", "doors").stdout
    frip("enrol", "doors", "adam", "--image", str(ADAM / "Adam_Sandler_0001.jpg"))

    exported = tmp_path / "adam.npy"
    done = frip(
        "embed", str(ADAM / "Adam_Sandler_0002.jpg"), "--engine", "doors", "-o", str(exported)
    )
    assert f"wrote {exported}: 512-d embedding" in done.stdout
    assert "biometric template in the clear" in done.stderr
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    vector = np.load(exported)
    assert vector.shape == (512,) and abs(np.linalg.norm(vector) - 1) < 1e-9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adam.npy", "frip-home"]

    acmt = tmp_path / "adam.acmt"
    acmt.write_bytes(AcmeV1Adapter().encode(vector))
    frip("enrol", "doors", "adam-acme", "--template", str(acmt), "--adapter", "acme-v1")
    listed = json.loads(frip("subjects", "doors", "--json").stdout)
    assert [row["subject_id"] for row in listed] == ["adam", "adam-acme"]
    assert all(row["images"] == 1 and row["enrolled_at"] for row in listed)
    human = frip("subjects", "doors").stdout
    assert "'adam'" in human and "'adam-acme'" in human and "2 subject(s)" in human

    decision = json.loads(
        frip("identify", "doors", "--embedding", str(exported), "--top-k", "2", "--json").stdout
    )
    assert decision["subject_id"] == "adam-acme"  # its own template, int8-quantised
    assert {c["subject_id"] for c in decision["candidates"]} == {"adam", "adam-acme"}


def test_embed_with_an_extractor_name_writes_0600_whatever_the_umask(tmp_path: Path) -> None:
    out = tmp_path / "sface.npy"
    out.write_bytes(b"old")
    out.chmod(0o644)
    frip("embed", str(ADAM / "Adam_Sandler_0001.jpg"), "--extractor", "sface", "-o", str(out),
         code=2)  # fmt: skip
    assert out.read_bytes() == b"old"  # never replaced without --force
    frip(
        "embed", str(ADAM / "Adam_Sandler_0001.jpg"), "--extractor", "sface", "-o", str(out),
        "--force", umask=0,
    )  # fmt: skip
    assert np.load(out).shape == (128,)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_bad_embed_inputs_are_one_error_line_with_their_exit_code(
    home: Path, tmp_path: Path
) -> None:
    face = str(ADAM / "Adam_Sandler_0001.jpg")
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("RGB", (160, 160), (128, 128, 128)).save(blank)
    (tmp_path / "folder.npy").mkdir()
    (tmp_path / "link.npy").symlink_to(tmp_path / "elsewhere.npy")
    cases = [
        (["-o", str(tmp_path / "a.npy")], 2, "exactly one of --engine"),
        (["--extractor", "arcface", "--engine", "x", "-o", "a.npy"], 2, "exactly one of"),
        (["--extractor", "arcface", "-o", str(tmp_path / "a.txt")], 2, "must name a .npy"),
        (["--engine", "nowhere", "-o", str(tmp_path / "a.npy")], 3, "does not exist"),
        (["--extractor", "nope", "-o", str(tmp_path / "a.npy")], 4, "nope"),
        (["--extractor", "sface", "-o", str(tmp_path / "no" / "a.npy")], 3, "does not exist"),
        (["--extractor", "sface", "-o", str(tmp_path / "folder.npy"), "--force"], 2, "cannot"),
        (["--extractor", "sface", "-o", str(tmp_path / "link.npy"), "--force"], 2, "cannot"),
    ]
    for args, code, says in cases:
        done = frip("embed", face, *args, code=code)
        assert says in done.stderr, (args, done.stderr)
    missing = frip("embed", str(tmp_path / "x.jpg"), "--extractor", "sface", "-o", "a.npy", code=3)
    assert "x.jpg does not exist" in missing.stderr
    frip("embed", str(blank), "--extractor", "sface", "-o", str(tmp_path / "b.npy"), code=2)
    assert not (tmp_path / "b.npy").exists() and not (tmp_path / "elsewhere.npy").exists()
    usage = subprocess.run(
        [sys.executable, "-m", "frip_engine", "embed", face, "--extractor", "sface"],
        capture_output=True,
        text=True,
    )
    assert usage.returncode == 2 and "--output" in usage.stderr  # a required option


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["carol", "--template", "{tmp}/damaged.acmt"], 2, "--template needs --adapter"),
        (["carol", "--template", "{tmp}/absent.acmt", *ACME], 3, "absent.acmt does not exist"),
        (["carol", "--template", "{tmp}/damaged.acmt", "--adapter", "nope"], 4, "nope"),
        (["carol", "--template", "{tmp}/damaged.acmt", *ACME], 2, "ACMT"),
        (["carol", "--subject", "carol", "--image", "x.jpg"], 2, "subject id once"),
        (["carol"], 2, "--image, --embedding and/or --template"),
        (["--folder", "{tmp}", "--template", "{tmp}/damaged.acmt", *ACME], 2, "one SUBJECT"),
        (["--folder", "{tmp}", *ACME], 2, "one SUBJECT"),
    ],
)
def test_bad_template_enrolments_exit_with_their_code(
    home: Path, tmp_path: Path, args: list[str], code: int, says: str
) -> None:
    frip("engine", "create", "t", "--key-store", "memory")
    (tmp_path / "damaged.acmt").write_bytes(b"ACMT" + bytes(40))
    done = frip("enrol", "t", *(a.format(tmp=tmp_path) for a in args), code=code)
    assert says in done.stderr
