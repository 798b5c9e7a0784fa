"""Field report on the CLI: start-up errors of ``frip serve``, calibrate's profile check,
enrolment output and exit codes, data set names, tables at 80 columns, help and docs, and
broken pipes. Real processes (stdout and stderr are pipes, as in a script)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from test_service_server import _self_signed

REPO = Path(__file__).resolve().parents[1]


def frip(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run the CLI at 80 columns with stdout and stderr as pipes."""
    environ = {**os.environ, "COLUMNS": "80", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "frip_engine", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
    )


def one_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The run failed with ``code`` and printed exactly one ``error:`` line, nothing else."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------------------- 1: serve
def test_serve_on_a_busy_port_is_one_error_line_exit_2(home: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_error(frip("serve", "--port", str(port)), 2)
    assert str(port) in line and "--port" in line


def test_serve_with_cert_and_key_swapped_names_the_file(home: Path, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    line = one_error(frip("serve", "--tls-cert", str(key), "--tls-key", str(cert)), 2)
    assert "--tls-cert" in line and str(key) in line
    (tmp_path / "other").mkdir()
    other_cert, _ = _self_signed(tmp_path / "other")
    line = one_error(frip("serve", "--tls-cert", str(other_cert), "--tls-key", str(key)), 2)
    assert "does not match" in line and str(key) in line
    (tmp_path / "empty.pem").write_text("")
    line = one_error(
        frip("serve", "--tls-cert", str(cert), "--tls-key", str(tmp_path / "empty.pem")), 2
    )
    assert "--tls-key" in line


# ---------------------------------------------------------------------------- 2: calibrate
def test_calibrate_checks_the_profile_before_reading_images(
    home: Path, lfw: Path, tmp_path: Path
) -> None:
    index = str(lfw / "index.csv")  # minutes of extraction if the check came last
    start = time.monotonic()
    missing = tmp_path / "none.toml"
    line = one_error(
        frip("eval", "calibrate", "--index", index, "--write-profile", str(missing)), 3
    )
    assert str(missing) in line
    other = tmp_path / "facenet.toml"
    other.write_text('[engine]\nname = "x"\n[extractor]\nplugin = "facenet"\n')
    line = one_error(frip("eval", "calibrate", "--index", index, "--write-profile", str(other)), 2)
    assert "facenet" in line
    pemiu = tmp_path / "pemiu.toml"
    pemiu.write_text('[engine]\nname = "x"\n[protection]\nplugin = "pe-miu"\n')
    one_error(frip("eval", "calibrate", "--index", index, "--write-profile", str(pemiu)), 2)
    assert time.monotonic() - start < 40


def test_a_profile_of_the_calibrated_combination_passes_the_check(tmp_path: Path) -> None:
    from frip_eval.commands import _check_profile

    plain = tmp_path / "plain.toml"
    plain.write_text('[engine]\nname = "x"\n[extractor]\nplugin = "arcface"\n')
    _check_profile(plain, ("arcface", "none", None))
    pemiu = tmp_path / "pemiu.toml"
    pemiu.write_text('[engine]\nname = "x"\n[protection]\nplugin = "pe-miu"\n')
    _check_profile(pemiu, ("arcface", "pe-miu", 32))


# ---------------------------------------------------------------------------- 3, 4: enrol
def test_failed_single_enrolment_is_one_error_line(home: Path, tmp_path: Path) -> None:
    assert frip("engine", "create", "e", "--preset", "fast").returncode == 0
    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal(512))
    failed = frip("enrol", "e", "--subject", " pad", "--embedding", str(tmp_path / "v.npy"))
    assert "' pad'" in one_error(failed, 2)
    assert failed.stdout == ""
    ok = frip("enrol", "e", "--subject", "a", "--embedding", str(tmp_path / "v.npy"))
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    again = frip("enrol", "e", "--subject", "a", "--embedding", str(tmp_path / "v.npy"))
    assert "'a'" in one_error(again, 2)


def test_bulk_enrolment_failures_exit_2_quoted_no_blank_lines(
    home: Path, lfw: Path, tmp_path: Path
) -> None:
    assert frip("engine", "create", "e", "--preset", "fast").returncode == 0
    index = tmp_path / "people.csv"
    good = lfw / "Adam_Sandler" / "Adam_Sandler_0001.jpg"
    index.write_text(f"path,identity\n{good},Adam\n{tmp_path / 'nosuch.jpg'},Ghost\n")
    result = frip("enrol", "e", "--index", str(index), timeout=60)
    assert result.returncode == 2, result.stderr
    assert "enrolled 1 subject(s)" in result.stdout
    lines = result.stderr.splitlines()
    assert lines and all(line.strip() for line in lines), result.stderr  # no blank lines
    assert any("'Ghost'" in line for line in lines), result.stderr
    readme = (REPO / "README.md").read_text()
    assert "bulk enrolment" in readme.split("| 3 |")[0].split("| 2 |")[1]


def test_shown_quotes_every_subject_id() -> None:
    from frip_engine.cli.output import shown

    assert shown(" pad") == "' pad'"
    assert shown("a\u202eb") == "'a\\u202eb'"
    assert shown("José") == "'José'"


# ---------------------------------------------------------------------------- 5: names
def test_index_data_sets_are_named(tmp_path: Path) -> None:
    from frip_eval.commands import _dataset

    folder = tmp_path / "my-people"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    (folder / "people.csv").write_text("path,identity\na.jpg,A\n")
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        assert _dataset(None, Path("people.csv"), None).root.name == "my-people"
    finally:
        os.chdir(cwd)


def test_calibration_table_shows_no_none() -> None:
    from frip_eval.commands import _cell

    assert _cell(None) == "-" and _cell(32) == "32"


# ---------------------------------------------------------------------------- 6: tables
def test_plugins_table_readable_at_80_columns() -> None:
    result = frip("plugins")
    assert result.returncode == 0, result.stderr
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    assert "…" not in result.stdout  # folded, never cut
    assert "status" in result.stdout and "summary" in result.stdout


def test_eval_identify_table_readable_at_80_columns() -> None:
    from frip_eval.commands import identify_table
    from rich.console import Console

    metrics = {
        "gallery": 748,
        "mated_searches": 1200,
        "non_mated_searches": 3000,
        "rank1": 0.96541,
        "fnir_at_fpir": {k: {"fnir": 0.1234} for k in ("0.01", "0.05", "0.1")},
        "at_threshold": {"threshold": 0.33558, "fnir": 0.0275, "fpir": 0.0099},
    }
    entry = {
        "identification": metrics,
        "encrypted_vs_plaintext": {"decisions_equal": 4200, "decisions_compared": 4200},
        "throughput": {"images_per_second": 123.4},
    }
    summary = {"extractors": {"facenet-pytorch": entry, "arcface": entry}}
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(identify_table(summary))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text and "facenet-pytorch" in text
    assert "0.33558" in text and "all" in text and "12.34%" in text


# ---------------------------------------------------------------------------- 7: help, docs
def test_help_and_docs_say_what_the_code_does() -> None:
    from frip_engine.ckks import PRESETS

    create = frip("engine", "create", "--help", env={"COLUMNS": "200"}).stdout
    assert all(name in create for name in PRESETS)
    calibrate = frip("eval", "calibrate", "--help", env={"COLUMNS": "200"}).stdout
    assert "[engine] threshold" in calibrate
    for doc in ("README.md", "docs/calibration.md"):
        assert "`frip create`" not in (REPO / doc).read_text(), doc


# ---------------------------------------------------------------------------- 8: output
def test_identify_into_a_closed_pipe_exits_141_quietly(home: Path, tmp_path: Path) -> None:
    assert frip("engine", "create", "e", "--preset", "fast").returncode == 0
    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal(512))
    assert (
        frip("enrol", "e", "--subject", "a", "--embedding", str(tmp_path / "v.npy")).returncode == 0
    )
    command = [
        sys.executable,
        "-m",
        "frip_engine",
        "identify",
        "e",
        "--embedding",
        str(tmp_path / "v.npy"),
    ]
    for extra in ([], ["--json"]):  # Rich's console and typer.echo
        reader, writer = os.pipe()
        os.close(reader)  # the reader is gone before the first line (head -1 after its line)
        done = subprocess.run(
            command + extra, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=20
        )
        os.close(writer)
        assert done.returncode == 141 and done.stderr == "", (extra, done.returncode, done.stderr)


def test_decision_wording(home: Path, tmp_path: Path) -> None:
    assert frip("engine", "create", "e", "--preset", "fast").returncode == 0
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.standard_normal(512))
    np.save(tmp_path / "b.npy", rng.standard_normal(512))
    empty = frip("identify", "e", "--embedding", str(tmp_path / "a.npy"))
    assert empty.returncode == 0 and "engine e is empty" in empty.stdout, empty.stdout
    assert "none" not in empty.stdout.splitlines()[0]
    assert (
        frip("enrol", "e", "--subject", "a", "--embedding", str(tmp_path / "a.npy")).returncode == 0
    )
    verify = frip("verify", "e", "a", "--embedding", str(tmp_path / "b.npy")).stdout
    assert "no match (score " in verify and "best" not in verify
    stats = frip("stats", "e").stdout
    assert "bytes_per_subject" in stats
    line = next(x for x in stats.splitlines() if "bytes_per_subject" in x)
    assert "." not in line.split("bytes_per_subject")[1], line
    assert json.loads(frip("stats", "e", "--json").stdout)["bytes_per_subject"] > 0
