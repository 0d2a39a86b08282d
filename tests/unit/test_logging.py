"""Logging: JSON lines or console, dotted events, and redaction of secrets anywhere in a line."""

from __future__ import annotations

import io
import json
import logging
import pickle

import pytest
import structlog

from gatewayd import logging as gwlog
from gatewayd.model import PinCode


@pytest.fixture
def json_stream() -> io.StringIO:
    stream = io.StringIO()
    gwlog.configure("debug", "json", stream)
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_dotted_events(json_stream: io.StringIO) -> None:
    structlog.get_logger("t").info("tunnel.connected", gateway_id="gw-1", attempt=2)
    (line,) = lines(json_stream)
    assert line["event"] == "tunnel.connected"
    assert line["gateway_id"] == "gw-1"
    assert line["attempt"] == 2
    assert line["level"] == "info"
    assert "timestamp" in line


def test_secrets_under_known_keys_are_masked_also_nested(json_stream: io.StringIO) -> None:
    log = structlog.get_logger("t")
    log.info("x.y", code="736251", inputs={"code": "736251", "slot_id": 3}, credential="cr3d")
    log.info("x.z", frames=[{"pin": "736251"}], Authorization="Bearer tok-abc")
    text = json_stream.getvalue()
    assert "736251" not in text
    assert "cr3d" not in text
    assert "tok-abc" not in text
    first = lines(json_stream)[0]
    assert first["inputs"] == {"code": "****", "slot_id": 3}


def test_secrets_in_free_text_and_tracebacks_are_masked(json_stream: io.StringIO) -> None:
    log = structlog.get_logger("t")
    log.warning("x.text", error="server said {'code': '736251'} and Bearer abc.def")
    try:
        raise ValueError("bad code=736251")
    except ValueError:
        log.exception("x.failed")
    logging.getLogger("zwave_js_server").warning("sent usercode: 736251 to node 5")
    log.warning("x.dsk", error="refused dsk_pin=73915 and 'dskPin': '73915'", dsk_pin="73915")
    text = json_stream.getvalue()
    assert "736251" not in text
    assert "73915" not in text
    assert "abc.def" not in text
    assert "node 5" in text  # the rest of the line survives
    by_event = {str(line["event"]): line for line in lines(json_stream)}
    assert by_event["x.text"]["error"] == "server said {'code': '****'} and Bearer ****"
    assert "ValueError: bad code=****" in str(by_event["x.failed"]["exception"])


def test_pin_objects_never_render(json_stream: io.StringIO) -> None:
    pin = PinCode("736251")
    structlog.get_logger("t").info("x.pin", value=pin, text=f"{pin}", items=[pin])
    assert "736251" not in json_stream.getvalue()
    (line,) = lines(json_stream)  # the line was written, with its PIN masked
    assert line["event"] == "x.pin"
    assert pin.reveal() == "736251"
    with pytest.raises(TypeError):
        pickle.dumps(pin)


def test_console_format_on_request() -> None:
    stream = io.StringIO()
    gwlog.configure("info", "console", stream)
    try:
        structlog.get_logger("t").info("daemon.ready", devices=2, code="4444")
        out = stream.getvalue()
        assert "daemon.ready" in out
        assert "devices=2" in out
        assert "4444" not in out
        assert not out.lstrip().startswith("{")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()


def test_auto_format_prefers_json_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert gwlog.want_json("auto", Tty()) is False
    assert gwlog.want_json("auto", io.StringIO()) is True
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    assert gwlog.want_json("auto", Tty()) is True


def test_debug_is_filtered_at_info() -> None:
    stream = io.StringIO()
    gwlog.configure("info", "json", stream)
    try:
        structlog.get_logger("t").debug("x.debug")
        structlog.get_logger("t").info("x.info")
        assert [line["event"] for line in lines(stream)] == ["x.info"]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()


class _Request:
    """An object whose repr quotes a PIN, as a dataclass holding action inputs would."""

    def __init__(self) -> None:
        self.inputs = {"code": "736251", "slot_id": 3}

    def __repr__(self) -> str:
        return f"_Request(inputs={self.inputs!r})"


