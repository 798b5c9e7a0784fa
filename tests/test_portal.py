"""The registration portal without a browser (Starlette's TestClient): security headers,
CSRF, rate limits on codes, uploads kept in memory, withdrawal codes and operator keys,
and a registration, opt-in and withdrawal through the linkage operations."""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from frip_engine.engine import Engine
from frip_engine.service.db import Database
from frip_engine.service.portal.credentials import Operators, Registrants, normalise_code
from frip_engine.service.portal.web import CSP
from frip_engine.service.vendors import Vendors

starlette_testclient = pytest.importorskip("starlette.testclient")
pytest.importorskip("jinja2")
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page has no CSRF field"
    return found[1]


def desk_engines(make_engine: Callable[..., Engine], home: Path) -> dict[str, str]:
    """Engines doors and lobby (plaintext reference, one face per photo) linked to the
    portal's desk 'desk'; returns a vendor key and an operator key."""
    for name in ("doors", "lobby"):
        make_engine(
            name,
            engine={"name": name, "insecure": True},
            he={"plugin": "plaintext"},
            extractor={"plugin": "arcface", "select": "single"},
        )
    vendors = Vendors(Database(home / "service.sqlite"))
    vendor_key = vendors.create("acme", ["doors", "lobby"])
    vendors.create("desk", [])
    vendors.link("desk", ["doors", "lobby"])
    operator_key = Operators(Database(home / "service.sqlite")).create("ops")
    return {"vendor": vendor_key, "operator": operator_key}


def portal_client(home: Path, **options: Any) -> Any:
    from frip_engine.service.app import ServiceConfig, create_app

    config = ServiceConfig(home, rate=0, portal_desk="desk")
    return starlette_testclient.TestClient(create_app(config), **options)


@pytest.fixture(name="portal")
def portal_fixture(make_engine: Callable[..., Engine], home: Path) -> Iterator[Any]:
    """A portal client over :func:`desk_engines`, with its keys as ``client.keys``."""
    keys = desk_engines(make_engine, home)
    with portal_client(home) as client:
        client.keys = keys
        client.app_home = home
        yield client


def registration(client: Any, lfw: Path, engines: tuple[str, ...] = ("doors",)) -> Any:
    """POST one registration (Adam Sandler's photo) into ``engines``."""
    photo = (lfw / "Adam_Sandler" / "Adam_Sandler_0001.jpg").read_bytes()
    token = csrf_of(client.get("/portal/").text)
    files = [("photo", ("me.jpg", photo, "image/jpeg"))]
    form = {"csrf": token, "consent": "yes", "engine": list(engines), "age": "41"}
    return client.post("/portal/register", data=form, files=files)


def enrolled_anywhere(home: Path) -> list[Any]:
    """Every trace of a registration: consents, consent rows, codes, gallery subjects."""
    db = Database(home / "service.sqlite")
    found = [tuple(r) for r in db.query("SELECT subject_id FROM consents")]
    found += [tuple(r) for r in db.query("SELECT subject_id FROM portal_registrants")]
    for name in ("doors", "lobby"):
        with Engine.open(name, home) as engine:
            found += [(name, s) for s in engine.subjects()]
    return found


class Crash(Exception):
    pass


