"""PKCS#11 key store under concurrent processes: unwraps while the KEK is rotated.

    python benchmarks/bench_pkcs11.py                     # 4 readers, 20 rotations
    python benchmarks/bench_pkcs11.py --readers 6 --rotations 60 --foreign 0

A throw-away SoftHSM2 token directory (never the system one) gets one token and two
engines on it (TenSEAL `fast` preset, ``pkcs11`` key store): the way a ``frip serve``
process and CLI commands, or two services, share one token. Worker processes run at once:

- ``--readers`` long-lived readers per engine (like a service): unwrap the HE secret key
  in a loop and check every unwrapped key against the one sealed at creation;
- one rotator per engine: ``rotate_kek`` ``--rotations`` times (like ``frip keys
  rotate-kek``), checking the key still unwraps after each;
- ``--fresh`` launchers: each starts a new process per unwrap (like a CLI command: the
  PKCS#11 library is loaded and initialised each time);
- ``--foreign`` other programs on the token, which know nothing of frip's locks: each
  logs in every 10 ms (SoftHSM rewrites ``token.object`` at each login), so frip's
  processes meet half-written token state and must retry. Their own errors are counted
  apart, not as frip failures.

Readers stop when the rotators are done (or at ``--max-seconds``). Every exception is a
failure, and so is a wrong key. Prints the counts, latencies (p50/p99) and failures, and
saves results/bench/pkcs11.json and docs/bench-pkcs11.md (``--output``/``--doc``). Exit
status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PIN = "2468"
TOKEN = "frip-bench"
SCRIPT = Path(__file__).resolve()


# ----------------------------------------------------------------------------- workers
def _store(token: str, engine_dir: str) -> Any:
    from frip_plugins.key_stores.pkcs11 import PKCS11KeyStore

    store = PKCS11KeyStore(token_label=token)
    store.bind(engine_dir)
    return store


def _unwrap(store: Any, engine_id: str, digest: str) -> None:
    from frip_engine.keyservice import he_key_id

    secret = store.load_secret(engine_id, he_key_id(1))
    if hashlib.sha256(secret).hexdigest() != digest:
        raise AssertionError("the unwrapped key differs from the sealed one")


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__name__}: {exc}"


def worker(args: argparse.Namespace) -> int:
    """One worker process: runs its role and writes its counts to ``args.report``."""
    store = _store(args.token, args.engine_dir)
    deadline = time.monotonic() + args.max_seconds
    stop = Path(args.stop)
    latencies: list[float] = []
    failures: list[str] = []

    def timed(operation: Any) -> None:
        start = time.perf_counter()
        try:
            operation()
        except Exception as exc:  # every kind of failure is counted, none may escape
            failures.append(_failure(exc))
        else:
            latencies.append(time.perf_counter() - start)

    if args.role == "once":
        try:
            _unwrap(store, args.engine_id, args.digest)
        except Exception as exc:
            print(_failure(exc))
            return 1
        return 0
    if args.role == "reader":
        while not stop.exists() and time.monotonic() < deadline:
            timed(lambda: _unwrap(store, args.engine_id, args.digest))
    elif args.role == "rotator":
        for _ in range(args.rotations):
            if time.monotonic() >= deadline:
                break
            timed(lambda: store.rotate_kek(args.engine_id))
            try:
                _unwrap(store, args.engine_id, args.digest)
            except Exception as exc:
                failures.append("after rotation: " + _failure(exc))
            time.sleep(args.pause)
    elif args.role == "foreign":
        _foreign_logins(stop, deadline, latencies, failures)
    elif args.role == "fresh":
        command = [sys.executable, str(SCRIPT), "--worker", "once", *_common(args)]
        while not stop.exists() and time.monotonic() < deadline:
            start = time.perf_counter()
            run = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if run.returncode == 0:
                latencies.append(time.perf_counter() - start)
            else:
                failures.append((run.stdout + run.stderr).strip()[-500:] or "no output")
    from frip_plugins.key_stores.pkcs11 import RETRIES

    report = {"latencies": latencies, "failures": failures, "retried": RETRIES}
    Path(args.report).write_text(json.dumps(report))
    return 0


def _foreign_logins(stop: Path, deadline: float, latencies: list[float], errors: list[str]) -> None:
    """Another program on the token: a login every 10 ms, no frip lock, no retry policy."""
    import pkcs11
    from frip_plugins.key_stores.pkcs11 import DEFAULT_MODULE

    lib = pkcs11.lib(DEFAULT_MODULE)
    while not stop.exists() and time.monotonic() < deadline:
        start = time.perf_counter()
        try:
            with lib.get_token(token_label=TOKEN).open(user_pin=PIN):
                pass
            latencies.append(time.perf_counter() - start)
        except pkcs11.PKCS11Error as exc:
            errors.append(_failure(exc))
            lib.reinitialize()
        time.sleep(0.01)


def _common(args: argparse.Namespace) -> list[str]:
    return [
        "--token",
        args.token,
        "--engine-dir",
        args.engine_dir,
        "--engine-id",
        args.engine_id,
        "--digest",
        args.digest,
        "--stop",
        args.stop,
        "--max-seconds",
        str(args.max_seconds),
    ]


# ----------------------------------------------------------------------------- the run
def _token_directory(root: Path) -> dict[str, str]:
    """A SoftHSM2 configuration with one fresh token under ``root``; returns the env."""
    tool = shutil.which("softhsm2-util")
    if tool is None:
        raise SystemExit("softhsm2-util is not installed (make softhsm, or apt-get softhsm2)")
    (root / "tokens").mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {"SOFTHSM2_CONF": str(conf), "FRIP_PKCS11_PIN": PIN, "FRIP_PASSPHRASE": "unused"}
    subprocess.run(
        [tool, "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", "13579"],
        check=True,
        capture_output=True,
        env={**os.environ, **env},
    )
    return env


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) * 1000 if values else 0.0


def run(
    readers: int,
    rotations: int,
    fresh: int,
    foreign: int,
    pause: float,
    max_seconds: float,
    engines: int,
) -> dict[str, Any]:
    """Set up a token and ``engines`` engines, run the workers, and return the counts."""
    with tempfile.TemporaryDirectory(prefix="frip-bench-pkcs11-") as folder:
        root = Path(folder)
        os.environ.update(_token_directory(root / "softhsm"))
        from frip_engine.engine import Engine
        from frip_engine.keyservice import he_key_id
        from frip_engine.profile import Profile

        home, stop = root / "home", root / "stop"
        children: list[tuple[str, str, subprocess.Popen[bytes]]] = []
        for index in range(engines):
            name = f"service{index}"
            profile = {
                "engine": {"name": name},
                "he": {"preset": "fast"},
                "key_store": {"plugin": "pkcs11", "token_label": TOKEN},
            }
            with Engine.create(Profile.from_dict(profile), home) as engine:
                engine_id = engine.profile.engine_id
                store = engine.parts.key_store
                digest = hashlib.sha256(store.load_secret(engine_id, he_key_id(1))).hexdigest()
                engine_dir = str(engine.directory)
            common = argparse.Namespace(
                token=TOKEN,
                engine_dir=engine_dir,
                engine_id=engine_id,
                digest=digest,
                stop=str(stop),
                max_seconds=max_seconds,
            )
            roles = ["rotator"] + ["reader"] * readers
            roles += (["fresh"] * fresh + ["foreign"] * foreign) if index == 0 else []
            for number, role in enumerate(roles):
                report_path = root / f"{name}-{role}-{number}.json"
                command = [sys.executable, str(SCRIPT), "--worker", role, *_common(common)]
                command += ["--report", str(report_path), "--rotations", str(rotations)]
                command += ["--pause", str(pause)]
                children.append((f"{name}:{role}", str(report_path), subprocess.Popen(command)))
        started = time.monotonic()
        for label, _, child in children:
            if label.endswith(":rotator"):
                child.wait()
        stop.touch()
        for _, _, child in children:
            child.wait()
        seconds = time.monotonic() - started
        by_role: dict[str, dict[str, Any]] = {}
        for label, report, child in children:
            role = label.split(":")[1]
            row = by_role.setdefault(role, {"latencies": [], "failures": [], "retried": Counter()})
            if child.returncode != 0 or not Path(report).is_file():
                row["failures"].append(f"{label} exited with status {child.returncode}")
                continue
            data = json.loads(Path(report).read_text())
            row["latencies"] += data["latencies"]
            row["failures"] += data["failures"]
            row["retried"].update(data["retried"])
    result: dict[str, Any] = {
        "engines": engines,
        "readers_per_engine": readers,
        "rotations_per_engine": rotations,
        "fresh_launchers": fresh,
        "foreign_programs": foreign,
        "seconds": round(seconds, 1),
        "roles": {},
    }
    for role, row in by_role.items():
        latencies, failures = row["latencies"], row["failures"]
        result["roles"][role] = {
            "ok": len(latencies),
            "failures": len(failures),
            "p50_ms": round(_percentile(latencies, 50), 1),
            "p99_ms": round(_percentile(latencies, 99), 1),
            "max_ms": round(max(latencies, default=0.0) * 1000, 1),
            "failure_kinds": dict(Counter(failures).most_common(10)),
            "retried": sum(row["retried"].values()),
            "retried_kinds": dict(row["retried"].most_common(10)),
        }
    result["failures"] = sum(r["failures"] for k, r in result["roles"].items() if k != "foreign")
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# PKCS#11 key store under concurrent processes",
        "",
        f"Measured {result['date']} on {result['machine']}, SoftHSM2 {result['softhsm']} "
        "(file object store).",
        f"Command: `{result['command']}`",
        "",
        f"{result['engines']} engines on one token; per engine one rotator doing "
        f"{result['rotations_per_engine']} KEK rotations and {result['readers_per_engine']} "
        f"long-lived readers unwrapping the HE secret key; {result['fresh_launchers']} "
        f"launcher(s) starting a new process per unwrap (a CLI command); "
        f"{result['foreign_programs']} other program(s) logging in every 10 ms without "
        "frip's locks. "
        f"Run time {result['seconds']} s.",
        "",
        "| role | operations ok | failures | retried attempts | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for role, row in result["roles"].items():
        lines.append(
            f"| {role} | {row['ok']} | {row['failures']} | {row['retried']} | {row['p50_ms']} "
            f"| {row['p99_ms']} "
            f"| {row['max_ms']} |"
        )
    lines += ["", f"Failures of frip operations in all: {result['failures']}."]
    for role, row in result["roles"].items():
        for kind, count in row["failure_kinds"].items():
            owner = "the other program's own errors" if role == "foreign" else role
            lines.append(f"- {owner}, {count}x: `{kind}`")
    for role, row in result["roles"].items():
        for kind, count in row["retried_kinds"].items():
            lines.append(f"- retried in {role}, {count}x: {kind}")
    lines += [
        "",
        "A rotator's latency is one whole `rotate_kek` (new key, re-wrap, switch, destroy the "
        "old key) including its wait for the engine's rotation lock; a fresh unwrap's includes "
        "starting Python and initialising the PKCS#11 library.",
        "",
    ]
    return "\n".join(lines)


def _softhsm_version() -> str:
    try:
        run_ = subprocess.run(["softhsm2-util", "--version"], capture_output=True, text=True)
    except OSError:
        return "?"
    return run_.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readers", type=int, default=4, help="long-lived readers per engine")
    parser.add_argument("--rotations", type=int, default=20, help="KEK rotations per engine")
    parser.add_argument("--fresh", type=int, default=1, help="one-process-per-unwrap launchers")
    parser.add_argument("--foreign", type=int, default=1, help="other programs on the token")
    parser.add_argument("--engines", type=int, default=2, help="engines sharing the token")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between rotations")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--output", type=Path, default=Path("results/bench"))
    parser.add_argument("--doc", type=Path, default=Path("docs/bench-pkcs11.md"))
    # worker mode (internal)
    parser.add_argument("--worker", choices=["reader", "rotator", "fresh", "foreign", "once"])
    for option in ("--token", "--engine-dir", "--engine-id", "--digest", "--stop", "--report"):
        parser.add_argument(option, default="")
    args = parser.parse_args(argv)
    if args.worker:
        args.role = args.worker
        return worker(args)

    result = run(
        args.readers,
        args.rotations,
        args.fresh,
        args.foreign,
        args.pause,
        args.max_seconds,
        args.engines,
    )
    result["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    result["softhsm"] = _softhsm_version()
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["command"] = "python benchmarks/bench_pkcs11.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "pkcs11.json"
    path.write_text(json.dumps(result, indent=2))
    text = markdown(result)
    if str(args.doc):
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(text)
    print(text)
    print(f"saved {path} and {args.doc}")
    return 0 if result["failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
