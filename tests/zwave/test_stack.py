"""The driver against the real zwave-js stack: discovery, lock/unlock, the server's schema."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import aiohttp
import pytest
from zwave_js_server.client import Client

from drivers.zwave import ZWaveDriver
from drivers.zwave.uncompressed import UncompressedSession
from gatewayd.driver import DriverState
from gatewayd.model import Lock, Unlock
from tests.contract.sink import RecordingSink
from tests.zwave.stack import ZWaveStack, native_id

pytestmark = pytest.mark.stack


async def test_pinned_client_speaks_the_pinned_servers_schema(zwave_stack: ZWaveStack) -> None:
    # zwave-js-server-python 0.74 needs schema 51, which @zwave-js/server 3.10.2 does not serve:
    # connect() would raise InvalidServerVersion here. Bump both pins together.
    async with aiohttp.ClientSession() as session:
        client = Client(zwave_stack.url, session)
        await client.connect()
        try:
            assert client.version is not None
            assert client.version.max_schema_version >= client.schema_version
        finally:
            await client.disconnect()


async def test_the_drivers_websocket_to_zwave_server_is_not_compressed(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    # zwave-server agrees to permessage-deflate when asked, and zwave-js-server-python asks...
    async with aiohttp.ClientSession() as session:
        asked = await session.ws_connect(zwave_stack.url, compress=15)
        assert asked.compress == 15
        await asked.close()
        # ...so the driver's session takes the request back (drivers/zwave/uncompressed.py)
        plain = await UncompressedSession(session, 15.0).ws_connect(zwave_stack.url, compress=15)
        assert plain.compress == 0
        await plain.close()
    driver, _sink = zwave
    assert driver._client is not None
    assert driver._client._client is not None  # the Client's websocket
    assert driver._client._client.compress == 0


async def test_driver_reports_each_mock_lock_with_its_device_config(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    driver, sink = zwave
    by_native = {d.native_id: d for d in sink.devices.values()}
    assert set(by_native) == {native_id(n) for n in zwave_stack.lock_nodes}
    yale = by_native[native_id(2)]
    assert (yale.manufacturer, yale.model, yale.protocol) == ("Yale", "YRD256-ZW3", "zwave")
    assert (yale.codes.min_slot, yale.codes.max_slot) == (1, 20)
    assert yale.id == sink.ids[native_id(2)]
    allegion = by_native[native_id(3)]
    assert (allegion.manufacturer, allegion.model) == ("Allegion", "BE469")
    assert allegion.codes.max_slot == 30
    assert yale.properties.battery_level == pytest.approx(0.9)
    assert yale.properties.online is True
    assert driver.health().state is DriverState.READY


async def test_unlock_then_lock_is_confirmed_and_reported_once(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await driver.execute(dev, Unlock())
    assert zwave_stack.control(2, "state")["locked"] is False
    assert sink.devices[dev].properties.locked is False
    await driver.execute(dev, Lock())
    assert zwave_stack.control(2, "state")["locked"] is True
    assert sink.devices[dev].properties.locked is True
    ev = await sink.wait_event(dev, "door locked")  # type: ignore[arg-type]
    assert ev.details == {"method": "remote"}
    # give the lock's own RF notification and report time to arrive: still one event each
    await _settle(sink)
    assert sink.names(dev).count("door unlocked") == 1
    assert sink.names(dev).count("door locked") == 1


async def _settle(sink: RecordingSink, seconds: float = 1.5) -> None:
    import anyio

    with anyio.move_on_after(seconds):
        await sink.wait_for(lambda: False, timeout=seconds + 1)


def _serial_request(function: int) -> bytes:
    """A Serial API request frame with no payload: SOF, length, type (request), function,
    checksum."""
    body = bytes([3, 0x00, function])
    checksum = 0xFF
    for b in body:
        checksum ^= b
    return bytes([0x01, *body, checksum])


def _read_frame(sock: socket.socket) -> bytes:
    """The next data frame the controller sends (ACK/NAK/CAN bytes before it skipped)."""
    while (first := sock.recv(1)) != b"\x01":
        assert first in (b"\x06", b"\x15", b"\x18"), first
    length = sock.recv(1)
    rest = b""
    while len(rest) < length[0]:
        rest += sock.recv(length[0] - len(rest))
    return first + length + rest


def test_the_mock_controller_goes_on_when_the_host_does_not_ack_its_answer(
    tmp_path: Path,
) -> None:
    """A host that stops answering (zwave-server hung, or frozen by a test) right after a
    request leaves the controller's answer without an ACK. The mock controller threw on that
    and its process died, and zwave-server exited when it came back: the shared stack was gone
    for every later test. Now it goes on, as a controller does, and answers the next request.
    Played here by a raw host on the mock's serial port that never sends an ACK."""
    get_version = 0x15  # FUNC_ID_ZW_GET_VERSION
    stack = ZWaveStack(tmp_path, locks=1)
    try:
        stack.start_mock()
        assert stack.mock is not None
        with socket.create_connection(("127.0.0.1", stack.serial_port), timeout=5) as sock:
            sock.sendall(_serial_request(get_version))
            assert _read_frame(sock)[2:4] == bytes([0x01, get_version])  # response, no ACK
            time.sleep(1.5)  # past the controller's 1 s wait for the ACK
            assert stack.mock.proc.poll() is None, stack.mock.tail()
            sock.sendall(_serial_request(get_version))
            assert _read_frame(sock)[2:4] == bytes([0x01, get_version])
            sock.sendall(b"\x06")
        assert "going on without it" in stack.mock.tail()
    finally:
        stack.stop()
