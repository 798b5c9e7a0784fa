"""``frip serve``, ``frip vendors`` and ``frip audit``: the linkage service and its admin.

Mounted by ``frip_engine.cli`` with ``add_serve_commands``. Starlette and uvicorn are
imported only inside ``frip serve``. Vendor administration is CLI-only on purpose: the
HTTP API has no endpoint that creates, lists or revokes keys.
"""

from __future__ import annotations

import getpass
import json
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from frip_engine.cli.output import err, out, styled
from frip_engine.errors import InputError, MissingFileError
from frip_engine.validate import MAX_SECONDS, check_option, refuse_special_file

MAX_BODY_MB = 1024.0  # --max-body-mb: a request body of at most 1 GiB
MAX_RATE = 1e6  # --rate: requests per second and key

if TYPE_CHECKING:
    from frip_engine.service.vendors import Vendors

vendors_app = typer.Typer(
    help="Vendors of the linkage service: API keys, the engines they own, linkage grants.",
    no_args_is_help=True,
)
audit_app = typer.Typer(help="The linkage service's audit log.", no_args_is_help=True)
portal_app = typer.Typer(help="The registration portal's operator console.", no_args_is_help=True)

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", envvar="FRIP_HOME", help="Where engines live (default: $FRIP_HOME)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _home(home: Path | None) -> Path:
    from frip_engine.profile import engines_home

    return home or engines_home()


def _admin_event(home: Path, action: str, **outcome: str) -> None:
    from frip_engine.service.audit import AuditLog, Event

    audit = AuditLog(home)
    try:
        audit.append(Event(actor=f"admin:{getpass.getuser()}", action=action, outcome=outcome))
    finally:
        audit.close()


