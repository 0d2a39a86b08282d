"""`gatewayd run | status | token | check-config | demo`."""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import json
import os
import re
import sqlite3
import sys
import urllib.error
import urllib.request
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from gatewayd.config import Config, ConfigError, load_config

# Not __doc__: the unit runs the daemon with PYTHONOPTIMIZE=2, which drops docstrings.
DESCRIPTION = "gatewayd: the door-lock gateway daemon (run | status | token | check-config | demo)"

DEFAULT_CONFIG = "/etc/gatewayd/config.toml"
EXIT_CONFIG = 2
# control characters, and the invisible ones that reorder or hide text in a terminal (bidi
# overrides and isolates, zero-width characters): a lock's name comes from outside
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
_HASHED_CERT = re.compile(r"[0-9a-f]{8}\.\d+")  # what `openssl rehash` names a CA's link


def trust_anchors_on_demand(
    environ: MutableMapping[str, str] | None = None, capath: str | None = None
) -> bool:
    """Have OpenSSL look trust anchors up in the system's hashed CA directory when it verifies a
    peer, instead of parsing the whole CA bundle into every default SSLContext as it is made
    (aiohttp makes two when imported, before any TLS is used: about 2 MiB of RSS).

    Only where that directory is hashed (Debian's update-ca-certificates writes it and the bundle
    from the same CAs, so the tunnel trusts the same CAs), and never over an SSL_CERT_FILE or
    SSL_CERT_DIR already set. True if it changed the environment.
    """
    env = os.environ if environ is None else environ
    if "SSL_CERT_FILE" in env or "SSL_CERT_DIR" in env:
        return False
    if capath is None:
        import ssl

        capath = ssl.get_default_verify_paths().capath
    if capath is None or not _is_hashed(capath):
        return False
    env["SSL_CERT_FILE"] = os.devnull
    env["SSL_CERT_DIR"] = capath
    return True


