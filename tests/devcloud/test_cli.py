"""`devcloud serve` as a process: it listens, answers REST, keeps secrets out of its logs."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest
import trustme

from gatewayd import protocol as p

API_KEY = "cli-secret-api-key"


@pytest.mark.stack
async def test_devcloud_serve_runs_as_a_process(tmp_path: Path) -> None:
    db = tmp_path / "cloud.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devcloud.cli",
        "serve",
        "--port",
        "0",
        "--db",
        str(db),
        "--api-key",
        API_KEY,
        "--webhook",
        "http://127.0.0.1:9/hook",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        assert line.startswith("devcloud listening on http://127.0.0.1:")
        base = line.split()[-1]
        auth = {"Authorization": aiohttp.encode_basic_auth(API_KEY)}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/v1/locations",
                json={"name": "home", "timezone": "Europe/Paris"},
                headers=auth,
            ) as resp:
                assert resp.status == 200
            async with http.get(f"{base}/v1/locations", headers=auth) as resp:
                assert [loc["name"] for loc in await resp.json()] == ["home"]
            async with http.ws_connect(f"{base.replace('http', 'ws')}/v1/gateway/tunnel") as ws:
                hello = p.Hello(
                    protocol=1,
                    software_version="0.1.0",
                    hardware="x",
                    drivers=[],
                    registration_token="quiet-lake-9",
                )
                await ws.send_str(p.encode(hello).decode())
                welcome = p.decode((await ws.receive(timeout=10)).data)
                assert isinstance(welcome, p.Welcome)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0
    logs = stderr.decode()
    assert "devcloud.listening" in logs
    assert "tunnel.accepted" in logs
    assert API_KEY not in logs
    assert "quiet-lake-9" not in logs
    secret_file = Path(f"{db}.webhook_secret")
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert secret_file.read_text().strip() not in logs


@pytest.mark.stack
async def test_devcloud_serves_wss_with_a_verifiable_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devcloud.cli",
        "serve",
        "--port",
        "0",
        "--db",
        str(tmp_path / "cloud.db"),
        "--api-key",
        API_KEY,
        "--tls-cert",
        str(tmp_path / "cert.pem"),
        "--tls-key",
        str(tmp_path / "key.pem"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        base = line.split()[-1]
        assert base.startswith("https://127.0.0.1:")
        tunnel_url = base.replace("https", "wss") + "/v1/gateway/tunnel"
        trusted = ssl.create_default_context()
        ca.configure_trust(trusted)
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(tunnel_url, ssl=trusted) as ws:
                hello = p.Hello(protocol=1, software_version="1", hardware="x", drivers=[])
                await ws.send_str(p.encode(hello).decode())
                refusal = p.decode((await ws.receive(timeout=10)).data)
                assert isinstance(refusal, p.ErrorMsg)
                assert refusal.code == "unauthorized"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.ws_connect(tunnel_url, ssl=ssl.create_default_context())
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0


def test_devcloud_serve_on_a_taken_port_says_so_in_one_line(tmp_path: Path) -> None:
    """A port in use ended `devcloud serve` with asyncio's bind traceback."""
    import socket
    import subprocess

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [
                *(sys.executable, "-m", "devcloud.cli", "serve", "--port", str(port)),
                *("--db", str(tmp_path / "cloud.db"), "--api-key", API_KEY),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr, out.stderr
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith(f"devcloud: cannot listen on 127.0.0.1:{port}: ")
    )


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/hook", "http://[::1/hook", "http:///hook"])
def test_a_malformed_webhook_url_is_a_one_line_error_not_a_traceback(
    tmp_path: Path, url: str
) -> None:
    """`--webhook` was checked for its scheme only: a bad port or host crashed start-up with
    a traceback (or, without a host, retried every event for a day)."""
    import subprocess

    out = subprocess.run(
        [
            *(sys.executable, "-m", "devcloud.cli", "serve", "--port", "0"),
            *("--db", str(tmp_path / "cloud.db"), "--api-key", API_KEY, "--webhook", url),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "devcloud: --webhook expects an http:// or https:// URL"