def test_a_registration_failing_after_enrolment_is_erased(
    portal: Any, lfw: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frip_engine.service.portal.pages import Portal

    async def crash(*args: Any) -> None:
        raise Crash("after enrolment")

    monkeypatch.setattr(Portal, "attributes", crash)
    with pytest.raises(Crash):
        registration(portal, lfw, ("doors", "lobby"))
    portal.__exit__(None, None, None)
    assert enrolled_anywhere(home) == []


def test_a_registration_killed_after_enrolment_is_erased_at_restart(
    make_engine: Callable[..., Engine], lfw: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frip_engine.errors import StoreError
    from frip_engine.service.portal import pages
    from frip_engine.service.portal.pages import Portal

    async def killed(*args: Any) -> None:
        raise Crash("kill -9")  # nothing after this line runs, not even the clean-up

    async def no_cleanup(self: Any, subject: str) -> None:
        pass

    async def failing(*args: Any) -> None:
        raise StoreError("a disk error")

    desk_engines(make_engine, home)
    with monkeypatch.context() as patch, portal_client(home) as client:
        patch.setattr(Portal, "attributes", killed)
        patch.setattr(Portal, "forget", no_cleanup)
        with pytest.raises(Crash):
            registration(client, lfw, ("doors", "lobby"))
    left = enrolled_anywhere(home)  # what the kill left
    assert left
    with monkeypatch.context() as patch:
        patch.setattr(pages, "revoke", failing)
        with portal_client(home) as client:  # a start whose erasure fails still serves
            assert client.get("/portal/").status_code == 200
    assert enrolled_anywhere(home) == left  # ... and leaves it for the next start
    with portal_client(home):
        pass  # a restart
    assert enrolled_anywhere(home) == []


def test_pages_carry_a_strict_csp_and_no_inline_script(portal: Any) -> None:
    page = portal.get("/portal/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    scripts = re.findall(r"<script([^>]*)>", page.text)
    assert scripts and all('src="/portal/static/' in s for s in scripts)  # no inline code
    assert "http://" not in page.text and "https://" not in page.text  # nothing third-party
    assert 'capture="user"' in page.text and 'accept="image/*"' in page.text
    cookie = page.headers["set-cookie"]
    assert "frip_csrf=" in cookie and "httponly" in cookie.lower() and "strict" in cookie.lower()
    assert portal.get("/portal/static/portal.js").status_code == 200


def test_every_form_needs_its_csrf_token(portal: Any) -> None:
    portal.get("/portal/")
    for path in ("/portal/register", "/portal/manage", "/portal/console/login"):
        refused = portal.post(path, data={"code": "x", "key": "x", "csrf": "forged"})
        assert refused.status_code == 403 and "expired or came from another site" in refused.text
    token = csrf_of(portal.get("/portal/manage").text)
    portal.cookies.clear()  # a cross-site post carries no cookie of ours
    assert portal.post("/portal/manage", data={"code": "x", "csrf": token}).status_code == 403


def test_code_attempts_are_rate_limited_per_address(portal: Any) -> None:
    token = csrf_of(portal.get("/portal/manage").text)
    for _ in range(5):
        wrong = portal.post("/portal/manage", data={"code": "AAAAA-" * 4 + "AAAAA", "csrf": token})
        assert wrong.status_code == 403 and "This code is not valid" in wrong.text
    limited = portal.post("/portal/manage", data={"code": "whatever", "csrf": token})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "Too many attempts" in limited.text


def test_uploads_stay_in_memory_and_bad_photos_are_named_next_to_the_field(
    portal: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_disk(self: Any) -> None:
        raise AssertionError("an upload rolled over to a temporary file")

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", no_disk)
    token = csrf_of(portal.get("/portal/").text)
    big = b"not an image" * 300_000  # 3.6 MB: past Starlette's default 1 MiB spool
    files = [("photo", ("a.jpg", big, "image/jpeg"))]
    form = {"csrf": token, "consent": "yes", "engine": ["doors"], "age": "200"}
    page = portal.post("/portal/register", data=form, files=files)
    assert page.status_code == 400
    assert 'id="photo-error"' in page.text and "Photo 1 cannot be used" in page.text
    assert 'id="age-error"' in page.text
    assert 'id="consent-error"' not in page.text


def test_register_opt_in_and_withdraw_through_the_linkage(
    portal: Any, lfw: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    photo = (lfw / "Adam_Sandler" / "Adam_Sandler_0001.jpg").read_bytes()
    token = csrf_of(portal.get("/portal/").text)
    files = [("photo", ("me.jpg", photo, "image/jpeg"))]
    form = {"csrf": token, "consent": "yes", "engine": ["doors"], "age": "41"}
    done = portal.post("/portal/register", data=form, files=files)
    assert done.status_code == 201, done.text
    code = re.search(r'id="withdrawal-code">([A-Z0-9-]+)<', done.text)[1]  # type: ignore[index]
    assert "<svg" in done.text and "style=" not in done.text.split("<svg")[1].split("</svg>")[0]
    me = portal.post("/portal/manage", data={"code": code.lower(), "csrf": token})
    assert me.status_code == 200 and 'data-engine="doors"' in me.text
    token = csrf_of(me.text)  # a new token with the session
    assert "<td>registered</td><td>doors</td><td>enrolled</td>" in me.text  # own audit
    more = portal.post("/portal/opt-in", data={"csrf": token, "engine": ["lobby"]}, files=files)
    assert 'class="enrolled" data-engine="lobby"' in more.text
    one = portal.post("/portal/withdraw", data={"csrf": token, "engine": "doors"})
    assert "You were erased from doors" in one.text
    held = re.findall(r'<li data-engine="(\w+)"', one.text)
    assert held == ["lobby"]
    every = portal.post("/portal/withdraw", data={"csrf": token, "engine": "all"})
    assert "no longer works" in every.text
    again = portal.post("/portal/manage", data={"code": code, "csrf": token})
    assert again.status_code == 403  # the code died with the registration
    assert caplog.records and code not in caplog.text and code.replace("-", "") not in caplog.text


def test_console_takes_an_operator_key_only(portal: Any) -> None:
    assert portal.get("/portal/console", follow_redirects=False).status_code == 303
    token = csrf_of(portal.get("/portal/console/login").text)
    login = "/portal/console/login"
    vendor = portal.post(login, data={"key": portal.keys["vendor"], "csrf": token})
    assert vendor.status_code == 403 and "not an operator key" in vendor.text
    op = portal.post(login, data={"key": portal.keys["operator"], "csrf": token})
    assert op.status_code == 200 and 'data-engine="doors"' in op.text
    assert "Recent audit events" in op.text


def test_codes_are_salted_hashes_found_by_their_lookup_id(home: Path) -> None:
    db = Database(home / "service.sqlite")
    registrants = Registrants(db)
    code = registrants.create("portal-1")
    assert re.fullmatch(r"([A-Z2-9]{5}-){4}[A-Z2-9]{5}", code)
    assert registrants.find(code) is None  # "issuing": the registration is not complete
    registrants.issued("portal-1")
    assert registrants.find(code) == "portal-1"
    assert registrants.find(code.replace("-", " ").lower()) == "portal-1"
    wrong = code[:-1] + ("A" if code[-1] != "A" else "B")
    assert registrants.find(wrong) is None and registrants.find("nonsense") is None
    assert normalise_code("0" * 25) is None  # 0 and O, 1 and I are not in the alphabet
    stored = db.query("SELECT * FROM portal_registrants")[0]
    assert code.replace("-", "")[5:].encode() not in bytes(stored["digest"])
    assert len(bytes(stored["salt"])) == 16
    registrants.delete("portal-1")
    assert registrants.find(code) is None


def test_frip_portal_operator_key_prints_a_working_key_once(home: Path) -> None:
    from typer.testing import CliRunner

    from frip_engine.cli import app

    result = CliRunner().invoke(app, ["portal", "operator-key", "ops"])
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert Operators(Database(home / "service.sqlite")).check(key) == "ops"
    assert key not in (home / "service.sqlite").read_bytes().decode("latin-1")


def test_a_portal_desk_that_is_no_vendor_is_refused_at_start(home: Path) -> None:
    from frip_engine.errors import NotFoundError
    from frip_engine.service.app import ServiceConfig, create_app

    with pytest.raises(NotFoundError, match="vendor 'nobody' does not exist"):
        create_app(ServiceConfig(home, portal_desk="nobody"))


def test_forwarded_headers_are_ignored_unless_a_proxy_is_trusted() -> None:
    from frip_engine.service.server import ConnectionLimits, build_server

    limits = ConnectionLimits(8, 2, 10.0, 60.0, 5.0)
    direct = build_server(lambda *a: None, "127.0.0.1", 1, limits, configure_logging=False)  # type: ignore[arg-type, return-value]
    assert direct.config.proxy_headers is False  # a forged X-Forwarded-For is no address
    proxied = build_server(
        lambda *a: None,  # type: ignore[arg-type, return-value]
        "127.0.0.1",
        1,
        limits,
        configure_logging=False,
        trusted_proxy="10.0.0.7",
    )
    assert proxied.config.proxy_headers is True
    assert proxied.config.forwarded_allow_ips == "10.0.0.7"


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    from starlette.requests import Request

    from frip_engine.service.portal.web import client_address

    def address(host: str) -> str:
        return client_address(Request({"type": "http", "client": (host, 1), "headers": []}))

    assert address("2001:db8:1:2::1") == address("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address("2001:db8:1:3::1") != address("2001:db8:1:2::1")
    assert address("192.0.2.1") == "192.0.2.1"


def test_wrong_codes_do_not_lock_operators_out(portal: Any) -> None:
    token = csrf_of(portal.get("/portal/manage").text)
    for _ in range(6):
        portal.post("/portal/manage", data={"code": "AAAAA-" * 4 + "AAAAA", "csrf": token})
    login = "/portal/console/login"
    op = portal.post(login, data={"key": portal.keys["operator"], "csrf": token})
    assert op.status_code == 200 and "Recent audit events" in op.text


def test_scrypt_checks_run_at_most_two_at_once(
    portal: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time as clock

    from frip_engine.service.portal import credentials

    running, most, lock = [0], [0], threading.Lock()
    real = credentials._hash

    def counted(salt: bytes, secret: str) -> bytes:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        clock.sleep(0.05)
        try:
            return real(salt, secret)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(credentials, "_hash", counted)
    token = csrf_of(portal.get("/portal/manage").text)

    def attempt() -> None:
        portal.post("/portal/manage", data={"code": "x", "csrf": token})

    threads = [threading.Thread(target=attempt) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= most[0] <= credentials.SCRYPT_AT_ONCE == 2


@pytest.mark.parametrize("age", ["²", "٤٢", "9" * 5000, "-1", "131", " 4"])
def test_odd_ages_are_named_next_to_the_field(portal: Any, age: str) -> None:
    token = csrf_of(portal.get("/portal/").text)
    form = {"csrf": token, "consent": "yes", "engine": ["doors"], "age": age}
    page = portal.post("/portal/register", data=form)
    assert page.status_code == 400
    assert 'id="age-error"' in page.text


def secured_html(page: Any) -> None:
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"


def test_portal_errors_are_its_own_pages_with_its_headers(
    portal: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frip_engine.service.portal.pages import Portal

    missing = portal.get("/portal/nothing-here")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    secured_html(missing)
    wrong = portal.delete("/portal/register")
    assert wrong.status_code == 405 and "<h1>" in wrong.text and wrong.headers["allow"]
    secured_html(wrong)

    async def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Portal, "home", broken)
    with portal_client(portal.app_home, raise_server_exceptions=False) as client:
        failed = client.get("/portal/")
    assert failed.status_code == 500 and "a bug" not in failed.text
    secured_html(failed)
    assert portal.get("/api/v1/nothing").headers["content-type"] == "application/json"


def test_the_bare_portal_path_redirects_without_the_host_header(portal: Any) -> None:
    moved = portal.get("/portal", headers={"host": "evil.example"}, follow_redirects=False)
    assert moved.status_code in (307, 308) and moved.headers["location"] == "/portal/"
    secured_html(moved)


def signed_in(client: Any, lfw: Path) -> str:
    """Register into doors and sign in with the code; returns the CSRF token."""
    done = registration(client, lfw)
    assert done.status_code == 201, done.text
    code = re.search(r'id="withdrawal-code">([A-Z0-9-]+)<', done.text)[1]  # type: ignore[index]
    token = csrf_of(client.get("/portal/manage").text)
    me = client.post("/portal/manage", data={"code": code, "csrf": token})
    assert me.status_code == 200
    return csrf_of(me.text)


def at_once(count: int, work: Callable[[], Any]) -> list[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: work(), range(count)))


def test_concurrent_opt_ins_and_withdrawals_act_once(portal: Any, lfw: Path, home: Path) -> None:
    token = signed_in(portal, lfw)
    photo = (lfw / "Adam_Sandler" / "Adam_Sandler_0001.jpg").read_bytes()
    files = [("photo", ("me.jpg", photo, "image/jpeg"))]
    form = {"csrf": token, "engine": ["lobby"]}
    opted = at_once(2, lambda: portal.post("/portal/opt-in", data=form, files=files))
    assert sorted(p.status_code for p in opted) == [200, 400], [p.text for p in opted]
    assert all(p.headers["content-type"].startswith("text/html") for p in opted)
    left = at_once(
        3, lambda: portal.post("/portal/withdraw", data={"csrf": token, "engine": "all"})
    )
    texts = [p.text for p in left]
    assert sum("no longer works" in t for t in texts) == 1
    assert sum("already withdrawn" in t for t in texts) == 2
    rows = Database(home / "audit.sqlite").query(
        "SELECT engine FROM audit WHERE action = 'linkage_revoke'"
    )
    assert sorted(r["engine"] for r in rows) == ["doors", "lobby"]


def test_forms_without_their_cookie_or_type_are_refused_unread(
    portal: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frip_engine.service.portal import web

    token = csrf_of(portal.get("/portal/manage").text)

    async def unread(*args: Any) -> bytes:
        raise AssertionError("the body was read")

    monkeypatch.setattr(web, "read_limited", unread)
    plain = portal.post("/portal/manage", content=b"code=x", headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and "<h1>" in plain.text
    portal.cookies.clear()
    cookieless = portal.post("/portal/manage", data={"code": "x", "csrf": token})
    assert cookieless.status_code == 403
    portal.cookies.set("frip_csrf", "short", path="/portal")
    assert portal.post("/portal/manage", data={"code": "x", "csrf": "short"}).status_code == 403


def test_at_most_four_form_bodies_are_read_at_once(
    portal: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import threading

    from frip_engine.service.portal import web

    running, most, lock = [0], [0], threading.Lock()
    real = web.read_limited

    async def counted(*args: Any) -> bytes:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        await asyncio.sleep(0.05)
        try:
            return await real(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(web, "read_limited", counted)
    token = csrf_of(portal.get("/portal/").text)
    at_once(8, lambda: portal.post("/portal/register", data={"csrf": token}))
    assert 1 <= most[0] <= web.READS_AT_ONCE == 4


def test_csrf_tokens_are_bound_to_the_session_and_a_new_sign_in_ends_the_old(
    portal: Any, lfw: Path
) -> None:
    before = csrf_of(portal.get("/portal/manage").text)
    token = signed_in(portal, lfw)
    assert token != before
    stale = portal.post("/portal/withdraw", data={"csrf": before, "engine": "doors"})
    assert stale.status_code == 403  # a token of the signed-out page
    old_session = portal.cookies.get("frip_session")
    code = portal.post("/portal/sign-out", data={"csrf": token})
    assert code.status_code == 200  # followed to the start page
    assert csrf_of(code.text) not in (token, before)
    page = portal.get("/portal/manage")
    portal.cookies.set("frip_session", old_session, path="/portal")
    assert portal.get("/portal/me").status_code == 401
    assert csrf_of(page.text)


def test_signing_in_again_closes_the_previous_session(portal: Any, lfw: Path) -> None:
    done = registration(portal, lfw)
    code = re.search(r'id="withdrawal-code">([A-Z0-9-]+)<', done.text)[1]  # type: ignore[index]
    token = csrf_of(portal.get("/portal/manage").text)
    me = portal.post("/portal/manage", data={"code": code, "csrf": token})
    first = portal.cookies.get("frip_session")
    again = portal.post("/portal/manage", data={"code": code, "csrf": csrf_of(me.text)})
    assert again.status_code == 200 and portal.cookies.get("frip_session") != first
    portal.cookies.set("frip_session", first, path="/portal")
    assert portal.get("/portal/me").status_code == 401


def test_cookies_over_https_carry_the_host_prefix(home: Path, portal: Any) -> None:
    client = starlette_testclient.TestClient(portal.app, base_url="https://testserver")
    page = client.get("/portal/manage")
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("__Host-frip_csrf=") and "Path=/;" in cookie and "Secure" in cookie
    token = csrf_of(page.text)
    refused = client.post("/portal/manage", data={"code": "x", "csrf": token})
    assert refused.status_code == 403 and "This code is not valid" in refused.text