def _vendors(home: Path) -> Vendors:
    from frip_engine.service.db import Database
    from frip_engine.service.vendors import Vendors

    return Vendors(Database(home / "service.sqlite"))


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8443,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate chain (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, MiB.")] = 8.0,
    rate: Annotated[float, typer.Option(help="Requests per second per API key (0: off).")] = 50.0,
    burst: Annotated[int, typer.Option(help="Requests a key may send at once.")] = 100,
    replay_window: Annotated[
        float, typer.Option(help="Seconds X-Request-Time may differ from the server clock.")
    ] = 300.0,
    max_connections: Annotated[
        int, typer.Option(help="Concurrent connections before the server answers 503.")
    ] = 256,
    max_connections_per_client: Annotated[
        int | None,
        typer.Option(
            help="Connections one client address may hold (default: a quarter of "
            "--max-connections, at most 32)."
        ),
    ] = None,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to send a request's headers (else 408).")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to send a request's body (else 408).")
    ] = 60.0,
    keep_alive: Annotated[
        float, typer.Option(help="Seconds an idle kept-alive connection stays open.")
    ] = 5.0,
    access_log: Annotated[
        bool, typer.Option(help="Log each request: route, status, time (never a subject id).")
    ] = True,
    batch_max: Annotated[
        int,
        typer.Option(
            help="Queued identify/verify requests of one engine scored together in one "
            "pass (1: off)."
        ),
    ] = 32,
    batch_wait_ms: Annotated[
        float,
        typer.Option(
            help="Milliseconds to wait for a batch to fill once requests queue (a request "
            "to an idle engine never waits)."
        ),
    ] = 2.0,
    enrol_group_max: Annotated[
        int,
        typer.Option(
            help="Queued enrolments of one engine encrypted and committed as one group "
            "(a group costs the same encryptions whatever its size; 1: one per group)."
        ),
    ] = 64,
    enrol_group_wait_ms: Annotated[
        float,
        typer.Option(
            help="Milliseconds to wait for an enrolment group to fill once enrolments "
            "queue (an enrolment that finds none queued never waits)."
        ),
    ] = 5.0,
    portal_desk: Annotated[
        str | None,
        typer.Option(
            help="Serve the registration portal (/portal) as this registration-desk vendor: "
            "people enrol into the engines linked to it (frip vendors link)."
        ),
    ] = None,
    trusted_proxy: Annotated[
        str | None,
        typer.Option(
            help="Address of a reverse proxy whose X-Forwarded-For and X-Forwarded-Proto "
            "headers name the client and scheme (without it, they are ignored)."
        ),
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Run the linkage service: HTTP(S) API over the engines in the home folder."""
    from frip_engine.service.app import ServiceConfig, create_app
    from frip_engine.service.server import ConnectionLimits, build_server

    if (tls_cert is None) != (tls_key is None):
        raise InputError("give both --tls-cert and --tls-key, or neither")
    for path in (tls_cert, tls_key):
        if path is not None:
            refuse_special_file(path, str(path))
            if not path.is_file():
                raise MissingFileError(f"{path} does not exist")
    check_option("--max-body-mb", max_body_mb, 0, MAX_BODY_MB, low_ok=False)
    check_option("--rate", rate, 0, MAX_RATE, low_ok=True)
    check_option("--replay-window", replay_window, 0, MAX_SECONDS, low_ok=False)
    if burst < 1:
        raise InputError(f"--burst must be >= 1, not {burst}")
    if not 0 < port < 65536:
        raise InputError(f"--port {port} must be in 1..65535")
    per_client = max_connections_per_client or max(1, min(32, max_connections // 4))
    limits = ConnectionLimits(max_connections, per_client, header_timeout, body_timeout, keep_alive)
    limits.check()
    config = ServiceConfig(
        home=_home(home),
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        rate=rate,
        burst=burst,
        replay_window=replay_window,
        access_log=access_log,
        batch_max=batch_max,
        batch_wait_ms=batch_wait_ms,
        enrol_group_max=enrol_group_max,
        enrol_group_wait_ms=enrol_group_wait_ms,
        portal_desk=portal_desk,
    )
    config.check()
    tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
    if tls is not None:
        _check_tls(*tls)
    _check_port(host, port)
    if tls_cert is None and host not in ("127.0.0.1", "::1", "localhost"):
        warning = f": serving on {host} without TLS; API keys travel in clear"
        err.print(styled(("warning", "yellow"), warning))
    server = build_server(create_app(config), host, port, limits, tls, trusted_proxy=trusted_proxy)
    server.run()


def _check_tls(cert: Path, key: Path) -> None:
    """Load the TLS pair as the server will; InputError naming the file that is wrong
    (no certificate, no key, a passphrase-protected key, a key of another certificate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=cert)  # only certificates load here
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise InputError(f"--tls-cert {cert}: no PEM certificate in it; is it the key?") from exc

    def no_passphrase() -> str:
        raise InputError(f"--tls-key {key} is passphrase-protected: give an unencrypted key")

    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise InputError(
                f"--tls-key {key} does not match the certificate in --tls-cert {cert}"
            ) from exc
        raise InputError(
            f"--tls-key {key}: no usable PEM private key in it; is it the certificate?"
        ) from exc
    except OSError as exc:
        raise InputError(f"--tls-key {key}: cannot read it ({exc.strerror})") from exc


def _check_port(host: str, port: int) -> None:
    """Bind ``host:port`` as uvicorn will and let it go: InputError when the address is
    taken, not local or not allowed, before the server logs anything."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise InputError(
                f"cannot listen on {host}:{port}: {why.lower()}; choose another --port or "
                "--host, or stop what uses it"
            ) from exc


EngineOpt = Annotated[list[str], typer.Option("--engine", help="An engine name (repeatable).")]


@vendors_app.command("create")
def vendors_create(
    name: str,
    engine: Annotated[
        list[str] | None,
        typer.Option(help="An engine the vendor owns (repeatable; none for a linkage desk)."),
    ] = None,
    adapter: Annotated[
        str | None, typer.Option(help="Vendor adapter its engines' templates are written in.")
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Create a vendor owning its engines (each engine has one owner); prints its API key once."""
    from frip_engine import plugins
    from frip_engine.engine import list_engines

    root = _home(home)
    engines = engine or []
    if adapter is not None:
        plugins.registry().get("adapter", adapter)  # unknown adapter: a clear error now
    key = _vendors(root).create(name, engines, adapter)
    _admin_event(root, "vendor_create", vendor=name, engines=",".join(sorted(engines)))
    missing = sorted(set(engines) - set(list_engines(root)))
    if missing:
        err.print(styled(("note", "yellow"), f": no such engine yet: {', '.join(missing)}"))
    owned = ", ".join(sorted(set(engines))) or "no engine"
    out.print(styled("vendor ", (name, "bold"), f" owns: {owned}"))
    out.print("API key (shown once, store it now):")
    typer.echo(key)


@vendors_app.command("link")
def vendors_link(name: str, engine: EngineOpt, home: HomeOpt = None) -> None:
    """Opt engines into NAME's linkage, for their owners: NAME may then enrol consenting
    registrants into them via /v1/linkage and erase them on revocation, nothing more."""
    root = _home(home)
    _vendors(root).link(name, engine)
    _admin_event(root, "linkage_grant", vendor=name, engines=",".join(sorted(engine)))
    linked = ", ".join(sorted(engine))
    out.print(styled("vendor ", (name, "bold"), f" may link registrants into: {linked}"))


@vendors_app.command("unlink")
def vendors_unlink(name: str, engine: EngineOpt, home: HomeOpt = None) -> None:
    """Withdraw linkage grants (consents already given can still be revoked)."""
    root = _home(home)
    _vendors(root).unlink(name, engine)
    _admin_event(root, "linkage_ungrant", vendor=name, engines=",".join(sorted(engine)))
    unlinked = ", ".join(sorted(engine))
    out.print(styled("vendor ", (name, "bold"), f" may no longer link into: {unlinked}"))


@vendors_app.command("add-key")
def vendors_add_key(name: str, home: HomeOpt = None) -> None:
    """Another API key for a vendor (rotate: add one, switch clients, revoke the old)."""
    root = _home(home)
    key = _vendors(root).add_key(name)
    _admin_event(root, "key_create", vendor=name, key_id=key.split("_")[1])
    out.print("API key (shown once, store it now):")
    typer.echo(key)


@vendors_app.command("list")
def vendors_list(as_json: JsonOpt = False, home: HomeOpt = None) -> None:
    """Vendors, their engines and key ids (never a key or its hash)."""
    listing = _vendors(_home(home)).listing()
    if as_json:
        typer.echo(json.dumps(listing, indent=2))
        return
    table = Table(title="vendors")
    for column in ("vendor", "owns", "links into", "key id", "created", "revoked"):
        table.add_column(column)
    for vendor in listing:
        keys = vendor["keys"]
        assert isinstance(keys, list)
        engines = ", ".join(vendor["engines"])  # type: ignore[arg-type]
        linked = ", ".join(vendor["linkage"])  # type: ignore[arg-type]
        for i, key in enumerate(keys):
            table.add_row(
                str(vendor["vendor"]) if i == 0 else "",
                engines if i == 0 else "",
                linked if i == 0 else "",
                key["key_id"],
                key["created_at"],
                key["revoked_at"] or "",
            )
    out.print(table)


@vendors_app.command("revoke")
def vendors_revoke(key_id: str, home: HomeOpt = None) -> None:
    """Revoke an API key by its id; a running service refuses it from the next request."""
    root = _home(home)
    vendor = _vendors(root).revoke(key_id)
    _admin_event(root, "key_revoke", vendor=vendor, key_id=key_id)
    out.print(f"revoked key {key_id} of vendor {vendor}")


@portal_app.command("operator-key")
def portal_operator_key(name: str, home: HomeOpt = None) -> None:
    """A key for the portal's operator console (/portal/console); prints it once."""
    from frip_engine.service.db import Database
    from frip_engine.service.portal.credentials import Operators

    root = _home(home)
    key = Operators(Database(root / "service.sqlite")).create(name)
    _admin_event(root, "operator_create", operator=name)
    out.print("operator key (shown once, store it now):")
    typer.echo(key)


@audit_app.command("verify")
def audit_verify(home: HomeOpt = None) -> None:
    """Recompute the audit log's hash chain; exit 6 naming the first broken row."""
    from frip_engine.service.audit import AuditLog

    audit = AuditLog(_home(home))
    try:
        count = audit.verify()
    finally:
        audit.close()
    out.print(f"audit log intact: {count} event(s), hash chain verified")


def add_serve_commands(app: typer.Typer) -> None:
    """Mount ``frip serve``, ``frip vendors`` and ``frip audit`` on the main CLI."""
    app.command("serve")(serve)
    app.add_typer(vendors_app, name="vendors")
    app.add_typer(audit_app, name="audit")
    app.add_typer(portal_app, name="portal")
