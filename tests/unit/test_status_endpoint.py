"""The status endpoint's development route refuses what it cannot use with a 400 naming the
field, instead of failing inside the handler with a 500."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import aiohttp
import anyio
import anyio.lowlevel
from aiohttp.test_utils import make_mocked_request
from structlog.testing import capture_logs

from drivers.sim import SimDriver
from gatewayd import status
from gatewayd.cli import render_status
from gatewayd.config import parse_config
from gatewayd.daemon import Daemon
from gatewayd.driver import DriverHealth, DriverState
from tests.support import config_text, running_daemon, wait_until


async def test_a_local_action_with_an_absurd_timeout_is_invalid_input(tmp_path: Path) -> None:
    """timeout_s = 1e300 overflowed the deadline's timedelta: a 500 and a traceback."""
    async with running_daemon(tmp_path / "gw") as daemon:
        assert daemon.registry is not None
        device = daemon.registry.devices()[0].id
        body = {"device_id": device, "action": "unlock", "timeout_s": 1e300}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{daemon.status_port}/actions", json=body) as resp,
        ):
            reply = await resp.json()
        assert resp.status == 400
        assert reply["error"]["type"] == "invalid_input"
        assert "timeout_s" in reply["error"]["message"]


async def test_deeply_nested_json_on_a_development_route_is_invalid_input(tmp_path: Path) -> None:
    """`inputs` or `params` nested 5,000 deep (16 KiB is allowed) raised RecursionError in the
    handler: a 500 and a traceback in the journal instead of a 400 saying why."""
    nested = '{"a":' * 5000 + "1" + "}" * 5000
    async with running_daemon(tmp_path / "gw") as daemon:
        assert daemon.registry is not None
        device = daemon.registry.devices()[0].id
        async with aiohttp.ClientSession() as http:
            for route, body in (
                (
                    "/actions",
                    f'{{"device_id": "{device}", "action": "unlock", "inputs": {nested}}}',
                ),
                ("/simulate", f'{{"device_id": "{device}", "what": "jam", "params": {nested}}}'),
            ):
                async with http.post(
                    f"http://127.0.0.1:{daemon.status_port}{route}",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    assert resp.status == 400, route
                    reply = await resp.json()
                assert reply["error"] == {
                    "type": "invalid_input",
                    "message": "JSON nested too deeply",
                }, route


# What a radio or HTTP library may quote in an error: a URL with its password, a header, a code.
_LEAKY = (
    "Cannot connect to host ws://admin:s3cretpw@10.0.0.2:3000/ (Authorization: Bearer tok3nXYZ)"
    " after set_code {'code': '4711'}"
)
_SECRETS = ("s3cretpw", "tok3nXYZ", "4711")


class _LeakyRadio(SimDriver):
    """A sim whose radio is down with an error that quotes secrets."""

    def health(self) -> DriverHealth:
        return DriverHealth(DriverState.DOWN, "sim", _LEAKY)


async def test_errors_that_quote_secrets_are_masked_on_status(tmp_path: Path) -> None:
    """The tunnel's and the drivers' last errors went to /status, /healthz and the status line
    as the libraries wrote them."""
    # a cloud that takes the connection and never answers: the tunnel waits on its upgrade for
    # connect_timeout_s (3 s) and leaves the error set below alone meanwhile
    silent = socket.create_server(("127.0.0.1", 0))
    url = f"ws://127.0.0.1:{silent.getsockname()[1]}/t"
    daemon = Daemon(
        parse_config(config_text(tmp_path / "gw", cloud_url=url)),
        driver_classes={"sim": _LeakyRadio},
    )
    with silent:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            with anyio.fail_after(30):
                await daemon.wait_started()
            try:
                assert daemon.tunnel is not None
                daemon.tunnel.last_error = f"ClientConnectorError: {_LEAKY}"  # type: ignore[attr-defined]
                base = f"http://127.0.0.1:{daemon.status_port}"
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"{base}/status") as resp:
                        status = await resp.text()
                    async with http.get(f"{base}/healthz") as resp:
                        health = await resp.text()
            finally:
                daemon.stop()
    body = json.loads(status)
    assert "Cannot connect to host" in body["tunnel"]["last_error"]  # the error is still shown
    assert "Cannot connect to host" in body["drivers"]["sim"]["last_error"]
    assert "radio down: sim" in body["gateway"]["status_line"]
    for secret in _SECRETS:
        assert secret not in status
        assert secret not in health


