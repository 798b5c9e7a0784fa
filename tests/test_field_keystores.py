"""Field reports on key stores and plugin loading under concurrency (issue 13, items 6 and 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from frip_engine.engine import Engine
from frip_engine.profile import Profile

# --------------------------------------------------------------------------- item 7
# A fresh interpreter (nothing loaded yet): threads race through plugin loading while
# opening one existing engine and creating new ones. Every thread must succeed.
PLUGIN_RACE = """
import json, sys, threading
from pathlib import Path
from frip_engine.engine import Engine
from frip_engine.profile import Profile

home, threads = Path(sys.argv[1]), int(sys.argv[2])
barrier = threading.Barrier(threads)
errors = []

def work(i):
    barrier.wait()
    try:
        if i % 2:
            Engine.open("shared", home).close()
        else:
            profile = {"engine": {"name": f"new{i}", "insecure": True},
                       "he": {"plugin": "plaintext"}, "key_store": {"plugin": "memory"}}
            Engine.create(Profile.from_dict(profile), home).close()
    except BaseException as exc:
        errors.append(f"thread {i}: {type(exc).__name__}: {exc}")

workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps(errors))
"""


def _plaintext(name: str) -> Profile:
    return Profile.from_dict(
        {
            "engine": {"name": name, "insecure": True},
            "he": {"plugin": "plaintext"},
            "key_store": {"plugin": "file"},
        }
    )


def test_threads_opening_and_creating_engines_in_a_fresh_process(home: Path) -> None:
    Engine.create(_plaintext("shared"), home).close()
    for attempt in range(3):  # a race: a few fresh processes, each one must be clean
        run = subprocess.run(
            [sys.executable, "-c", PLUGIN_RACE, str(home), "6"],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        errors = json.loads(run.stdout.strip().splitlines()[-1])
        assert errors == [], f"attempt {attempt}: {errors}"
        for engine in (home / "engines").iterdir():
            if engine.name != "shared":
                subprocess.run(["rm", "-rf", str(engine)], check=True)
