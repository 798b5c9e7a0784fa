"""The registration portal in a real browser: Debian's headless Chromium driven by
Playwright, against one ``frip serve`` app in a thread (one server and one browser per
test session). Skipped, with the reason, where Chromium or Playwright is missing
(``make browser`` installs Chromium as root).

Screenshots land in results/portal-browser/; with FRIP_SCREENSHOTS_TO_DOCS=1 a copy of
each goes to docs/portal-*.png (the README's pictures)."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LFW_DEV, PASSPHRASE, REPO
from starlette.routing import Mount

from frip_engine.engine import Engine
from frip_engine.profile import Profile
from frip_engine.service.db import Database
from frip_engine.service.portal.credentials import Operators
from frip_engine.service.vendors import Vendors

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "chromium is not installed (make browser installs it as root): portal browser "
        "tests skipped",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (the dev extra): skipped"
)
httpx = pytest.importorskip("httpx")

ARTEFACTS = REPO / "results" / "portal-browser"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@dataclass
class Live:
    url: str
    keys: dict[str, str]  # acme (owns doors), globex (owns lobby), operator
    portal: Any  # the app's Portal (its rate limits are reset between tests)


def _photo(name: str, n: int = 1) -> Path:
    return LFW_DEV / name / f"{name}_{n:04d}.jpg"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Engines doors (acme's: TenSEAL CKKS, fast preset and scorer) and lobby (globex's:
    the plaintext reference, to keep the session short), both with ArcFace refusing photos
    with several faces and linked to the portal's desk; the app served in a thread."""
    from frip_engine.service.app import ServiceConfig, create_app
    from frip_engine.service.portal.pages import Portal
    from frip_engine.service.server import ConnectionLimits, build_server

    home = tmp_path_factory.mktemp("portal") / "frip-home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FRIP_HOME", str(home))
        patch.setenv("FRIP_PASSPHRASE", PASSPHRASE)
        single = {"plugin": "arcface", "select": "single"}
        profiles = [
            {"engine": {"name": "doors"}, "he": {"preset": "fast", "scorer": "fast"}},
            {"engine": {"name": "lobby", "insecure": True}, "he": {"plugin": "plaintext"}},
        ]
        for profile in profiles:
            Engine.create(Profile.from_dict({**profile, "extractor": single}), home).close()
        vendors = Vendors(Database(home / "service.sqlite"))
        keys = {
            "acme": vendors.create("acme", ["doors"]),
            "globex": vendors.create("globex", ["lobby"]),
        }
        vendors.create("desk", [])
        vendors.link("desk", ["doors", "lobby"])
        keys["operator"] = Operators(Database(home / "service.sqlite")).create("ops")
        app = create_app(ServiceConfig(home, rate=0, access_log=False, portal_desk="desk"))
        portal = next(
            r.routes[0].endpoint.__self__
            for r in app.routes
            if isinstance(r, Mount) and r.path == "/portal"
        )
        assert isinstance(portal, Portal)
        port = _free_port()
        server = build_server(app, "127.0.0.1", port, ConnectionLimits(), configure_logging=False)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.02)
        try:
            yield Live(f"http://127.0.0.1:{port}", keys, portal)
        finally:
            server.should_exit = True
            thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, live: Live) -> Iterator[Any]:
    """A fresh phone-sized browser context (its own cookies), with fresh rate limits."""
    for attempts in live.portal.attempts.values():
        attempts._buckets.clear()
    live.portal.posts._buckets.clear()
    context = browser.new_context(viewport=PHONE, device_scale_factor=1, is_mobile=True)
    context.set_default_timeout(90_000)  # CKKS work on a busy machine
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if "Refused to" in m.text else None)
    yield tab
    context.close()
    assert not errors, f"the browser refused something under the CSP: {errors}"


def shot(tab: Any, name: str) -> None:
    """A full-page screenshot as a test artefact (and in docs/ when asked), after checking
    that the page does not scroll sideways."""
    width = tab.evaluate("document.documentElement.scrollWidth")
    inner = tab.evaluate("window.innerWidth")
    assert width <= inner, f"{name}: {width}px wide in a {inner}px viewport (scrolls sideways)"
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTEFACTS / f"portal-{name}.png"
    tab.screenshot(path=str(target), full_page=True)
    if os.environ.get("FRIP_SCREENSHOTS_TO_DOCS") == "1":
        shutil.copyfile(target, REPO / "docs" / target.name)


def upload(name: str, data: bytes, mime: str = "image/jpeg") -> dict[str, Any]:
    return {"name": name, "mimeType": mime, "buffer": data}


def submit(tab: Any, button: str) -> None:
    """Click a form's button and wait for the page it loads (not the one it leaves)."""
    with tab.expect_navigation():
        tab.click(button)


def register(tab: Any, live: Live, files: list[dict[str, Any]], engines: list[str]) -> None:
    tab.goto(f"{live.url}/portal/")
    tab.check("input[name=consent]")
    tab.set_input_files("#photo", files=files)
    for engine in engines:
        tab.check(f"input[name=engine][value={engine}]")
    submit(tab, "button[type=submit]")


def sign_in(tab: Any, live: Live, code: str) -> None:
    tab.goto(f"{live.url}/portal/manage")
    tab.fill("#code", code)
    submit(tab, "button[type=submit]")


