"""``frip cluster status ENGINE``: the engine's executor, shard by shard.

Generic over executors (:class:`~frip_engine.contracts.Executor`): it prints what
``status()`` says of each worker or shard: name, node, blocks held, bytes held, health.
The executor is the engine's ``[executor]``, built in this command's process: an executor
whose shards outlive the process that started them (``ray``) shows the cluster's; the
``local`` and ``processes`` executors show this process's own, which hold no block until
they have scored. An executor that reports more (``Engine.executor_details``; ``ray``:
the cluster's key-service actors and each node's residue files, damaged or orphaned ones
flagged) gets one table per topic after the shards', and its rows in ``--json``.
Mounted by ``frip_engine.cli`` with ``add_cluster_commands``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from frip_engine.cli.output import out, print_warnings, styled

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", envvar="FRIP_HOME", help="Where engines live (default: $FRIP_HOME)."),
]


def add_cluster_commands(app: typer.Typer) -> None:
    """Mount ``frip cluster status`` on the top command group."""
    cluster_app = typer.Typer(help="The executor's workers or shards.", no_args_is_help=True)
    cluster_app.command("status")(status_command)
    app.add_typer(cluster_app, name="cluster")


def status_command(
    engine_name: Annotated[str, typer.Argument(metavar="ENGINE")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    prune_orphans: Annotated[
        bool,
        typer.Option(
            "--prune-orphans",
            help="First remove the nodes' residue files of engines that no longer exist.",
        ),
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Show the engine's executor shard by shard: name, node, blocks, bytes held, health;
    then what else it reports (ray: key-service actors, residue files per node)."""
    from frip_engine.engine import Engine
    from frip_engine.profile import executor_warnings

    with Engine.open(engine_name, home) as engine:
        print_warnings(executor_warnings(engine.profile))
        executor, shards = engine.shards()
        details = engine.executor_details(prune_orphans)
    if as_json:
        rows = [{**asdict(s), "blocks": list(s.blocks)} for s in shards]
        found = {"engine": engine_name, "executor": executor, "shards": rows, **details}
        typer.echo(json.dumps(found))
        return
    table = Table(title=f"{engine_name}: executor {executor}", box=box.SIMPLE_HEAD)
    for column in ("shard", "node", "blocks", "bytes held", "health"):
        table.add_column(column, overflow="fold")
    for s in shards:
        health = ("ok", "green") if s.healthy else (f"down: {s.why}", "red")
        blocks = ", ".join(map(str, s.blocks)) or "none loaded"
        cells = (s.name, s.node, blocks, f"{s.bytes_held:,}")
        table.add_row(*map(styled, cells), styled(health))  # no text is read as markup
    out.print(table)
    for topic, topic_rows in details.items():
        _print_rows(topic.replace("_", " "), topic_rows)


def _print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    """One table of ``rows`` (their keys are the columns, in first-seen order; a column
    with one value in every row is said once, in the title); a row whose ``state`` is
    not ``ok`` or ``alive`` in red. No rows: one line saying none."""
    if not rows:
        out.print(styled(f"{title}: none"))
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    same = [c for c in columns if len(rows) > 1 and len({str(r.get(c)) for r in rows}) == 1]
    said = "".join(
        f", {c.replace('_', ' ')} {rows[0][c]}" for c in same if c != "state" and str(rows[0][c])
    )
    table = Table(title=title + said, box=box.SIMPLE_HEAD)
    columns = [c for c in columns if c not in same or c == "state"]
    for column in columns:
        table.add_column(column.replace("_", " "), overflow="fold")
    for row in rows:
        style = "red" if row.get("state", "ok") not in ("ok", "alive") else ""
        table.add_row(*(styled((str(row.get(c, "")), style)) for c in columns))
    out.print(table)
