"""`gatewayd demo` starts the cloud and a claimed daemon, and the curl commands it prints work."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gatewayd.demo import READY_LINE
from tests.support import ROOT

pytestmark = pytest.mark.stack


def run(command: str) -> Any:
    out = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=True
    )
    return json.loads(out.stdout)


def until_terminal(get_command: str, action_id: str) -> dict[str, Any]:
    end = time.monotonic() + 20
    while time.monotonic() < end:
        ar = run(get_command.replace("ACTION_REQUEST_ID", action_id))
        if ar["status"] in ("completed", "failed", "gateway_failure"):
            return dict(ar)
        time.sleep(0.1)
    raise AssertionError(f"{action_id} did not finish")


def wait_for_keypad_unlock(events_command: str) -> dict[str, Any]:
    end = time.monotonic() + 10
    while time.monotonic() < end:
        for e in run(events_command):
            if e["event_name"] == "door unlocked" and e["details"].get("method") == "pin_code":
                return dict(e)
        time.sleep(0.1)
    raise AssertionError("no keypad unlock event")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill a process started with `start_new_session` and all it started: a demo stopped by a
    failing test must not leave its devcloud serving."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(15)


@contextmanager
def _demo(
    *args: str,
    cwd: Path,
    stop: signal.Signals = signal.SIGINT,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """`gatewayd demo` on free ports; Ctrl-C (or `stop`) at the end, after which it must exit 0."""
    proc = _start_demo(*args, cwd=cwd, env=env)
    try:
        yield proc
        proc.send_signal(stop)
        assert proc.wait(15) == 0
    finally:
        _kill_group(proc)


def _start_demo(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`gatewayd demo` on free ports, in a process group of its own (see `_kill_group`)."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "gatewayd.cli", "demo"),
            *("--status-port", "0", "--cloud-port", "0", *args),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )


def _until_ready(proc: subprocess.Popen[str]) -> list[str]:
    """The demo's output lines up to the one saying it is ready (60 s at most)."""
    assert proc.stdout is not None
    lines: list[str] = []
    end = time.monotonic() + 60
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if READY_LINE in line:
            break
    assert any(READY_LINE in line for line in lines), "\n".join(lines)
    return lines