async def test_a_client_pipelining_status_requests_gives_the_loop_a_turn_between_them(
    tmp_path: Path,
) -> None:
    """aiohttp answered one connection's pipelined requests back to back, never yielding while
    the socket took the answers: a local flood held the loop that moves the locks for tens of
    seconds. Counted in loop turns, not seconds: a task that only yields must get a turn for
    about every request served."""
    requests = 200
    async with running_daemon(tmp_path / "gw") as daemon:
        turns = 0
        flooding = True

        async def spin() -> None:
            nonlocal turns
            while flooding:
                turns += 1
                await anyio.lowlevel.checkpoint()

        request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{daemon.status_port}\r\n\r\n"
        async with anyio.create_task_group() as tg:
            stream = await anyio.connect_tcp("127.0.0.1", daemon.status_port)
            await stream.send((request * requests).encode())  # all at once, in one segment
            tg.start_soon(spin)
            answered = b""
            with anyio.fail_after(30):
                while answered.count(b"HTTP/1.1 200") < requests:
                    answered += await stream.receive()
            flooding = False
            await stream.aclose()
        # without the yield: a handful of turns for the whole batch
        assert turns >= requests // 2, (turns, requests)


async def test_a_local_action_whose_body_arrives_in_two_segments_is_taken(tmp_path: Path) -> None:
    """The body was read with one read, which returns only what has arrived: a body split
    across TCP segments (a slow client, `Expect: 100-continue`) was cut and refused as
    malformed JSON."""
    async with running_daemon(tmp_path / "gw") as daemon:
        assert daemon.registry is not None
        assert daemon.status_port is not None
        device = daemon.registry.devices()[0].id
        body = json.dumps({"device_id": device, "action": "lock"}).encode()
        head = (
            "POST /actions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        answer = b""
        async with await anyio.connect_tcp("127.0.0.1", daemon.status_port) as client:
            await client.send(head + body[:10])
            await anyio.sleep(0.2)  # the handler has read the first part by now
            await client.send(body[10:])
            with anyio.fail_after(10):
                while True:
                    try:
                        answer += await client.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line == b"HTTP/1.1 202 Accepted", answer


def _fs_size(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


async def test_status_and_metrics_show_the_free_space_under_the_state_dir(tmp_path: Path) -> None:
    """A filling SD card was seen only once SQLite refused commits (`store.last_error`)."""
    async with running_daemon(tmp_path / "gw") as daemon:
        base = f"http://127.0.0.1:{daemon.status_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/status") as resp:
                store = (await resp.json())["store"]
            async with http.get(f"{base}/metrics") as resp:
                metrics = await resp.text()
    size = _fs_size(tmp_path)
    assert 0 < store["disk_free_bytes"] <= size
    assert store["disk_low"] is False  # tmp has more than 50 MB free, or no test would run
    found = re.search(r"^gatewayd_state_dir_free_bytes (\S+)$", metrics, re.M)
    assert found is not None, metrics
    assert 0 < float(found[1]) <= size


def test_low_disk_is_warned_of_once_and_its_recovery_once() -> None:
    """One `store.disk_low` when the free space falls below the threshold, one `store.disk_ok`
    when it is a fifth above it again; nothing while it hovers around the threshold."""
    from gatewayd.disk import DiskWatch

    readings = iter([100, 49, 30, 52, 45, 59, 60, 70, 10])
    watch = DiskWatch(Path("/var/lib/gatewayd"), 50, read=lambda _: next(readings))
    with capture_logs() as logs:
        seen = [(watch.check(), watch.low) for _ in range(9)]
    assert [low for _, low in seen] == [False, True, True, True, True, True, False, False, True]
    assert [free for free, _ in seen] == [100, 49, 30, 52, 45, 59, 60, 70, 10]
    events = [(e["event"], e["free_bytes"]) for e in logs if e["event"].startswith("store.disk")]
    assert events == [("store.disk_low", 49), ("store.disk_ok", 60), ("store.disk_low", 10)]
    assert [e["log_level"] for e in logs if e["event"].startswith("store.disk")] == [
        "warning",
        "info",
        "warning",
    ]


async def test_a_low_disk_shows_on_the_status_line_and_status(tmp_path: Path) -> None:
    from gatewayd.disk import MB, DiskWatch

    free = [10 * MB]
    async with running_daemon(tmp_path / "gw") as daemon:
        daemon.disk = DiskWatch(daemon.state_dir, 50 * MB, read=lambda _: free[0])
        snapshot = daemon.snapshot()
        assert snapshot["store"]["disk_free_bytes"] == 10 * MB
        assert snapshot["store"]["disk_low"] is True
        assert "disk low (10.0 MB free)" in snapshot["gateway"]["status_line"]
        assert "disk low" in render_status(snapshot)
        free[0] = 80 * MB
        snapshot = daemon.snapshot()
        assert snapshot["store"]["disk_low"] is False
        assert "disk" not in snapshot["gateway"]["status_line"]


async def test_the_daemon_checks_the_disk_without_being_asked(tmp_path: Path) -> None:
    """The warning is logged when nobody reads /status or /metrics."""
    with capture_logs() as logs:
        async with running_daemon(tmp_path / "gw", extra="[store]\ndisk_low_mb = 1000000\n"):
            await wait_until(lambda: any(e["event"] == "store.disk_low" for e in logs))
    low = [e for e in logs if e["event"] == "store.disk_low"]
    assert len(low) == 1
    assert low[0]["threshold_bytes"] == 10**12
    assert low[0]["path"] == str(tmp_path / "gw")


class _Socket:
    """The transport of a request that came from `peer` to this endpoint's address `own`."""

    def __init__(self, peer: str, own: str) -> None:
        self._extra = {"peername": (peer, 40_000), "sockname": (own, 8088)}

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._extra.get(name, default)


async def test_the_registration_token_is_shown_to_this_machine_only(tmp_path: Path) -> None:
    """With `allow_remote` (set to scrape /metrics from elsewhere) anyone on the LAN read the
    unclaimed box's registration token on /status, and could claim it, and its locks, first.
    A client on this machine (loopback, or the address it reached the endpoint on) sees it."""
    async with running_daemon(tmp_path / "gw") as daemon:
        token = daemon.snapshot()["gateway"]["registration_token"]
        assert token
        app = status.make_app(daemon)
        shown = {}
        for peer, own in (
            ("192.168.1.20", "192.168.1.5"),  # another machine on the LAN
            ("127.0.0.1", "127.0.0.1"),
            ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
            ("192.168.1.5", "192.168.1.5"),  # `gatewayd status` on the box, listen on the LAN
        ):
            request = make_mocked_request("GET", "/status", app=app, transport=_Socket(peer, own))
            response = await status.status_json(request)
            assert isinstance(response.body, bytes | bytearray)
            shown[peer] = json.loads(bytes(response.body))["gateway"]["registration_token"]
        assert shown == {
            "192.168.1.20": None,
            "127.0.0.1": token,
            "::ffff:127.0.0.1": token,
            "192.168.1.5": token,
        }
        hidden = daemon.snapshot()
        hidden["gateway"]["registration_token"] = None
        assert "shown to this machine only: run gatewayd token" in render_status(hidden)


async def test_the_registration_token_is_hidden_from_a_client_behind_a_reverse_proxy(
    tmp_path: Path,
) -> None:
    """A reverse proxy on the box (nginx, caddy) connects from loopback: every LAN client it
    passed /status on read the unclaimed box's registration token. A request carrying
    forwarding headers counts as another machine's; without them, this machine still sees it."""
    async with running_daemon(tmp_path / "gw") as daemon:
        token = daemon.snapshot()["gateway"]["registration_token"]
        assert token
        url = f"http://127.0.0.1:{daemon.status_port}/status"
        shown = {}
        async with aiohttp.ClientSession() as http:
            for header, value in (
                ("", ""),
                ("Forwarded", "for=192.168.1.20;proto=http"),
                ("X-Forwarded-For", "192.168.1.20"),
                ("X-Forwarded-For", "127.0.0.1"),  # whatever it names: it never grants
                ("X-Real-IP", "192.168.1.20"),
                ("X-Forwarded-Host", "box.lan"),
                ("Via", "1.1 caddy"),
            ):
                headers = {header: value} if header else {}
                async with http.get(url, headers=headers) as resp:
                    assert resp.status == 200
                    reply = await resp.json()
                shown[f"{header}: {value}"] = reply["gateway"]["registration_token"]
        assert shown.pop(": ") == token
        assert set(shown.values()) == {None}, shown
