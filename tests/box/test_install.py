"""`make install` into a throw-away DESTDIR: the tree, its modes, a config never overwritten,
the installed command working (check-config, a running daemon), and `make uninstall`."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_zigbee_e2e import ZIGBEE
from tests.support import (
    ROOT,
    DaemonProcess,
    config_text,
    free_port,
    http_json,
    stop_process,
    unit_command,
    unit_environment,
    unit_process_environment,
    wait_status,
)
from tests.zwave.stack import ZWaveStack, shared_stack

pytestmark = pytest.mark.stack


def make(target: str, destdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`make target DESTDIR=destdir`, with `env` (PREFIX, EXTRAS, ...) added to the environment."""
    result = subprocess.run(
        ["make", "--no-print-directory", target, f"DESTDIR={destdir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
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
    assert (stage / "usr/lib/sysusers.d/gatewayd.conf").read_text() == (
        ROOT / "systemd/gatewayd.sysusers"
    ).read_text()
    # What zwave-js-server.service runs is installed with it (Node.js >= 20 is on this machine):
    # the npm stack, the key script, its user; the unit names the Node.js install found.
    node = shutil.which("node")
    assert node is not None
    unit = (stage / "etc/systemd/system/zwave-js-server.service").read_text()
    assert unit == (ROOT / "systemd/zwave-js-server.service").read_text().replace(
        "ExecStart=/usr/bin/node ", f"ExecStart={os.path.realpath(node)} "
    )
    argv = _unit_argv(unit, "ExecStart")
    assert Path(argv[0]).resolve() == Path(node).resolve()
    assert (stage / argv[1].lstrip("/")).is_file()  # zwave-server, in the installed stack
    keys = stage / _unit_argv(unit, "ExecStartPre")[0].lstrip("/")
    assert mode(keys) == 0o755
    assert keys.read_text() == (ROOT / "scripts/zwave-keys.sh").read_text()
    assert (stage / "usr/lib/sysusers.d/gatewayd-zwave-js.conf").read_text() == (
        ROOT / "systemd/zwave-js.sysusers"
    ).read_text()
    assert "u zwave-js " in (ROOT / "systemd/zwave-js.sysusers").read_text()
    assert "User=zwave-js" in unit
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
    # the installed config as it is, but for a state dir any user running the tests may make
    # (check-config refuses one it could not create, as `run` would)
    installed = (stage / "etc/gatewayd/config.toml").read_text()
    assert 'state_dir = "/var/lib/gatewayd"' in installed
    good = tmp_path / "config.toml"
    good.write_text(installed.replace("/var/lib/gatewayd", str(tmp_path / "state"), 1))
    ok = subprocess.run(
        [cmd, "check-config", "-c", good],
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
        [cmd, "check-config", "-c", bad],
        capture_output=True,
        text=True,
        timeout=60,
        env=unit_process_environment(),  # ExecStartPre= runs with the unit's Environment=
    )
    assert failed.returncode == 2
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "enabled" in lines[0]
    assert str(bad) in lines[0]


def _start_as_the_unit(proc: DaemonProcess, stage: Path, cfg: Path, cwd: Path) -> None:
    """The staged daemon as gatewayd.service starts it: its ExecStart, only its Environment=."""
    with proc.log_file.open("ab") as out:
        proc.proc = subprocess.Popen(
            unit_command(stage, cfg),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=unit_process_environment(),
            cwd=cwd,
        )


def _unit_argv(unit: str, key: str) -> list[str]:
    """The command line of a unit's first `key=` line."""
    line = next(line for line in unit.splitlines() if line.startswith(f"{key}="))
    return shlex.split(line.partition("=")[2])


def test_the_installed_zwave_server_runs_as_its_unit_starts_it(stage: Path, tmp_path: Path) -> None:
    """zwave-js-server.service's ExecStartPre and ExecStart from the staged tree (its Node.js,
    its npm stack, its key script), the controller a mock stick on a TCP port instead of USB:
    the keys are made once, 0600, and the installed daemon moves a lock through that server."""
    unit = (stage / "etc/systemd/system/zwave-js-server.service").read_text()
    state = tmp_path / "zwave-state"
    state.mkdir(mode=0o700)
    keys = [str(stage) + _unit_argv(unit, "ExecStartPre")[0], str(state)]
    subprocess.run(keys, check=True, timeout=30)
    first = (state / "zwave-server.json").read_text()
    subprocess.run(keys, check=True, timeout=30)  # a second start keeps the keys
    assert (state / "zwave-server.json").read_text() == first
    assert mode(state / "zwave-server.json") == 0o600

    stack = ZWaveStack(tmp_path / "mock", locks=1)
    stack.start_mock()
    argv = _unit_argv(unit, "ExecStart")
    argv[1] = str(stage) + argv[1]
    argv[argv.index("${ZWAVE_DEVICE}")] = f"tcp://127.0.0.1:{stack.serial_port}"
    argv[argv.index("--config") + 1] = str(state / "zwave-server.json")
    argv[argv.index("--port") + 1] = str(stack.ws_port)
    workdir = next(
        line.partition("=")[2] for line in unit.splitlines() if line.startswith("WorkingDirectory=")
    )
    log = tmp_path / "zwave-server.log"
    port = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        config_text(tmp_path / "state", status_port=port, locks=1, extra=stack.daemon_toml())
    )
    proc = DaemonProcess(cfg, tmp_path / "daemon.log")
    with log.open("ab") as out:
        server = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=str(stage) + workdir
        )
    try:
        _poll(lambda: "server listening on" in log.read_text(errors="replace"), 60)
        _start_as_the_unit(proc, stage, cfg, tmp_path)
        base = f"http://127.0.0.1:{port}"
        proc.wait_healthy(port)

        def zwave_locks() -> list[str]:
            devices = http_json(f"{base}/status")["devices"]
            return [d["id"] for d in devices if d["driver"] == "zwave"]

        _poll(lambda: len(zwave_locks()) == 1, 60)
        device_id = zwave_locks()[0]
        for action in ("unlock", "lock"):
            body = {"device_id": device_id, "action": action, "inputs": {}, "timeout_s": 30}
            sent = http_json(f"{base}/actions", body)
            done = wait_status(base, sent["action_request_id"], timeout=40)
            assert done["status"] == "completed", done
    finally:
        proc.kill()
        stop_process(server, 5)
        stack.stop()