def test_demo_prints_commands_that_work(tmp_path: Path) -> None:
    with _demo("--dir", str(tmp_path / "demo"), cwd=ROOT) as proc:
        lines = _until_ready(proc)
        # the cloud's database and the logs are in it: no other user reads them
        assert stat.S_IMODE((tmp_path / "demo").stat().st_mode) == 0o700
        commands = [line.strip() for line in lines if line.strip().startswith("curl ")]
        get_ar = next(c for c in commands if "ACTION_REQUEST_ID" in c)
        events_cmd = next(c for c in commands if c.endswith("/v1/events"))
        devices_cmd = next(c for c in commands if c.endswith("/v1/devices"))
        assert len(run(devices_cmd)) == 2

        # every command in the order printed, as a user runs them
        done: list[str] = []
        for command in commands:
            if command in (get_ar, events_cmd, devices_cmd):
                continue
            target = shlex.split(command)[-1]
            if "/simulate" in command:
                # a person at the door types the code the printed set_code wrote
                assert done[-1:] == ["set_code"], done
                assert run(command) == {"ok": True}
                assert wait_for_keypad_unlock(events_cmd)["details"]["slot_id"] == 3
                done.append("simulate")
                continue
            action = target.rsplit("/", 1)[-1]
            ar = run(command)
            assert ar["status"] == "pending", ar
            assert set(ar["data"]) == {action}
            if action == "set_code":
                assert ar["data"]["set_code"]["code"] == "****"
            assert until_terminal(get_ar, ar["id"])["status"] == "completed"
            done.append(action)
        assert done == [
            "unlock",
            "lock",
            "set_code",
            "simulate",
            "clear_code",
            "pair_devices",
        ]
        names = [e["event_name"] for e in run(events_cmd)]
        for name in ("door unlocked", "door locked", "code set on device"):
            assert name in names, names
        end = time.monotonic() + 10
        while len(run(devices_cmd)) < 3 and time.monotonic() < end:
            time.sleep(0.1)
        assert len(run(devices_cmd)) == 3  # the simulated lock that joined

        # README: `gatewayd status -c FILE` prints the status page in a terminal
        status_cmd = next(line.split(": ", 1)[1] for line in lines if " status -c " in line)
        shown = subprocess.run(
            ["bash", "-c", status_cmd], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        assert "claimed as " in shown, shown
        assert "tunnel up, 3 locks" in shown, shown
    for name in ("gatewayd.log", "devcloud.log"):
        log = (tmp_path / "demo" / name).read_text()
        assert not re.search(r"code\W{1,4}\d{4}", log), f"a code value is in {name}"
    assert "daemon.ready" in (tmp_path / "demo" / "gatewayd.log").read_text()


def test_a_relative_demo_dir_is_taken_from_the_current_directory(tmp_path: Path) -> None:
    """`gatewayd demo --dir demo` ended with "gateway.state_dir: 'demo/gateway' is a relative
    path": the config refuses relative state directories."""
    with _demo("--dir", "demo", cwd=tmp_path) as proc:
        lines = _until_ready(proc)
        assert f"Logs: {tmp_path / 'demo'}" in "\n".join(lines)
    assert (tmp_path / "demo" / "gateway" / "gatewayd.db").exists()


def test_a_demo_with_one_lock_says_so(tmp_path: Path) -> None:
    """`gatewayd demo --locks 1` said the gateway "has 1 locks"."""
    with _demo("--dir", str(tmp_path / "demo"), "--locks", "1", cwd=ROOT) as proc:
        assert "is claimed and has 1 lock." in "\n".join(_until_ready(proc))


def _refused(
    tmp_path: Path, *args: str, argv: tuple[str, ...] = ("-m", "gatewayd.cli")
) -> subprocess.CompletedProcess[str]:
    """`gatewayd demo ARGS` expected to end at once, with no traceback."""
    command = [sys.executable, *argv, "demo", "--dir", str(tmp_path / "demo"), *args]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        _kill_group(proc)
    assert "Traceback" not in stderr, stderr
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def test_demo_with_no_locks_is_refused_in_one_line(tmp_path: Path) -> None:
    """`--locks 0` waited 30 s for a lock to show in the cloud, then ended with a traceback."""
    out = _refused(tmp_path, "--locks", "0", "--status-port", "0", "--cloud-port", "0")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "gatewayd demo: --locks must be at least 1 (the commands it prints act on a lock)"
    ]


# The demo with a cloud that never answers, so that it stays in claim(): its devcloud is
# replaced by a process that does nothing, and the tunnel dials a port nobody listens on.
_STUCK_IN_CLAIM = """
import subprocess, sys
import gatewayd.demo
from gatewayd.cli import main

port = int(sys.argv[1])
gatewayd.demo.start_cloud = lambda work, key, _: (subprocess.Popen(["sleep", "60"]), port)
sys.exit(main(sys.argv[2:]))
"""