def _is_hashed(directory: str) -> bool:
    try:
        return any(_HASHED_CERT.fullmatch(entry.name) for entry in os.scandir(directory))
    except OSError:
        return False


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        # run without -c on a machine where gatewayd is not installed (the demo's commands
        # name theirs): the line says where the config is chosen
        hint = "" if os.path.lexists(path) else " (-c FILE names the config to use)"
        print(f"gatewayd: {path}: {exc}{hint}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _too_new(db: Path, found: int, known: int) -> str:
    """The one line for a store a newer gatewayd wrote (a release rolled back after an upgrade):
    it is left as it is, so the way on is that gatewayd again, or a fresh state directory."""
    return (
        f"gatewayd: the store at {db} is schema {found}, this gatewayd knows up to {known}:"
        " install the newer gatewayd again (or start on a fresh state dir)"
    )


def _store_schema(cfg: Config) -> tuple[Path, int] | None:
    """The existing store's path and schema version, read without creating, migrating or
    writing anything; None if there is no store, or it cannot be read (another user, damage:
    `run` deals with those)."""
    from gatewayd.daemon import DB_NAME
    from gatewayd.store import read_schema_version

    db = Path(cfg.gateway.state_dir) / DB_NAME
    try:
        if not db.is_file():
            return None
        return db, read_schema_version(db)
    except (OSError, sqlite3.Error):
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    try:
        _prepare_state_dir(cfg, create=False)
    except ConfigError as exc:
        print(f"gatewayd: {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from gatewayd.store import SCHEMA_VERSION

    found = _store_schema(cfg)
    if found is not None and found[1] > SCHEMA_VERSION:
        print(_too_new(found[0], found[1], SCHEMA_VERSION), file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.config}: ok (drivers: {', '.join(cfg.enabled_drivers()) or 'none enabled'})")
    return 0


def _prepare_state_dir(cfg: Config, *, create: bool = True) -> None:
    """The state directory exists and this user may write it (ProtectSystem=strict leaves only
    the unit's StateDirectory writable); else a ConfigError naming gateway.state_dir.

    Without `create` (check-config) nothing is made: a missing directory only has to be one this
    user could make, and the error is the one `run` would give when making it."""
    path = Path(cfg.gateway.state_dir)
    try:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"gateway.state_dir: {path} is not a directory")
        if create:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        elif not path.exists():
            _check_could_make(path)
            return
    except OSError as exc:
        raise ConfigError(f"gateway.state_dir: cannot create {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"gateway.state_dir: {path} is not writable by this user")


def _check_could_make(path: Path) -> None:
    """Raise the OSError `path.mkdir(parents=True)` would, judged on its nearest existing
    ancestor, without making anything."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    try:
        _prepare_state_dir(cfg)
    except ConfigError as exc:
        print(f"gatewayd: {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    trust_anchors_on_demand()  # before aiohttp is imported
    from gatewayd import logging as gwlog
    from gatewayd.daemon import DB_NAME, Daemon
    from gatewayd.disk import free_space_note
    from gatewayd.status import find_listen_error
    from gatewayd.store import StoreTooNew

    gwlog.configure(cfg.log.level, cfg.log.format)
    daemon = Daemon(cfg, handle_signals=True, ignore_sighup=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(daemon.run)
    except Exception as exc:
        # Start-up failures an operator fixes on the box: one line, not a traceback.
        db = Path(cfg.gateway.state_dir) / DB_NAME
        if daemon.store is None and isinstance(exc, StoreTooNew):
            # not retried by systemd (2): the store stays as it is until the newer gatewayd
            print(_too_new(db, exc.found, exc.known), file=sys.stderr)
            return EXIT_CONFIG
        if daemon.store is None and isinstance(exc, OSError | sqlite3.Error):
            # a full disk shows as "disk I/O error" (no room for the -shm file): say the room
            note = free_space_note(db.parent) if isinstance(exc, sqlite3.OperationalError) else ""
            print(f"gatewayd: cannot open the store {db}: {exc}{note}", file=sys.stderr)
            return 1
        if (listen := find_listen_error(exc)) is not None:
            print(f"gatewayd: {args.config}: {listen}", file=sys.stderr)
            return 1
        raise
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from gatewayd.daemon import DB_NAME
    from gatewayd.store import read_identity

    db = Path(cfg.gateway.state_dir) / DB_NAME
    try:
        present = db.exists()
    except OSError as exc:  # the state dir is 0700: another user may not even look
        print(
            f"gatewayd: cannot read {cfg.gateway.state_dir}: {exc.strerror}"
            " (run as root or as the daemon's user)",
            file=sys.stderr,
        )
        return 1
    if not present:
        print(
            f"gatewayd: no state in {cfg.gateway.state_dir}: start the daemon first",
            file=sys.stderr,
        )
        return 1
    try:
        # read-only: run as root, a write could leave files the daemon's user cannot open
        ident = read_identity(db)
    except Exception as exc:  # noqa: BLE001 - report any reason the state cannot be read
        print(f"gatewayd: cannot open {db}: {exc}", file=sys.stderr)
        return 1
    if ident is None:
        print(f"gatewayd: no identity in {db} yet: start the daemon first", file=sys.stderr)
        return 1
    if ident.claimed:
        print(f"claimed as {ident.gateway_id}")
    else:
        print(ident.registration_token)
    return 0


class NotGatewaydStatus(Exception):
    """Something answered on the status address, but not gatewayd's /status document."""


def _fetch_status(cfg: Config) -> dict[str, Any]:
    host, port = cfg.status_address()
    if ":" in host:
        host = f"[{host}]"
    # never through a proxy named in the environment (http_proxy): the daemon is on this box,
    # and the proxy answered for it, "not answering", or was handed its registration token
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(f"http://{host}:{port}/status", timeout=5) as resp:
            body = resp.read()
    except OSError:
        raise  # not answering (RemoteDisconnected is one too): said as such by cmd_status
    except http.client.HTTPException:  # BadStatusLine, IncompleteRead: a program not HTTP
        raise NotGatewaydStatus("the answer is not HTTP (another program?)") from None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("gateway"), dict):
        raise NotGatewaydStatus("the answer is not gatewayd's /status (another program?)")
    return data


def render_status(s: dict[str, Any]) -> str:
    """The /status document as a few readable lines for a terminal."""
    from gatewayd.disk import describe_bytes

    g, t, st = s["gateway"], s["tunnel"], s["store"]
    lines = [f"gatewayd {g['version']} · {g['name']} · up {g['uptime_s']:.0f} s", g["status_line"]]
    if not g["claimed"]:
        token = g["registration_token"] or "shown to this machine only: run gatewayd token"
        lines.append(f"registration token: {token}")
    lines.append(
        f"tunnel: {t.get('state')}"
        + (f" (last error: {t['last_error']})" if t.get("last_error") else "")
        + f" · outbox backlog {st['outbox_backlog']}"
        + (f" (oldest {age:.0f} s)" if (age := st.get("outbox_oldest_age_s") or 0) > 0 else "")
        + (f" · STORE ERROR: {st['last_error']}" if st.get("last_error") else "")
    )
    if (free := st.get("disk_free_bytes")) is not None:
        low = "DISK LOW: " if st.get("disk_low") else ""
        lines.append(f"store: {low}{describe_bytes(free)} free on its file system")
    if (rebuilt := st.get("recovered")) is not None:
        lost = ", ".join(rebuilt["lost"]) or "nothing"
        lines.append(
            f"store: found damaged at {rebuilt['at']} and rebuilt; lost: {lost};"
            f" the damaged file is {rebuilt['moved_to']}"
        )
    for name, h in s["drivers"].items():
        err = f" — {h['last_error']}" if h.get("last_error") else ""
        lines.append(f"driver {name}: {h['state']} ({h['radio']}){err}")
    lines.append("")
    lines.append(f"{'lock':<28} {'state':<9} {'online':<7} {'battery':<8} last event")
    for d in s["devices"]:
        p = d["properties"]
        state = (
            "jammed" if p["jammed"] else {True: "locked", False: "unlocked"}.get(p["locked"], "?")
        )
        battery = "?" if p["battery_level"] is None else f"{round(p['battery_level'] * 100)}%"
        ev = d.get("last_event")
        method = ev["details"].get("method") if ev else None
        last = "-" if not ev else f"{ev['event_name']} ({method})" if method else ev["event_name"]
        name = d["name"][:28]
        lines.append(
            f"{name:<28} {state:<9} {'yes' if p['online'] else 'NO':<7} {battery:<8} {last}"
        )
    recent = s["actions"]["recent"][:5]
    if recent:
        lines.append("")
        lines.append("recent actions:")
        width = max(len(a["action"]) for a in recent)  # pair_devices, unpair_devices: 12, 14
        for a in recent:
            err = f" ({a['error']['type']})" if a.get("error") else ""
            lines.append(f"  {a['action']:<{width}} {a['status']}{err}  {a['id']}")
    # names and errors come from locks, radios and the cloud: no escape sequences to the terminal
    return "\n".join(_CONTROL.sub("?", line) for line in lines)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg.status_address()[1] == 0:
        print(
            f"gatewayd: status.listen = {cfg.status.listen!r} lets the daemon pick a free port,"
            " which this command cannot know: its `status.listening` log line names it; set a"
            " port (8181) to use `gatewayd status`",
            file=sys.stderr,
        )
        return 1
    try:
        data = _fetch_status(cfg)
    except (urllib.error.URLError, OSError) as exc:
        # "<urlopen error [Errno 111] Connection refused>" said neither why nor what to do: a
        # daemon stopped (or a demo ended, whose config names the ports it had) is the usual why
        why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        said = why.strerror if isinstance(why, OSError) and why.strerror else str(why)
        print(
            f"gatewayd: the daemon is not answering on {cfg.status.listen} ({said}): is it"
            " running? (`systemctl status gatewayd`; a demo's config works while that demo runs)",
            file=sys.stderr,
        )
        return 1
    except NotGatewaydStatus as exc:
        print(f"gatewayd: {cfg.status.listen}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else render_status(data))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gatewayd.demo import DemoError, run_demo

    try:
        return run_demo(args)
    except DemoError as exc:
        print(f"gatewayd demo: {exc}", file=sys.stderr)
        return exc.code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatewayd", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="TOML config file")
        return p

    with_config(sub.add_parser("run", help="run the daemon")).set_defaults(fn=cmd_run)
    with_config(sub.add_parser("check-config", help="validate a config file")).set_defaults(
        fn=cmd_check_config
    )
    with_config(sub.add_parser("token", help="print the registration token")).set_defaults(
        fn=cmd_token
    )
    st = with_config(sub.add_parser("status", help="show the running daemon's status"))
    st.add_argument("--json", action="store_true", help="print the raw /status JSON")
    st.set_defaults(fn=cmd_status)
    demo = sub.add_parser("demo", help="run the reference cloud and a daemon with simulated locks")
    demo.add_argument("--locks", type=int, default=2, help="simulated locks (default: 2)")
    demo.add_argument("--dir", default="", help="state directory (default: a temporary one)")
    demo.add_argument("--status-port", type=int, default=8181, help="0: a free port")
    demo.add_argument("--cloud-port", type=int, default=8080, help="0: a free port")
    demo.set_defaults(fn=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.fn(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