def _poll(predicate: Callable[[], bool], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"{predicate.__name__}: not within {timeout} s"
        time.sleep(0.05)


PIN = "480917"  # distinctive: it must reach the locks and no log line
SLOT = 5


def test_the_installed_daemon_runs_every_driver_as_the_unit_starts_it(
    stage: Path, tmp_path: Path
) -> None:
    """The unit's ExecStart from the staged tree with only its Environment= (so optimised,
    PYTHONOPTIMIZE=2: no asserts, no docstrings), away from the source tree: locks of all three
    drivers move, take and drop a code, and report a keypad unlock with its slot."""
    stack = shared_stack()
    stack.reset()
    # What the unit's interpreter loads: bytecode compiled at install for its optimisation level.
    optimize = unit_environment().get("PYTHONOPTIMIZE")
    tag = f"opt-{optimize}." if optimize else ""
    venv = stage / "opt/gatewayd/venv"
    assert list(venv.rglob(f"gatewayd/__pycache__/daemon.*.{tag}pyc"))
    assert list(venv.rglob(f"zwave_js_server/__pycache__/event.*.{tag}pyc"))
    assert list(venv.rglob(f"zigpy/__pycache__/application.*.{tag}pyc"))

    port = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        config_text(
            tmp_path / "state",
            status_port=port,
            locks=1,
            extra=stack.daemon_toml(code_recheck_s=0) + ZIGBEE,
        )
    )
    proc = DaemonProcess(cfg, tmp_path / "daemon.log")
    _start_as_the_unit(proc, stage, cfg, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        proc.wait_healthy(port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = http_json(f"{base}/status")
            drivers = {d["driver"] for d in status["devices"]}
            if status["gateway"]["ready"] and len(status["devices"]) == 5:
                break
            time.sleep(0.1)
        assert drivers == {"sim", "zwave", "zigbee"}, status["drivers"]
        for device in status["devices"]:
            device_id = device["id"]

            def act(action: str, inputs: dict[str, Any], device_id: str = device_id) -> None:
                body = {"device_id": device_id, "action": action, "inputs": inputs}
                sent = http_json(f"{base}/actions", {**body, "timeout_s": 30})
                done = wait_status(base, sent["action_request_id"], timeout=40)
                assert done["status"] == "completed", (device_id, done)

            def keypad_unlock_seen(device_id: str = device_id) -> bool:
                status = http_json(f"{base}/status")
                event = next(d for d in status["devices"] if d["id"] == device_id)["last_event"]
                return (
                    event is not None
                    and event["event_name"] == "door unlocked"
                    and (event["details"] == {"method": "pin_code", "slot_id": SLOT})
                )

            act("unlock", {})
            act("lock", {})
            act("set_code", {"code": PIN, "slot_id": SLOT})
            answer = http_json(
                f"{base}/simulate",
                {"device_id": device_id, "what": "keypad_unlock", "params": {"slot_id": SLOT}},
            )
            assert answer == {"ok": True}, (device["driver"], answer)
            _poll(keypad_unlock_seen, 15)
            act("clear_code", {"slot_id": SLOT})
        with urllib.request.urlopen(f"{base}/", timeout=5) as resp:
            assert "<h2>Locks" in resp.read().decode()
    finally:
        proc.kill()
    assert PIN not in proc.log_file.read_text()


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
    for gone in (
        "etc/systemd/system/gatewayd.service",
        "etc/systemd/system/zwave-js-server.service",
        "usr/lib/sysusers.d/gatewayd.conf",
        "usr/lib/sysusers.d/gatewayd-zwave-js.conf",
    ):
        assert not (destdir / gone).exists(), gone
    assert not (destdir / "usr/local/bin/gatewayd").is_symlink()

    # Unchanged since install: uninstall takes the config (and its directory) too.
    make("install", destdir)
    config.unlink()
    # Installed again without Z-Wave: the unit and stack installed before stay ours, and go.
    make("install", destdir, EXTRAS="zigbee")
    zwave_unit = destdir / "etc/systemd/system/zwave-js-server.service"
    assert zwave_unit.exists()
    make("uninstall", destdir)
    assert not (destdir / "etc/gatewayd").exists()
    assert not zwave_unit.exists()
    assert not (destdir / "usr/lib/sysusers.d/gatewayd-zwave-js.conf").exists()
    assert not (destdir / "opt/gatewayd").exists()
    shutil.rmtree(destdir)


def test_this_machines_own_zwave_server_unit_is_never_touched(tmp_path: Path) -> None:
    """A zwave-js-server.service the box had before (its own zwave-js-server, say) is neither
    replaced by install nor removed by uninstall, and no stack is installed for it."""
    destdir = tmp_path / "stage"
    own = destdir / "etc/systemd/system/zwave-js-server.service"
    own.parent.mkdir(parents=True)
    own.write_text("[Service]\nExecStart=/usr/local/bin/zwave-server /dev/ttyACM0\n")
    before = own.read_text()
    out = make("install", destdir).stdout
    assert own.read_text() == before
    assert "keeping this machine's own" in out
    assert not (destdir / "opt/gatewayd/zwave").exists()
    assert (destdir / "etc/systemd/system/gatewayd.service").exists()
    out = make("uninstall", destdir).stdout
    assert own.read_text() == before
    assert "kept zwave-js-server.service" in out
    assert not (destdir / "etc/systemd/system/gatewayd.service").exists()


def test_another_prefix_is_written_into_the_unit(tmp_path: Path) -> None:
    """PREFIX=/srv/gw: the installed unit runs /srv/gw's gatewayd, not /opt/gatewayd's; without
    the zwave extra no zwave-js-server.service (nor its stack) is installed."""
    destdir = tmp_path / "stage"
    # a path systemd would split or expand, or sed would rewrite, is refused before anything
    for bad in ("/srv/my gw", "/srv/a&b", "/srv/a%b"):
        refused = subprocess.run(
            ["make", "--no-print-directory", "install", f"DESTDIR={destdir}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PREFIX": bad},
        )
        assert refused.returncode != 0
        assert "PREFIX must not contain" in refused.stderr
        assert not destdir.exists()
    make("install", destdir, PREFIX="/srv/gw", EXTRAS="zigbee")
    unit = (destdir / "etc/systemd/system/gatewayd.service").read_text()
    assert "/opt/gatewayd" not in unit
    assert _unit_argv(unit, "ExecStart")[0] == "/srv/gw/venv/bin/gatewayd"
    assert os.access(destdir / "srv/gw/venv/bin/gatewayd", os.X_OK)
    assert not (destdir / "etc/systemd/system/zwave-js-server.service").exists()
    assert not (destdir / "srv/gw/zwave").exists()
    make("uninstall", destdir, PREFIX="/srv/gw")
    assert not (destdir / "srv/gw").exists()
    assert not (destdir / "etc/systemd/system/gatewayd.service").exists()