def identify(live: Live, engine: str, photo: Path) -> dict[str, Any]:
    """The owner's identification of a photo through the API."""
    key = live.keys["acme" if engine == "doors" else "globex"]
    headers = {
        "Authorization": f"Bearer {key}",
        "X-Request-Id": uuid.uuid4().hex,
        "X-Request-Time": str(time.time()),
    }
    body = {"image": base64.b64encode(photo.read_bytes()).decode()}
    url = f"{live.url}/v1/engines/{engine}/identify"
    response = httpx.post(url, json=body, headers=headers, timeout=120)  # a busy machine
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def test_register_identify_then_withdraw_from_one_and_from_all(page: Any, live: Live) -> None:
    shot_register = page.goto(f"{live.url}/portal/")
    assert shot_register is not None and shot_register.ok
    shot(page, "phone-register")
    photo = _photo("Adam_Sandler").read_bytes()
    register(page, live, [upload("me.jpg", photo)], ["doors", "lobby"])
    assert page.locator(".outcome .enrolled").count() == 2
    code = page.inner_text("#withdrawal-code")
    assert re.fullmatch(r"([A-Z2-9]{5}-){4}[A-Z2-9]{5}", code)
    assert page.locator(".qr svg").count() == 1
    assert code not in page.url
    shot(page, "phone-registered")
    probe = _photo("Adam_Sandler", 2)
    found = {engine: identify(live, engine, probe) for engine in ("doors", "lobby")}
    for engine, hit in found.items():  # each owner finds the registrant
        assert hit["matched"] and hit["subject_id"].startswith("portal-"), (engine, hit)
    sign_in(page, live, code)
    assert code not in page.url and page.url.endswith("/portal/me")
    held = page.locator(".held li[data-engine]")
    assert sorted(held.evaluate_all("els => els.map(e => e.dataset.engine)")) == ["doors", "lobby"]
    assert page.locator("table.events td", has_text="registered").count() == 2
    shot(page, "phone-my-registration")
    submit(page, ".held li[data-engine=doors] button")
    assert "You were erased from doors" in page.inner_text(".notice")
    assert not identify(live, "doors", probe)["matched"]
    assert identify(live, "lobby", probe)["matched"]
    submit(page, "#withdraw-all")
    assert "no longer works" in page.inner_text(".message")
    for engine in ("doors", "lobby"):
        assert not identify(live, engine, probe)["matched"], engine
    sign_in(page, live, code)
    assert "This code is not valid" in page.inner_text("#code-error")


def _noise_jpeg() -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def _two_faces() -> bytes:
    """Two lfw faces side by side, one image."""
    from PIL import Image

    left = Image.open(_photo("Adam_Sandler")).convert("RGB")
    right = Image.open(_photo("Alan_Trammell")).convert("RGB")
    both = Image.new("RGB", (left.width + right.width, max(left.height, right.height)))
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    out = io.BytesIO()
    both.save(out, format="JPEG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no-face", "no face was found in your photo"),
        ("two-faces", "several faces"),
        ("not-an-image", "Photo 1 cannot be used: not an image file"),
    ],
)
def test_unusable_photos_show_a_clear_message(
    page: Any, live: Live, kind: str, message: str
) -> None:
    files = {
        "no-face": [upload("noise.jpg", _noise_jpeg())],
        "two-faces": [upload("two.jpg", _two_faces())],
        "not-an-image": [upload("notes.txt", b"just some text\n", "text/plain")],
    }[kind]
    register(page, live, files, ["doors", "lobby"])
    if kind == "not-an-image":  # refused before any engine sees it, next to the field
        assert message in page.inner_text("#photo-error")
        assert page.is_checked("input[name=engine][value=doors]")  # the choices kept
        assert page.is_checked("input[name=consent]")
        shot(page, "phone-photo-error")
    else:
        outcome = page.inner_text(".outcome")
        assert outcome.count(message) == 2, outcome
        assert page.locator("#withdrawal-code").count() == 0
        if kind == "two-faces":
            shot(page, "phone-not-registered")


def test_console_refuses_a_registrant_code_and_a_vendor_key(page: Any, live: Live) -> None:
    register(page, live, [upload("me.jpg", _photo("Alejandro_Toledo").read_bytes())], ["lobby"])
    code = page.inner_text("#withdrawal-code")
    for wrong in (code, live.keys["acme"]):
        page.goto(f"{live.url}/portal/console/login")
        page.fill("#key", wrong)
        submit(page, "button[type=submit]")
        assert "not an operator key" in page.inner_text("#key-error")
        page.goto(f"{live.url}/portal/console")
        assert page.url.endswith("/portal/console/login")  # still outside
    page.fill("#key", live.keys["operator"])
    submit(page, "button[type=submit]")
    assert page.url.endswith("/portal/console")
    lobby = page.locator("#engines tr[data-engine=lobby] td").all_inner_texts()
    assert lobby[:2] == ["lobby", "1"]  # this registrant
    assert "linkage_enrol" in page.inner_text("table.events")
    assert "portal-" not in page.content()  # no subject ids, no biometric data
    shot(page, "phone-console")
    page.set_viewport_size(DESKTOP)
    shot(page, "desktop-console")


def test_a_guessed_or_stolen_code_is_refused_and_rate_limited(page: Any, live: Live) -> None:
    register(page, live, [upload("me.jpg", _photo("Ali_Naimi").read_bytes())], ["lobby"])
    code = page.inner_text("#withdrawal-code")
    altered = code[:-1] + ("A" if code[-1] != "A" else "B")
    guessed = "-".join(["ABCDE"] * 5)
    for attempt in (guessed, altered, guessed.lower(), "x", altered):
        sign_in(page, live, attempt)
        assert "This code is not valid" in page.inner_text("#code-error"), attempt
    sign_in(page, live, code)  # the sixth attempt from this address: even the right code
    assert "Too many attempts" in page.inner_text("h1")
    for attempts in live.portal.attempts.values():
        attempts._buckets.clear()
    sign_in(page, live, code)
    assert page.url.endswith("/portal/me")
