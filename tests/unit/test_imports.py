"""What a daemon imports: with only the Z-Wave driver enabled, its driver and no radio library it
does not use (zigpy and the Zigbee driver); prometheus_client only once /metrics is scraped; and,
as `gatewayd run` starts under the systemd unit, neither frozenlist's C++ extension nor a parsed
CA bundle."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import ROOT, unit_environment

# Run in a fresh interpreter: this test process may have imported anything already.
_START = """
import json, sys
import aiohttp, anyio
from gatewayd import logging as gwlog
from gatewayd.config import parse_config
from gatewayd.daemon import Daemon

gwlog.configure("warning", "json", sys.stderr)
config = parse_config(sys.argv[1])

async def main() -> None:
    daemon = Daemon(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.wait_started()
"""
_CHILD = (
    _START
    + """        assert daemon.registry is not None
        drivers = sorted(daemon.registry.drivers)
        print(json.dumps({"drivers": drivers, "modules": sorted(sys.modules)}))
        daemon.stop()

anyio.run(main)
"""
)


def _child(script: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run `script` in a fresh interpreter; what it printed last, as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _config(tmp_path: Path) -> str:
    """A daemon with no driver and the status endpoint on a free port; add driver sections."""
    return f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[status]\nlisten = "127.0.0.1:0"\n'


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_zwave_only_daemon_imports_no_other_radio_library(tmp_path: Path) -> None:
    # zwave-server is not running: the driver starts DOWN and keeps retrying, as on a box whose
    # radio service is late; what matters here is what got imported.
    config = _config(tmp_path) + (
        f'[drivers.zwave]\nenabled = true\nurl = "ws://127.0.0.1:{_closed_port()}"\n'
        "connect_timeout_s = 2.0\ninterview_timeout_s = 2.0\n"
    )
    result = _child(_CHILD, config)
    assert result["drivers"] == ["zwave"]
    modules = set(result["modules"])
    assert "drivers.zwave.driver" in modules
    roots = {m.partition(".")[0] for m in modules}
    assert not roots & {"zigpy", "bellows", "zhaquirks", "zigpy_znp", "zigpy_deconz"}
    assert not {m for m in modules if m.startswith("drivers.zigbee")}
    assert "zwave_js_server.client" in modules


def test_the_core_reads_no_package_metadata(tmp_path: Path) -> None:
    """The version is a literal: read through importlib.metadata, it imported zipfile and csv
    into every daemon. (zwave-js-server-python's pydantic imports it anyway.)"""
    result = _child(_CHILD, _config(tmp_path))
    assert result["drivers"] == []
    assert not set(result["modules"]) & {"importlib.metadata", "zipfile", "csv"}


def test_the_version_is_the_one_the_package_is_installed_as() -> None:
    import tomllib
    from importlib.metadata import version

    import gatewayd

    with (ROOT / "pyproject.toml").open("rb") as f:
        declared = tomllib.load(f)["project"]["version"]
    assert gatewayd.__version__ == declared == version("gatewayd")


# zwave-js-server-python's event models are built when an event of their type first arrives, not
# at import (drivers/zwave/__init__.py), and still check what they get.
_EVENT_MODELS_CHILD = """
import json
import drivers.zwave
import pydantic
from zwave_js_server.model.controller.event_model import CONTROLLER_EVENT_MODEL_MAP
from zwave_js_server.model.node.event_model import NODE_EVENT_MODEL_MAP
models = [*NODE_EVENT_MODEL_MAP.values(), *CONTROLLER_EVENT_MODEL_MAP.values()]
built = sum(m.__pydantic_complete__ for m in models)
dead = NODE_EVENT_MODEL_MAP["dead"]
dead.from_dict({"source": "node", "event": "dead", "nodeId": 3})
try:
    dead.from_dict({"source": "node", "event": "dead", "nodeId": "three"})
    rejected = None
except pydantic.ValidationError as exc:
    rejected = exc.errors()[0]["loc"]
print(json.dumps({"models": len(models), "built_at_import": built,
                  "dead_built": dead.__pydantic_complete__, "rejected": rejected,
                  "others_built": sum(m.__pydantic_complete__ for m in models) - 1}))
"""


def test_zwave_event_models_are_built_on_first_use_and_still_validate() -> None:
    result = _child(_EVENT_MODELS_CHILD)
    assert result["models"] > 50
    assert result["built_at_import"] == 0
    assert result["dead_built"] is True
    assert result["others_built"] == 0
    assert result["rejected"] == ["nodeId"]


# A daemon that nobody scrapes never imports prometheus_client; the first GET /metrics does, and
# answers the same exposition as before.
_SCRAPE_CHILD = (
    _START
    + """        before = "prometheus_client" in sys.modules
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{daemon.status_port}"
            async with http.get(url + "/status") as resp:
                assert resp.status == 200
            status_page = "prometheus_client" in sys.modules
            async with http.get(url + "/metrics") as resp:
                metrics = {"status": resp.status, "type": resp.headers["Content-Type"],
                           "body": await resp.text()}
        print(json.dumps({"before": before, "after_status": status_page,
                          "after_scrape": "prometheus_client" in sys.modules, **metrics}))
        daemon.stop()

anyio.run(main)
"""
)


def test_prometheus_client_is_imported_at_the_first_scrape(tmp_path: Path) -> None:
    result = _child(_SCRAPE_CHILD, _config(tmp_path))
    assert result["before"] is False
    assert result["after_status"] is False
    assert result["after_scrape"] is True
    assert result["status"] == 200
    assert result["type"].startswith("text/plain; version=0.0.4")
    body = result["body"]
    assert 'gatewayd_info{version="' in body
    assert "gatewayd_outbox_backlog 0.0" in body
    assert "gatewayd_outbox_oldest_age_seconds 0.0" in body
    assert "# TYPE gatewayd_actions_total counter" in body


# ---------------------------------------------------------------------- the unit's environment


_UNDER_UNIT_CHILD = """
import json, os, sys
from gatewayd import cli
changed = cli.trust_anchors_on_demand()  # as `gatewayd run` does before importing the daemon
import gatewayd.daemon, drivers.zwave.driver
import aiohttp.connector as c
print(json.dumps({
    "changed": changed,
    "cert_dir": os.environ.get("SSL_CERT_DIR"),
    "frozenlist_c": "frozenlist._frozenlist" in sys.modules,
    "ca_parsed": c._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
}))
"""


def _under(env: dict[str, str]) -> dict[str, object]:
    result: dict[str, object] = _child(_UNDER_UNIT_CHILD, env={"PATH": os.environ["PATH"], **env})
    return result


def test_gatewayd_run_under_the_unit_loads_no_cxx_frozenlist_and_no_ca_bundle() -> None:
    env = unit_environment()
    assert env["FROZENLIST_NO_EXTENSIONS"] == "1"
    lean = _under(env)
    cert_dir = lean.pop("cert_dir")
    assert lean == {"changed": True, "frozenlist_c": False, "ca_parsed": 0}
    assert isinstance(cert_dir, str)  # OpenSSL's default CA directory, hashed here as on Debian
    assert Path(cert_dir).resolve() == Path("/etc/ssl/certs")
    # Without them, what the settings avoid does happen (the check can fail).
    plain = _under({"SSL_CERT_DIR": "/etc/ssl/certs"})  # set: left alone
    assert plain["changed"] is False
    assert plain["frozenlist_c"] is True
    assert isinstance(plain["ca_parsed"], int)
    assert plain["ca_parsed"] > 0


def test_trust_anchors_on_demand_only_with_a_hashed_directory(tmp_path: Path) -> None:
    from gatewayd.cli import trust_anchors_on_demand

    (tmp_path / "ca-bundle.crt").write_text("")
    env: dict[str, str] = {}
    assert trust_anchors_on_demand(env, str(tmp_path)) is False  # e.g. Fedora's /etc/ssl/certs
    assert env == {}
    assert trust_anchors_on_demand(env, str(tmp_path / "missing")) is False
    (tmp_path / "5ad8a5d6.0").write_text("")
    assert trust_anchors_on_demand(env, str(tmp_path)) is True
    assert env == {"SSL_CERT_FILE": os.devnull, "SSL_CERT_DIR": str(tmp_path)}
    mine = {"SSL_CERT_FILE": "/etc/my-ca.pem"}
    assert trust_anchors_on_demand(mine, str(tmp_path)) is False
    assert mine == {"SSL_CERT_FILE": "/etc/my-ca.pem"}


# A TLS client made as the tunnel makes one (the default context, no ca_file) verifies its peer
# through SSL_CERT_DIR's hashed files alone, as `gatewayd run` sets it; a directory without the
# CA fails.
_TLS_CHILD = """
import asyncio, json, ssl, sys
async def main():
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(sys.argv[1])
    async def serve(reader, writer):
        writer.write(b"hi")
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context()
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        result = (await reader.read()).decode()
        writer.close()
    except ssl.SSLCertVerificationError as exc:
        result = exc.verify_message
    server.close()
    print(json.dumps(result))
asyncio.run(main())
"""


def test_the_units_trust_store_lookup_verifies_peers(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    server_pem = tmp_path / "server.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    certs, empty = tmp_path / "certs", tmp_path / "empty"
    certs.mkdir()
    empty.mkdir()
    ca.cert_pem.write_to_path(str(certs / "test-ca.pem"))
    subprocess.run(["openssl", "rehash", str(certs)], check=True, capture_output=True)

    def handshake(cert_dir: Path) -> str:
        env = {
            "SSL_CERT_FILE": os.devnull,
            "SSL_CERT_DIR": str(cert_dir),
            "PATH": os.environ["PATH"],
        }
        result: str = _child(_TLS_CHILD, str(server_pem), env=env)
        return result

    assert handshake(certs) == "hi"
    assert handshake(empty) == "unable to get local issuer certificate"
