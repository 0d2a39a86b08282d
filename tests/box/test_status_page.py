"""The status page (`GET /`) in a real headless Chromium against a running daemon with simulated
locks, an unreachable cloud and a Zigbee stick that is not plugged in."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.box.conftest import artifact
from tests.support import DaemonProcess, config_text, free_port, http_json

pytestmark = pytest.mark.stack

PIN = "480613"
MISSING_STICK = "/dev/ttyUSB-gatewayd-test-missing"
# a gateway name that ends shell single quotes, and runs a command if they are not escaped
QUOTED_NAME = "Mary's door'; touch pwned; echo '"


class Box:
    def __init__(self, proc: DaemonProcess, port: int) -> None:
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json(f"{self.base}/status")
        return result

    def act(self, device_id: str, action: str, **inputs: Any) -> str:
        body = {"device_id": device_id, "action": action, "inputs": inputs}
        return str(http_json(f"{self.base}/actions", body)["action_request_id"])

    def simulate(self, device_id: str, what: str, **params: Any) -> None:
        body = {"device_id": device_id, "what": what, "params": params}
        assert http_json(f"{self.base}/simulate", body) == {"ok": True}

    def wait_done(self, action_id: str) -> dict[str, Any]:
        end = time.monotonic() + 15
        while time.monotonic() < end:
            for a in self.status()["actions"]["recent"]:
                if a["id"] == action_id:
                    return dict(a)
            time.sleep(0.05)
        raise AssertionError(f"action {action_id} did not finish")


def start_box(
    tmp_path: Path, *, missing_stick: bool, name: str = "test gateway", extra: str = ""
) -> Box:
    port = free_port()
    cfg = tmp_path / "gatewayd.toml"
    zigbee = f'[drivers.zigbee]\nenabled = true\nradio_type = "znp"\ndevice = "{MISSING_STICK}"\n'
    cloud = f"ws://127.0.0.1:{free_port()}/v1/gateway/tunnel"  # nothing listens there
    text = config_text(
        tmp_path / "state",
        status_port=port,
        latency_ms=150,
        cloud_url=cloud,
        extra=(zigbee if missing_stick else "") + extra,
    )
    cfg.write_text(text.replace('name = "test gateway"', f"name = {json.dumps(name)}"))
    proc = DaemonProcess(cfg, tmp_path / "daemon.log").start()
    try:
        proc.wait_healthy(port, timeout=60)
    except BaseException:
        proc.kill()
        raise
    return Box(proc, port)


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    """Simulated locks, an unreachable cloud and a Zigbee stick that is not plugged in."""
    b = start_box(tmp_path, missing_stick=True)
    yield b
    b.proc.kill()


@pytest.fixture
def phone_box(tmp_path: Path) -> Iterator[Box]:
    b = start_box(tmp_path, missing_stick=False)
    yield b
    b.proc.kill()


def open_page(browser: Browser, box: Box, **context: Any) -> Page:
    page = browser.new_context(**context).new_page()
    page.goto(box.base + "/")
    expect(page.locator(".card")).to_have_count(2)
    return page


def card(page: Page, device_id: str) -> Any:
    return page.locator(f'.card[data-device-id="{device_id}"]')


def test_page_follows_the_box_without_reloading(browser: Browser, box: Box) -> None:
    status = box.status()
    token = status["gateway"]["registration_token"]
    first, second = (d["id"] for d in status["devices"])
    page = open_page(browser, box)
    page.evaluate("window.__sameDocument = true")

    # Unclaimed: the token and how to claim it.
    expect(page.locator("#token")).to_have_text(token)
    expect(page.locator("#claim-cmd")).to_contain_text(f'"registration_token": "{token}"')
    expect(page.locator("#claim-cmd")).to_contain_text("/register_gateway")
    # The cloud cannot be reached and the stick is missing: both said plainly.
    expect(page.locator("#tunnel")).to_contain_text("last error")
    expect(page.locator("#tunnel-error")).not_to_have_text("none")
    # the lock reports made since start wait for the cloud, and say how long they have waited
    expect(page.locator("#backlog")).to_contain_text(re.compile(r"messages, oldest \d+ s"))
    expect(page.locator('[data-driver="zigbee"]')).to_contain_text("down")
    expect(page.locator('[data-driver="zigbee"]')).to_contain_text("No such file")
    expect(page.locator("#status-line")).to_contain_text("radio down: zigbee")

    # An unlock: the card's pill changes, the action appears with its transitions.
    expect(card(page, first).locator(".bolt")).to_have_text("locked")
    unlock = box.act(first, "unlock")
    expect(card(page, first).locator(".bolt")).to_have_text("unlocked")
    expect(card(page, first).locator(".last-event")).to_contain_text("door unlocked")
    row = page.locator(f'tr[data-action-id="{unlock}"]')
    expect(row.locator(".pill")).to_have_text("completed")
    expect(row).to_contain_text("gateway_received")
    expect(row).to_contain_text("processing")
    expect(row.locator(".duration")).to_contain_text("ms")
    assert box.wait_done(unlock)["status"] == "completed"

    # A failing action shows its error; a PIN never reaches the page.
    code = box.act(second, "set_code", code=PIN, slot_id=3)
    bad = box.act(second, "set_code", code="12", slot_id=3)
    expect(page.locator(f'tr[data-action-id="{bad}"] .pill')).to_have_text("failed")
    expect(page.locator(f'tr[data-action-id="{bad}"]')).to_contain_text("invalid_input")
    expect(page.locator(f'tr[data-action-id="{code}"] .pill')).to_have_text("completed")
    # an id that is a property of every JS object was shown as "[object Object]"
    proto = page.locator(f'tr[data-action-id="{box.act("__proto__", "unlock")}"]')
    expect(proto.locator(".pill")).to_have_text("failed")
    expect(proto).to_contain_text("__proto__")
    expect(proto).not_to_contain_text("[object Object]")

    # A person at the door and a weak battery.
    box.simulate(second, "battery", level=0.12)
    expect(card(page, second).locator(".battery")).to_contain_text("12 %")
    expect(card(page, second).locator(".last-event")).to_contain_text("low battery")
    box.simulate(first, "manual_lock")
    expect(card(page, first).locator(".bolt")).to_have_text("locked")

    assert page.evaluate("window.__sameDocument") is True  # never reloaded
    assert PIN not in page.content()
    page.screenshot(path=artifact("status_page.png"), full_page=True)

    # The daemon goes away: the page says so instead of showing stale data as current.
    box.proc.kill()
    expect(page.locator("#status-line")).to_contain_text("not answering")
    page.context.close()


def test_page_reads_on_a_phone(browser: Browser, phone_box: Box) -> None:
    box = phone_box
    device = box.status()["devices"][0]["id"]
    box.wait_done(box.act(device, "unlock"))
    box.wait_done(box.act(device, "lock"))
    page = open_page(
        browser,
        box,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    expect(page.locator("#actions tr")).to_have_count(2)
    # Nothing wider than the screen: no sideways scrolling on a phone.
    widths = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], widths
    # Text a person can read without zooming.
    size = page.evaluate(
        "parseFloat(getComputedStyle(document.querySelector('.card dd')).fontSize)"
    )
    assert size >= 13
    page.screenshot(path=artifact("status_page_phone.png"), full_page=True)
    page.context.close()


def test_claim_command_keeps_a_quoted_gateway_name_in_its_argument(
    browser: Browser, tmp_path: Path
) -> None:
    """The claim command put the name's JSON in shell single quotes as it was: a ' in the name
    ended them, and the command pasted from the page broke, or ran what followed."""
    box = start_box(tmp_path, missing_stick=False, name=QUOTED_NAME)
    try:
        token = box.status()["gateway"]["registration_token"]
        page = open_page(browser, box)
        shown = page.locator("#claim-cmd")
        expect(shown).to_contain_text("/register_gateway")
        # as a POSIX shell reads it: backslash-newline continues the line
        words = shlex.split((shown.text_content() or "").replace("\\\n", ""))
        assert words[0] == "curl", words
        body = json.loads(words[words.index("-d") + 1])
        assert body == {"registration_token": token, "name": QUOTED_NAME}
        assert words[-1] == "$API_URL/v1/locations/$LOCATION_ID/register_gateway", words
        page.context.close()
    finally:
        box.proc.kill()


def test_page_warns_of_a_disk_filling_up(browser: Browser, tmp_path: Path) -> None:
    """The room left under the state dir, and a warning below `store.disk_low_mb` (here more
    than any test disk has), before the store refuses commits."""
    box = start_box(tmp_path, missing_stick=False, extra="[store]\ndisk_low_mb = 1000000\n")
    try:
        page = open_page(browser, box)
        disk = page.locator("#disk-free")
        expect(disk).to_contain_text(re.compile(r"^\d[\d.]* (bytes|KB|MB|GB|TB) — low"))
        expect(disk).to_have_class("err")
        expect(page.locator("#status-line")).to_contain_text("disk low (")
        expect(page.locator("#health-dot")).not_to_have_class(re.compile(r"\bok\b"))
        page.context.close()
    finally:
        box.proc.kill()


def test_page_shows_the_room_left_without_a_warning(browser: Browser, phone_box: Box) -> None:
    page = open_page(browser, phone_box)
    disk = page.locator("#disk-free")
    expect(disk).to_contain_text(re.compile(r"^\d[\d.]* (bytes|KB|MB|GB|TB)$"))
    expect(disk).not_to_have_class("err")
    page.context.close()


def test_page_seen_from_another_machine_says_where_to_read_the_token(
    browser: Browser, phone_box: Box
) -> None:
    """/status leaves the registration token out for a client on another machine (whoever holds
    it claims the box): the page says where to read it, and the claim command keeps a place
    for it instead of an empty token."""
    page = browser.new_context().new_page()

    def as_from_the_lan(route: Route) -> None:
        shown = route.fetch().json()
        shown["gateway"]["registration_token"] = None  # as a LAN client gets it
        route.fulfill(json=shown)

    page.route("**/status", as_from_the_lan)
    page.goto(phone_box.base + "/")
    expect(page.locator("#token")).to_have_text("shown on the box only: run gatewayd token there")
    expect(page.locator("#claim-cmd")).to_contain_text('"registration_token": "TOKEN"')
    page.context.close()
