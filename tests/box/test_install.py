"""`make install` into a throw-away DESTDIR: the tree, its modes, a config never overwritten,
the installed command working (check-config, a running daemon), and `make uninstall`."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support import ROOT, DaemonProcess, config_text, free_port, http_json

pytestmark = pytest.mark.stack


def make(target: str, destdir: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["make", "--no-print-directory", target, f"DESTDIR={destdir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    destdir = tmp_path_factory.mktemp("stage")
    make("install", destdir)
    return destdir


def test_install_lays_out_the_box(stage: Path) -> None:
    venv_cmd = stage / "opt/gatewayd/venv/bin/gatewayd"
    assert os.access(venv_cmd, os.X_OK)
    assert (stage / "etc/systemd/system/gatewayd.service").read_text() == (
        ROOT / "systemd/gatewayd.service"
    ).read_text()
    if (ROOT / "systemd/zwave-js-server.service").exists():
        assert (stage / "etc/systemd/system/zwave-js-server.service").exists()
    assert (stage / "usr/lib/sysusers.d/gatewayd.conf").read_text() == (
        ROOT / "systemd/gatewayd.sysusers"
    ).read_text()
    config = stage / "etc/gatewayd/config.toml"
    assert config.read_text() == (ROOT / "config.example.toml").read_text()
    assert mode(config) == 0o640
    assert mode(stage / "etc/gatewayd") == 0o750
    link = stage / "usr/local/bin/gatewayd"
    assert link.is_symlink()
    assert os.readlink(link) == "/opt/gatewayd/venv/bin/gatewayd"
    # The installed tree is read-only to the service: bytecode is compiled at install time.
    assert list((stage / "opt/gatewayd/venv").rglob("gatewayd/__pycache__/daemon.*.pyc"))


def test_the_installed_command_checks_configs(stage: Path, tmp_path: Path) -> None:
    cmd = stage / "opt/gatewayd/venv/bin/gatewayd"
    ok = subprocess.run(
        [cmd, "check-config", "-c", stage / "etc/gatewayd/config.toml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    # What ExecStartPre= leaves in the journal for a config with a mistake: one line, the key.
    bad = tmp_path / "bad.toml"
    bad.write_text('[status]\nlisten = "127.0.0.1:8181"\n[drivers.sim]\nenabled = "yes"\n')
    failed = subprocess.run(
        [cmd, "check-config", "-c", bad], capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 2
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "enabled" in lines[0]
    assert str(bad) in lines[0]


def test_the_installed_daemon_serves_its_status_page(stage: Path, tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(config_text(tmp_path / "state", status_port=port))
    proc = DaemonProcess(cfg, tmp_path / "daemon.log")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    with proc.log_file.open("ab") as out:
        # Away from the source tree, so only the installed copy can be imported.
        proc.proc = subprocess.Popen(
            [stage / "opt/gatewayd/venv/bin/gatewayd", "run", "-c", cfg],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        proc.wait_healthy(port)
        status = http_json(f"http://127.0.0.1:{port}/status")
        assert len(status["devices"]) == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert "<h2>Locks" in resp.read().decode()
    finally:
        proc.kill()


def test_a_second_install_keeps_the_config_and_uninstall_keeps_a_changed_one(
    tmp_path: Path,
) -> None:
    destdir = tmp_path / "stage"
    make("install", destdir)
    config = destdir / "etc/gatewayd/config.toml"
    edited = config.read_text().replace('name = "gatewayd"', 'name = "front door"')
    assert edited != config.read_text()
    config.write_text(edited)
    make("install", destdir)
    assert config.read_text() == edited
    (destdir / "var/lib/gatewayd").mkdir(parents=True)
    (destdir / "var/lib/gatewayd/gatewayd.db").write_text("state")

    make("uninstall", destdir)
    assert config.read_text() == edited
    assert (destdir / "var/lib/gatewayd/gatewayd.db").read_text() == "state"
    assert not (destdir / "opt/gatewayd").exists()
    assert not (destdir / "etc/systemd/system/gatewayd.service").exists()
    assert not (destdir / "usr/lib/sysusers.d/gatewayd.conf").exists()
    assert not (destdir / "usr/local/bin/gatewayd").is_symlink()

    # Unchanged since install: uninstall takes the config (and its directory) too.
    make("install", destdir)
    config.unlink()
    make("install", destdir)
    make("uninstall", destdir)
    assert not (destdir / "etc/gatewayd").exists()
    shutil.rmtree(destdir)
