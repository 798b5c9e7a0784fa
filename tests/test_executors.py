"""The built-in executors (local, processes) pass the executor suite; the profile chooses
one ([executor], or the old [engine] workers); a worker killed mid-call is an explicit
WorkerLostError, never a partial answer, and is replaced."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import unit_vectors

from frip_engine import plugins
from frip_engine.engine import EnrolItem
from frip_engine.errors import NotFoundError, PluginError, ProfileError, WorkerLostError
from frip_engine.parallel import WorkerSetup
from frip_engine.profile import Profile, build
from frip_engine.testing import ExecutorConformance


class TestLocal(ExecutorConformance):
    plugin_name = "local"
    plugin_module = "frip_plugins.executors.local"


class TestProcesses(ExecutorConformance):
    plugin_name = "processes"
    plugin_module = "frip_plugins.executors.processes"
    params: ClassVar[dict[str, Any]] = {"workers": 2}

    def test_a_worker_killed_mid_call_is_worker_lost_then_replaced(
        self, gallery: Any, executor: Any
    ) -> None:
        blocks = gallery.gallery_store.blocks()
        jobs = [(info, self.payloads(gallery, 1)) for info in blocks]
        executor.score_many(jobs)  # the workers are up
        pool = executor._pools[blocks[0].block_id % 2]
        (pid,) = pool._processes
        pool.submit(time.sleep, 30)  # the call below waits behind this
        answer: list[Any] = []

        def call() -> None:
            try:
                answer.append(executor.score_many(jobs))
            except Exception as exc:
                answer.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        caller.join(60)
        (lost,) = answer
        assert isinstance(lost, WorkerLostError), lost
        assert "retry" in str(lost)
        again = executor.score_many(jobs)  # a new worker took its place
        assert again == [self.expected(gallery, info, p) for info, p in jobs]


def _profile(**sections: Any) -> Profile:
    return Profile.from_dict({"engine": {"name": "p"}, **sections})


def test_the_profile_chooses_the_executor() -> None:
    assert _profile().executor() == ("local", {})
    chosen = _profile(executor={"plugin": "processes", "workers": 3})
    assert chosen.executor() == ("processes", {"workers": 3})
    old = Profile.from_dict({"engine": {"name": "p", "workers": 4}})
    assert old.executor() == ("processes", {"workers": 4})  # the old spelling still opens
    assert Profile.from_toml(old.to_toml()).executor() == ("processes", {"workers": 4})
    assert "[executor]" not in _profile().to_toml()  # the default is not written
    assert Profile.from_toml(chosen.to_toml()).executor() == ("processes", {"workers": 3})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"engine": {"name": "p", "workers": 2}, "executor": {"plugin": "local"}}, "old spelling"),
        (
            {"engine": {"name": "p"}, "executor": {"plugin": "dask"}},
            r"\[executor\] unknown executor 'dask'",
        ),
        (
            {"engine": {"name": "p"}, "executor": {"plugin": "processes", "shards": 2}},
            r"no parameter 'shards'; it accepts: workers$",  # not 'setup': the engine gives it
        ),
        ({"engine": {"name": "p"}, "executor": {"plugin": "processes", "workers": "2"}}, "workers"),
        ({"engine": {"name": "p"}, "executor": {"setup": 1}}, "the engine gives it"),
        # values out of range fail at load too, not at the first identify (issue 17)
        (
            {"engine": {"name": "p"}, "executor": {"plugin": "processes", "workers": 0}},
            r"\[executor\] executor 'processes': workers must be an integer from 1 to 64, not 0",
        ),
        (
            {"engine": {"name": "p"}, "executor": {"plugin": "processes", "workers": -2}},
            r"workers must be an integer from 1 to 64, not -2",
        ),
        (
            {"engine": {"name": "p"}, "executor": {"plugin": "ray", "shards": 0}},
            r"\[executor\] executor 'ray': shards must be an integer from 1 to 256, not 0",
        ),
        (
            {"engine": {"name": "p"}, "executor": {"plugin": "ray", "encrypt_workers": -1}},
            r"\[executor\] executor 'ray': encrypt_workers must be an integer from 1 to 64",
        ),
        (
            {
                "engine": {"name": "p"},
                "executor": {"plugin": "ray", "shards": 2, "placement": ["a"]},
            },
            r"\[executor\] executor 'ray': placement names 1 resources for 2 shards",
        ),
    ],
)
def test_a_bad_executor_section_fails_at_load(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        build(Profile.from_dict(data))


def test_a_pickled_setup_leaves_the_engines_blocks_behind(make_engine: Any) -> None:
    engine = make_engine("pickled")
    setup = engine._worker_setup(engine._in_process())
    assert setup.in_process is not None
    copy = pickle.loads(pickle.dumps(setup))
    assert isinstance(copy, WorkerSetup) and copy.in_process is None and copy == setup


def test_an_engine_scores_through_its_executor(make_engine: Any, home: Path) -> None:
    vectors = unit_vectors(3, seed=21)
    engine = make_engine("chosen", executor={"plugin": "processes", "workers": 2})
    engine.enrol_many([EnrolItem(f"s{i}", embeddings=[v]) for i, v in enumerate(vectors)])
    assert engine.identify(embedding=vectors[1]).subject_id == "s1"
    assert engine._scorer is not None and engine._scorer.name == "processes"
    assert engine.stats()["plugins"]["executor"] == "processes"
    statuses = engine._scorer.status()
    assert len(statuses) == 2 and sum(len(s.blocks) for s in statuses) == 1


def test_an_unavailable_executor_says_what_to_install(fresh_plugins: None) -> None:
    from frip_engine.contracts import Requirement
    from frip_engine.hookspecs import hookimpl

    class Missing:
        @staticmethod
        @hookimpl
        def register_executors(register: Any) -> None:
            register(
                "far",
                object,
                requires=(Requirement("no_such_module_xyz", "'frip-engine[far]'"),),
            )

    plugins.register_plugin(Missing, "missing-executor")
    with pytest.raises(PluginError, match=r"pip install 'frip-engine\[far\]'"):
        build(Profile.from_dict({"engine": {"name": "p"}, "executor": {"plugin": "far"}}))


def _frip(*arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "frip_engine", *arguments]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_cluster_status_lists_the_shards(make_engine: Any, home: Path) -> None:
    make_engine("sharded", executor={"plugin": "processes", "workers": 2}).close()
    shown = _frip("cluster", "status", "sharded", "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["engine"] == "sharded" and status["executor"] == "processes"
    assert [s["name"] for s in status["shards"]] == ["worker-0", "worker-1"]
    assert all(s["healthy"] and s["blocks"] == [] for s in status["shards"]), status
    assert set(status["shards"][0]) == {"name", "node", "blocks", "bytes_held", "healthy", "why"}
    table = _frip("cluster", "status", "sharded")
    assert table.returncode == 0 and "worker-1" in table.stdout and "ok" in table.stdout


def test_cluster_status_of_an_unknown_engine_is_not_found(home: Path) -> None:
    shown = _frip("cluster", "status", "nowhere")
    assert shown.returncode == NotFoundError.exit_code, shown
    assert shown.stderr.strip() == "error: engine 'nowhere' does not exist (engines: none)"


def test_engine_create_refuses_a_bad_executor_section_before_making_anything(
    tmp_path: Path,
) -> None:
    """``frip engine create`` with ``workers = 0``: exit 4 (ProfileError), one line naming
    the key and its allowed values, and no engine directory left behind."""
    profile = tmp_path / "p.toml"
    profile.write_text(
        '[engine]\nname = "x"\n[key_store]\nplugin = "memory"\n'
        '[executor]\nplugin = "processes"\nworkers = 0\n'
    )
    home = tmp_path / "home"
    done = subprocess.run(
        [sys.executable, "-m", "frip_engine", "engine", "create", "x", "--profile", str(profile)],
        capture_output=True,
        text=True,
        env={**os.environ, "FRIP_HOME": str(home)},
        timeout=120,
    )
    assert done.returncode == 4, done.stderr
    assert "workers must be an integer from 1 to 64, not 0" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (home / "engines" / "x").exists()