def test_ctrl_c_while_the_demo_is_claiming_exits_at_once_without_a_traceback(
    tmp_path: Path,
) -> None:
    """Ctrl-C stopped the daemon, but claim() polled its tunnel for the rest of 30 s and the
    demo ended with a TimeoutError traceback."""
    from tests.support import free_port

    status_port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-c", _STUCK_IN_CLAIM, str(free_port()), "demo"),
            *("--status-port", str(status_port), "--dir", str(tmp_path / "demo")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:  # the daemon is up: the demo is in claim() now
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/healthz", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        # well within claim()'s 30 s: the demo must not wait for them
        output, _ = proc.communicate(timeout=20)
    finally:
        _kill_group(proc)
    assert "Traceback" not in output, output
    assert proc.returncode == 0


@pytest.mark.parametrize("taken", ["--cloud-port", "--status-port"])
def test_demo_with_a_port_taken_says_so_in_one_line(tmp_path: Path, taken: str) -> None:
    """8080 and 8181 are often in use: the demo ended with devcloud's bind traceback wrapped
    in a RuntimeError, or an exception group around the status endpoint's ListenError."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"--cloud-port": "0", "--status-port": "0", taken: str(port)}
        out = _refused(tmp_path, *(arg for pair in ports.items() for arg in pair))
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("gatewayd demo: ")
    assert f"127.0.0.1:{port}" in line
    # `make demo` cannot take the option itself: the hint says how to pass it
    assert f'({taken} 0 takes a free port; with make: make demo ARGS="{taken} 0")' in line


def test_closing_the_demos_terminal_stops_it_and_its_cloud(tmp_path: Path) -> None:
    """SIGHUP (the terminal closed) killed the demo outright: its devcloud, a process of its
    own, went on serving with nobody to stop it. The demo now stops as on Ctrl-C."""
    with _demo("--dir", str(tmp_path / "demo"), cwd=tmp_path, stop=signal.SIGHUP) as proc:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/v1/", "\n".join(_until_ready(proc)))
        assert found is not None
        cloud = int(found[1])
        socket.create_connection(("127.0.0.1", cloud), timeout=5).close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", cloud), timeout=5).close()


def test_a_demo_killed_outright_does_not_leave_its_cloud_serving(tmp_path: Path) -> None:
    """A demo killed with SIGKILL (kill -9, the OOM killer) left its devcloud, a process of its
    own, serving for good: the next `make demo` found port 8080 taken. devcloud now stops when
    the pipe the demo holds open as its stdin closes."""
    proc = _start_demo("--dir", str(tmp_path / "demo"), cwd=ROOT)
    try:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/v1/", "\n".join(_until_ready(proc)))
        assert found is not None
        cloud = int(found[1])
        socket.create_connection(("127.0.0.1", cloud), timeout=5).close()
        proc.kill()  # the demo alone, not its process group
        proc.wait(15)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", cloud), timeout=5).close()
            except ConnectionRefusedError:
                break
            time.sleep(0.1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", cloud), timeout=5).close()
    finally:
        _kill_group(proc)


def test_the_temporary_dir_of_a_demo_killed_outright_goes_at_the_next_demo(
    tmp_path: Path,
) -> None:
    """A demo killed with SIGKILL left its temporary dir, a gateway credential and the demo's
    API key in it, for good. The next demo removes it: a dir whose demo is gone, and only that
    (not a live demo's, not one whose demo is still writing its pid)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    first = _start_demo(cwd=ROOT, env=env)
    try:
        _until_ready(first)
        (stale,) = tmp.glob("gatewayd-demo-*")
        assert (stale / "api-key").exists()
    finally:
        _kill_group(first)  # SIGKILL, the demo and its devcloud
    live = tmp / "gatewayd-demo-live"  # a demo running: this test's process
    live.mkdir(mode=0o700)
    (live / "demo.pid").write_text(f"{os.getpid()}\n")
    starting = tmp / "gatewayd-demo-starting"  # no pid yet
    starting.mkdir(mode=0o700)
    assert stale.exists()
    with _demo(cwd=ROOT, env=env) as second:
        _until_ready(second)
        assert not stale.exists()
        assert live.exists()
        assert starting.exists()
        (own,) = set(tmp.glob("gatewayd-demo-*")) - {live, starting}
        assert (own / "api-key").exists()


def _gateway_id(lines: list[str]) -> str:
    found = re.search(r"The gateway \(([^)]+)\) is claimed", "\n".join(lines))
    assert found is not None, lines
    return found[1]


def test_a_second_demo_in_the_same_dir_carries_on_with_its_gateway(tmp_path: Path) -> None:
    """The second `gatewayd demo --dir D` ended in a traceback: the gateway D keeps was claimed
    by the first, and registering it again failed. Now it is looked up in the cloud. Its API
    key is the first run's too: it was a new one each run, and the commands printed by the
    first run no longer worked."""
    with _demo("--dir", str(tmp_path / "demo"), cwd=ROOT) as proc:
        first_lines = _until_ready(proc)
        first = _gateway_id(first_lines)
    assert (tmp_path / "demo" / "api-key").stat().st_mode & 0o777 == 0o600
    with _demo("--dir", str(tmp_path / "demo"), cwd=ROOT) as proc:
        lines = _until_ready(proc)
        assert _gateway_id(lines) == first
        assert _api_key(lines) == _api_key(first_lines)
        # the commands the first run printed act on the gateway in the second (on a cloud port
        # of its own here: the tests ask for free ports)
        first_cloud, second_cloud = _cloud_url(first_lines), _cloud_url(lines)
        commands = [
            line.strip().replace(first_cloud, second_cloud)
            for line in first_lines
            if line.strip().startswith("curl ")
        ]
        get_ar = next(c for c in commands if "ACTION_REQUEST_ID" in c)
        unlock = next(c for c in commands if c.endswith("/actions/unlock"))
        assert until_terminal(get_ar, run(unlock)["id"])["status"] == "completed"
        events = next(c for c in commands if c.endswith("/v1/events"))
        locations = run(events.replace("/v1/events", "/v1/locations"))
        assert len(locations) == 1, locations  # no second "Demo house"


def _lines_to_ready_or_end(proc: subprocess.Popen[str]) -> list[str]:
    """A demo's output lines up to its ready line or its end, whichever comes first."""
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if READY_LINE in line:
            break
    return lines


def test_a_second_demo_in_a_dir_a_demo_runs_in_is_refused(tmp_path: Path) -> None:
    """A second `gatewayd demo --dir D` while one ran in D started: a second daemon on the
    first one's gateway store, a second cloud on its database, and its ports written over the
    config the first one's `gatewayd status -c` command reads. It is refused now, naming the
    demo that runs there and how to stop it."""
    demo_dir = tmp_path / "demo"
    with _demo("--dir", str(demo_dir), cwd=ROOT) as first:
        _until_ready(first)
        config = (demo_dir / "gatewayd.toml").read_text()
        second = _start_demo("--dir", str(demo_dir), cwd=ROOT)
        try:
            lines = _lines_to_ready_or_end(second)
            assert not any(READY_LINE in line for line in lines), lines
            assert second.wait(15) == 1
        finally:
            _kill_group(second)
        assert lines == [
            f"gatewayd demo: another demo (pid {first.pid}) is running in {demo_dir}: stop it"
            f" (kill {first.pid}) first, or give this one another --dir"
        ]
        assert (demo_dir / "gatewayd.toml").read_text() == config
        assert first.poll() is None
    assert not (demo_dir / "demo.pid").exists()  # stopped: no pid left for the next demo


def test_a_demo_dir_left_by_a_demo_killed_outright_is_carried_on_with_a_note(
    tmp_path: Path,
) -> None:
    """A demo killed outright (kill -9, a crash) leaves its --dir with its pid file, its
    gateway and cloud database: the next demo there says so, and carries on with them."""
    demo_dir = tmp_path / "demo"
    killed = _start_demo("--dir", str(demo_dir), cwd=ROOT)
    try:
        first = _gateway_id(_until_ready(killed))
        killed.kill()  # the demo alone: its devcloud stops as its stdin closes
        killed.wait(15)
    finally:
        _kill_group(killed)
    assert (demo_dir / "demo.pid").read_text().strip() == str(killed.pid)
    with _demo("--dir", str(demo_dir), cwd=ROOT) as proc:
        lines = _until_ready(proc)
        assert lines[0] == (
            f"The demo that ran in {demo_dir} before (pid {killed.pid}) did not stop (killed,"
            " or crashed): carrying on with its gateway, cloud database and API key."
        ), lines
        assert _gateway_id(lines) == first
        assert (demo_dir / "demo.pid").read_text().strip() == str(proc.pid)
    assert not (demo_dir / "demo.pid").exists()


def _api_key(lines: list[str]) -> str:
    found = re.search(r"API key (\S+)", "\n".join(lines))
    assert found is not None, lines
    return found[1]


def _cloud_url(lines: list[str]) -> str:
    found = re.search(r"reference cloud is at (http://\S+),", "\n".join(lines))
    assert found is not None, lines
    return found[1]


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc/*/stat (ppid: the 2nd field after comm)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat_file.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat_file.parent.name))
    return found


def test_the_demos_api_key_is_not_on_devclouds_command_line(tmp_path: Path) -> None:
    """devcloud got the API key as `--api-key KEY`: any user of the machine saw it in `ps`."""
    with _demo("--dir", str(tmp_path / "demo"), cwd=ROOT) as proc:
        lines = _until_ready(proc)
        key = _api_key(lines).encode()
        argvs = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in _children(proc.pid)]
        (cloud,) = [argv for argv in argvs if b"devcloud.cli" in argv]
        assert key not in cloud, cloud
        # and the cloud takes it: the printed commands work
        devices = next(c.strip() for c in lines if c.strip().endswith("/v1/devices"))
        assert len(run(devices)) == 2


# The demo against a real devcloud that was given another API key than the one the demo uses:
# every REST call of the claim is refused.
_OTHER_KEY = """
import sys
import gatewayd.demo
from gatewayd.cli import main

real = gatewayd.demo.start_cloud
gatewayd.demo.start_cloud = lambda work, key, port: real(work, "not-the-demos-key", port)
sys.exit(main(sys.argv[1:]))
"""

# The demo with a defect: the claim raises what nobody expected.
_DEFECT = """
import sys
import gatewayd.demo
from gatewayd.cli import main

async def claim(*args):
    raise LookupError("a defect in claim()")

gatewayd.demo.claim = claim
sys.exit(main(sys.argv[1:]))
"""


def test_a_cloud_that_refuses_the_demo_is_said_in_one_line(tmp_path: Path) -> None:
    """A failed claim ended in a traceback (a KeyError on the cloud's error answer)."""
    out = _refused(tmp_path, "--status-port", "0", "--cloud-port", "0", argv=("-c", _OTHER_KEY))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "gatewayd demo: POST /v1/locations: the cloud answered 401: "
        "Couldn't authenticate your request"
    ]


def test_a_defect_in_the_demo_ends_in_one_line_and_a_logged_traceback(tmp_path: Path) -> None:
    out = _refused(tmp_path, "--status-port", "0", "--cloud-port", "0", argv=("-c", _DEFECT))
    assert out.returncode == 1
    log = tmp_path / "demo" / "gatewayd.log"
    assert out.stderr.strip().splitlines() == [
        f"gatewayd demo: LookupError: a defect in claim() (traceback in {log})"
    ]
    assert "a defect in claim()" in log.read_text()
    assert "Traceback" in log.read_text()


def test_make_demos_set_up_runs_without_node(tmp_path: Path) -> None:
    """`make demo` on a machine without Node.js ended in `npm: command not found` (exit 127)
    before the demo started: its set-up installed the Z-Wave test stack from npm, which
    simulated locks do not need. Only `make test` needs it now, and says so in one line."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", repo / "scripts")
    shutil.copy(ROOT / "package-lock.json", repo)
    # a uv of the pinned version whose sync succeeds, so that nothing is downloaded: what
    # this test is about comes after the Python packages
    pinned = re.search(r"^UV_VERSION=(\S+)$", (ROOT / "scripts" / "bootstrap.sh").read_text(), re.M)
    assert pinned is not None
    uv = repo / ".tools" / "bin" / "uv"
    uv.parent.mkdir(parents=True)
    uv.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "uv {pinned[1]}"\nexit 0\n')
    uv.chmod(0o755)
    tools = tmp_path / "bin"  # what the script runs, with a Python >= 3.12 and no npm
    tools.mkdir()
    for name in ("dirname", "cut", "cmp", "cp", "id"):
        found = shutil.which(name)
        assert found is not None, name
        (tools / name).symlink_to(found)
    (tools / "python3.12").symlink_to(sys.executable)

    def bootstrap(*args: str) -> subprocess.CompletedProcess[str]:
        bash = shutil.which("bash")
        assert bash is not None
        return subprocess.run(
            [bash, "scripts/bootstrap.sh", *args],
            cwd=repo,
            env={"PATH": str(tools), "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )

    demo = bootstrap()
    assert demo.returncode == 0, demo.stderr
    assert demo.stderr.strip().splitlines() == [
        "bootstrap: npm not found, the Z-Wave stack is left out"
        " (the demo does not need it; make test does)"
    ]
    tests = bootstrap("--test")
    assert tests.returncode == 1
    assert tests.stderr.strip().splitlines() == [
        "gatewayd tests need Node.js >= 20 with npm (the Z-Wave tests run zwave-server):"
        " install it and run make again"
    ]
