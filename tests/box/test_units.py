"""The systemd units as systemd itself reads them: verify, the exposure score, the service user."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

UNITS = [p for p in (ROOT / "systemd").glob("*.service")]
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 2.0


@pytest.fixture(autouse=True)
def _systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir():
        pytest.fail("systemd-analyze is missing: `make setup` installs the systemd package")


def exec_paths(unit: Path) -> list[str]:
    """The programs a unit runs (ExecStart=, ExecStartPre=, ...), without their prefixes."""
    paths = []
    for line in unit.read_text().splitlines():
        m = re.match(r"\s*Exec\w+=\s*[-@:+!]*(\S+)", line)
        if m:
            paths.append(m.group(1))
    return paths


def verify_root(tmp_path: Path, units: list[Path]) -> Path:
    """A throw-away root with systemd's own units, ours in /etc, and the programs they run."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
        for program in exec_paths(unit):
            stub = root / program.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    return root


def verify(root: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "--man=no", *names],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_both_units_verify_cleanly(tmp_path: Path) -> None:
    names = [u.name for u in UNITS]
    assert "gatewayd.service" in names
    result = verify(verify_root(tmp_path, UNITS), names)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""  # not even a warning about an unknown key


def test_verify_catches_a_mistyped_key(tmp_path: Path) -> None:
    """The check above can fail: a typo in the unit is reported."""
    bad = tmp_path / "gatewayd.service"
    bad.write_text(
        (ROOT / "systemd/gatewayd.service").read_text().replace("WatchdogSec", "WatchdogSek")
    )
    result = verify(verify_root(tmp_path, [bad]), ["gatewayd.service"])
    assert "Unknown key 'WatchdogSek'" in result.stderr


def exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert m, result.stdout + result.stderr
    return float(m.group(1))


def test_gatewayd_service_exposure_is_at_most_2() -> None:
    score = exposure(ROOT / "systemd/gatewayd.service")
    assert score <= MAX_EXPOSURE
    # The README tells the same figure a person will see on the box.
    readme = (ROOT / "README.md").read_text()
    assert f"exposure level {score}" in readme


def test_the_daemon_runs_as_its_own_user_that_can_reach_radio_sticks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    conf = ROOT / "systemd/gatewayd.sysusers"
    subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(conf)], check=True, capture_output=True
    )
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    assert passwd["gatewayd"][6] == "/usr/sbin/nologin"
    assert int(passwd["gatewayd"][2]) < 1000  # a system user
    groups = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/group").read_text().splitlines()
    }
    assert "gatewayd" in groups["dialout"][3].split(",")


def test_the_service_runs_the_installed_command_and_checks_the_config_first() -> None:
    unit = (ROOT / "systemd/gatewayd.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings["Type"] == "notify"
    assert settings["WatchdogSec"] == "30"
    assert settings["User"] == "gatewayd"
    assert settings["StateDirectory"] == "gatewayd"
    assert settings["ExecStartPre"] == (
        "/opt/gatewayd/venv/bin/gatewayd check-config -c /etc/gatewayd/config.toml"
    )
    assert (
        settings["ExecStart"] == "/opt/gatewayd/venv/bin/gatewayd run -c /etc/gatewayd/config.toml"
    )
