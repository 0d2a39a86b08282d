"""Journal lines: JSON under systemd, and every line logged while an action runs, a radio
library's included, names the action request and the device."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import structlog

from drivers.sim.driver import SimDriver
from gatewayd import logging as gwlog
from gatewayd.config import parse_config
from gatewayd.daemon import Daemon
from gatewayd.driver import Action, ActionResult
from tests.box.test_metrics import act
from tests.support import config_text, wait_until

PIN = "905172"


class ChattySim(SimDriver):
    """The sim driver, logging as a real driver and its radio library do while executing."""

    async def execute(self, device_id: str, action: Action) -> ActionResult:
        structlog.get_logger("drivers.chatty").info("chatty.command_sent")
        logging.getLogger("radio_library").warning("frame sent, waiting for the report")
        return await super().execute(device_id, action)


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    monkeypatch.setenv("JOURNAL_STREAM", "8:123456")  # what systemd sets for a service
    stream = io.StringIO()
    gwlog.configure("info", "auto", stream)
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


async def test_lines_logged_during_an_action_carry_its_ids(
    tmp_path: Path, journal: io.StringIO
) -> None:
    daemon = Daemon(
        parse_config(config_text(tmp_path / "state", latency_ms=5, log_format="auto")),
        driver_classes={"sim": ChattySim},
    )
    done: list[str] = []
    daemon.status_listeners.append(
        lambda u: done.append(u.action_request_id) if u.status.terminal else None
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.wait_started()
        assert daemon.registry is not None
        first, second = (d.id for d in daemon.registry.devices())
        async with aiohttp.ClientSession() as http:
            port = daemon.status_port
            assert port is not None
            unlock = await act(http, port, first, "unlock")
            code = await act(http, port, second, "set_code", code=PIN, slot_id=3)
            await wait_until(lambda: {unlock, code} <= set(done))
        daemon.stop()

    lines: list[dict[str, Any]] = [json.loads(line) for line in journal.getvalue().splitlines()]
    by_action = {unlock: first, code: second}
    for event in ("chatty.command_sent", "frame sent, waiting for the report"):
        logged = [line for line in lines if line["event"] == event]
        assert len(logged) == 2, event
        assert {(line["action_request_id"], line["device_id"]) for line in logged} == set(
            by_action.items()
        )
    # Lines outside an action are not tagged with one.
    ready = next(line for line in lines if line["event"] == "daemon.ready")
    assert "action_request_id" not in ready
    assert PIN not in journal.getvalue()