def test_objects_are_masked_in_the_repr_the_renderer_writes(json_stream: io.StringIO) -> None:
    """The renderer writes an object as its repr after redaction ran: an exception passed as
    `error=exc`, or a request object, carried the PIN into the journal."""
    log = structlog.get_logger("t")
    log.error("x.failed", error=ValueError("lock refused code=736251"))
    log.info("x.request", request=_Request())
    text = json_stream.getvalue()
    assert "736251" not in text
    first, second = lines(json_stream)
    assert first["error"] == "ValueError('lock refused code=****')"
    assert "'slot_id': 3" in str(second["request"])


def test_secret_keys_in_other_spellings_are_masked(json_stream: io.StringIO) -> None:
    """zwave-js writes camelCase (`userCode`, `networkKey`), HTTP headers use dashes, lists of
    secrets have plural keys."""
    structlog.get_logger("t").info(
        "x.keys",
        credentials={"bearer": "cr3d-plural"},
        frames=[{"pinCode": "736251"}, {"userCodes": ["736252"]}],
        networkKey="n3tw0rk-key",
        headers={"X-Api-Key": "ap1-key", "Proxy-Authorization": "Basic cHJveHk="},
        inputs={"duration": 60, "dsk_pin": "73915"},
        close_code=1006,
    )
    text = json_stream.getvalue()
    for secret in ("cr3d-plural", "736251", "736252", "n3tw0rk-key", "ap1-key", "cHJveHk="):
        assert secret not in text
    assert "73915" not in text
    assert lines(json_stream)[0]["close_code"] == 1006  # not a secret: still there


def test_secrets_in_library_text_are_masked(json_stream: io.StringIO) -> None:
    """Text as libraries write it: a zigpy command's repr (bytes), snake_case and camelCase
    names, JSON quoted inside a repr, an Authorization header of another scheme."""
    logging.getLogger("zigpy").warning(
        "sending %s", "set_pin_code(user_id=3, user_type=0, pin_code=b'736251')"
    )
    log = structlog.get_logger("t")
    log.info("x.text", detail="user_code=736252 then pinCode: 736253 at node 5")
    log.info("x.quoted", frame='{\\"credential\\": \\"cr3d-quoted\\"}')
    log.info("x.header", line="Authorization: Token t0ken-value, Host: box")
    text = json_stream.getvalue()
    for secret in ("736251", "736252", "736253", "cr3d-quoted", "t0ken-value"):
        assert secret not in text
    assert "node 5" in text
    assert "Host: box" in text
    events = [str(line["event"]) for line in lines(json_stream)]
    assert events[0].startswith("sending set_pin_code(user_id=3")  # zigpy's line is there
    assert events[1:] == ["x.text", "x.quoted", "x.header"]


def test_the_clouds_error_code_is_logged_unmasked(json_stream: io.StringIO) -> None:
    """`tunnel.cloud_error` logged the cloud's code under `code`, a key the redaction masks
    (a lock's PIN goes by that name): every journal line read `"code": "****"`, `revoked`
    included, and the operator could not tell why the cloud refused the gateway."""
    from gatewayd.config import CloudConfig
    from gatewayd.store import Store
    from gatewayd.tunnel import Tunnel

    tunnel = Tunnel(CloudConfig(url="ws://127.0.0.1:9/t"), Store.__new__(Store), print, dict)
    tunnel._handle_frame(
        '{"type": "error", "code": "revoked", "message": "the gateway credential was revoked"}'
    )
    (line,) = [line for line in lines(json_stream) if line["event"] == "tunnel.cloud_error"]
    assert line["error_code"] == "revoked"
    assert tunnel.last_error == "cloud error revoked: the gateway credential was revoked"


def test_a_long_cloud_error_is_clipped_on_status_and_in_the_journal(
    json_stream: io.StringIO,
) -> None:
    """A 5 KB message in the cloud's error frame went whole to /status, the page, `gatewayd
    status` and the journal."""
    from gatewayd.config import CloudConfig
    from gatewayd.store import Store
    from gatewayd.tunnel import Tunnel

    tunnel = Tunnel(CloudConfig(url="ws://127.0.0.1:9/t"), Store.__new__(Store), print, dict)
    tunnel._handle_frame(json.dumps({"type": "error", "code": "x" * 100, "message": "y" * 5000}))
    (line,) = [line for line in lines(json_stream) if line["event"] == "tunnel.cloud_error"]
    assert len(line["message"]) == 200
    assert len(line["error_code"]) == 64
    assert tunnel.last_error is not None
    assert len(tunnel.last_error) < 300
    assert tunnel.last_error.endswith("y…")
