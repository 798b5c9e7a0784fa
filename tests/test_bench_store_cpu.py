"""``frip bench store``'s CPU accounting (issue 19): the writers' ceiling counts the local
PostgreSQL server's CPU (the postmaster and every process it started) and the cores other
work left idle."""

from __future__ import annotations

from typing import Any

import pytest
from frip_eval import bench_store


def test_the_server_found_from_a_connection_and_its_cpu_counted(
    postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    for key, value in postgres_server.env("postgres").items():
        monkeypatch.setenv(key, value)
    postmaster = int((postgres_server.data / "postmaster.pid").read_text().split()[0])
    assert bench_store._postmaster(None) == postmaster
    before = bench_store.server_cpu(postmaster)
    with psycopg.connect() as conn:  # a backend that burns CPU, then ends
        conn.execute("SELECT sum(i) FROM generate_series(1, 3000000) AS i").fetchone()
    assert bench_store.server_cpu(postmaster) - before > 0.05
    assert bench_store.server_cpu(None) == 0.0


def test_idle_time_grows_while_this_process_sleeps() -> None:
    import time

    before = bench_store.idle_cpu()
    time.sleep(0.3)
    assert bench_store.idle_cpu() >= before
