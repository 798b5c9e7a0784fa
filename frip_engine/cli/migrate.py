"""``frip engine migrate``: move an engine's gallery to another gallery store.

Mounted by ``frip_engine.cli`` on ``frip engine`` with ``add_migrate_command``; the engine
is imported inside the command. The work is :func:`frip_engine.migrate.migrate_store`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from frip_engine.cli.output import out
from frip_engine.errors import InputError, ProfileError

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", envvar="FRIP_HOME", help="Where engines live (default: $FRIP_HOME)."),
]


def add_migrate_command(engine_app: typer.Typer) -> None:
    """Mount ``frip engine migrate`` on the ``frip engine`` group."""
    engine_app.command("migrate")(migrate_command)


def migrate_command(
    engine_name: Annotated[str, typer.Argument(metavar="ENGINE")],
    to: Annotated[
        str, typer.Option("--to", help="The gallery store to move to: postgres, sqlite.")
    ],
    dsn: Annotated[
        str | None,
        typer.Option(help="postgres: a connection string without password (default: PG* vars)."),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            help="Store parameter KEY=VALUE (repeatable), e.g. schema=doors, path=g.sqlite."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    home: HomeOpt = None,
) -> None:
    """Move an engine's gallery to another store, verified block by block (SHA-256), then
    switch its profile. The old store is kept, unchanged, for you to delete. The engine
    must be unused: refused (exit 6) while another process has it open (stop frip serve).

    A password is never taken from the command line: PGPASSWORD, ~/.pgpass or PGPASSFILE.
    """
    from frip_engine.engine import Engine
    from frip_engine.migrate import migrate_store

    section: dict[str, Any] = {"plugin": to}
    if dsn is not None:
        section["dsn"] = dsn
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--option wants KEY=VALUE, got {item!r}")
        if key == "password":  # refused as the store refuses one in the dsn (exit 4)
            raise ProfileError(
                "a password is never taken from the command line: use PGPASSWORD, ~/.pgpass "
                "or PGPASSFILE"
            )
        section[key] = value
    with Engine.open(engine_name, home) as engine:
        moved = migrate_store(engine, section)
    if as_json:
        typer.echo(json.dumps(moved, indent=2))
        return
    out.print(
        f"{engine_name}: {moved['subjects']} subjects in {moved['blocks']} blocks moved from "
        f"{moved['from']} to {moved['to']}, verified; the old store is kept: delete it when "
        "content"
    )
